"""triggerflow: Adobe Experience Cloud Triggers to email, on Apache Airflow.

The DAG in ``dags/trigger_emails.py`` only orchestrates; every stage lives here, one module per
concern, importable without Airflow's scheduler so it can be unit-tested directly.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
INCLUDE_DIR = PACKAGE_DIR.parent
PROJECT_ROOT = INCLUDE_DIR.parent
TEMPLATES_DIR = INCLUDE_DIR / "templates"
DEFAULT_ROUTING_FILE = INCLUDE_DIR / "routing.yaml"

__all__ = ["DEFAULT_ROUTING_FILE", "INCLUDE_DIR", "PACKAGE_DIR", "PROJECT_ROOT", "TEMPLATES_DIR"]
