# Astro Runtime for Airflow 3.3 (tags are <airflow major.minor>-<runtime patch>).
# `astro dev start` builds this image and installs requirements.txt on top of it.
# Check the image's Airflow with: docker run --rm <image> airflow version  (expect 3.3.x)
FROM astrocrpublic.azurecr.io/runtime:3.3-7

# The Runtime image already sets PYTHONPATH=$AIRFLOW_HOME, so `include.triggerflow` imports as
# in the venv and in pytest. Great Expectations telemetry stays off in tasks.
ENV GX_ANALYTICS_ENABLED=false
