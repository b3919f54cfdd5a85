"""Project code importable as ``include.*`` (Astro puts $AIRFLOW_HOME on PYTHONPATH)."""
