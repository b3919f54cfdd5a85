"""Retention and cleanup: what the daily ``trigger_maintenance`` DAG deletes, strips and analyses.

settings.py   the retention settings (days per table), their defaults and environment overrides
plan.py       the effective cutoffs: settings raised where an invariant needs more (the ledger's
              rule look-back, the failed-batch window), with the reason recorded
chunks.py     short transactions: one chunk each, a PostgreSQL lock_timeout, retry then skip
batches.py    whole batches: events, decisions, quarantine (and the status summaries) by age,
              except what an invariant still needs
ledger.py     the send ledger: detail columns stripped early, rows deleted late, children first
tables.py     the other tables by their own settings; ANALYZE / VACUUM after large deletes
runner.py     one maintenance run: every step, the tf_maintenance rows, the counts for XCom
metadata_clean.py   ``airflow db clean`` for the tables a minute schedule grows
"""
