"""The Triggers console: the operator's views in the ``pipelined`` plugin (plugins/pipelined_status.py).

    queries.py    read-only, bounded, indexed store look-ups (runs, a run's ledger, quarantine,
                  a customer's decisions and emails, alerts)
    reprocess.py  the "reprocess" action: inputs, CSRF, starting trigger_reprocess through
                  Airflow's REST API as the calling user
    routes.py     the FastAPI routes (/pipelined/runs, run, quarantine, reprocess, search, alerts)

The pages themselves are Jinja2 templates (include/templates/ui/), rendered by include/triggerflow/pages.py.
"""
