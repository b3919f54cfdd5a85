"""Secrets stay out of logs: the one wrapper around Airflow's log masker."""

from __future__ import annotations


def mask(secret: str) -> None:
    """Register a runtime secret (a token, a signing key) with Airflow's log masker.

    Every value a hook derives from a Connection's password or extras goes through here before it
    can reach a log line. A no-op outside Airflow's task runtime.
    """
    if not secret:
        return
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # pragma: no cover - Airflow is always installed in this project
        return
    mask_secret(secret)
