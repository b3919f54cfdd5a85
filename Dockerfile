# Astro Runtime for Airflow 3.3. Tags are <airflow major.minor>-<runtime patch>, and each tag carries
# one Airflow release: the Runtime, not requirements.txt, decides the Airflow version in the image.
# `astro dev start` and `astro deploy` build this image, which pip-installs requirements.txt on top:
# that file names only what the Runtime lacks (see its header); requirements-dev.txt is the local
# venv's and never reaches the image (.dockerignore).
#
# The three lines below describe the tag in the FROM line; tests/unit/deploy/test_requirements_split.py
# reads them: FROM must use runtime-tag, requirements-dev.txt must pin apache-airflow==runtime-airflow,
# and requirements.txt must name none of runtime-providers. Bump all of them with the tag.
# runtime-airflow is unverified for 3.3-7 (Astronomer's provider reference lists tags up to 3.3-2
# only); runtime-providers is that page's list for 3.3-1 and 3.3-2. Check an image with:
#   docker run --rm astrocrpublic.azurecr.io/runtime:3.3-7 airflow version
#   docker run --rm astrocrpublic.azurecr.io/runtime:3.3-7 pip freeze | grep -i -e airflow -e psycopg
# runtime-tag: 3.3-7
# runtime-airflow: 3.3.2
# runtime-providers: celery common-compat common-io common-sql elasticsearch openlineage smtp standard
FROM astrocrpublic.azurecr.io/runtime:3.3-7

# The Runtime image already sets PYTHONPATH=$AIRFLOW_HOME, so `include.triggerflow` imports as
# in the venv and in pytest. Great Expectations telemetry stays off in tasks.
ENV GX_ANALYTICS_ENABLED=false
