"""Plugins are imported by the scheduler, the DAG processor and the CLI: importing one must stay
cheap (nothing of triggerflow, SQLAlchemy, Jinja2, Airflow's API server...). Each check imports the
plugin in a new Python (moved from tests/plugins: they start processes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[3]
CODE = (
    "import sys, runpy, json\n"
    "import airflow.plugins_manager, fastapi, fastapi.responses\n"  # what loading any plugin costs
    "before = set(sys.modules)\n"
    "runpy.run_path(sys.argv[1])\n"
    "print(json.dumps(sorted(set(sys.modules) - before)))\n"
)
HEAVY = ("include", "airflow.api_fastapi", "airflow.models", "sqlalchemy", "yaml", "jinja2", "pandas", "great_expectations")


@pytest.mark.parametrize("name", ["pipelined_status", "unsubscribe"])
def test_importing_the_plugin_stays_cheap(name: str) -> None:
    plugin_file = PROJECT_ROOT / "plugins" / f"{name}.py"
    done = subprocess.run([sys.executable, "-c", CODE, str(plugin_file)], capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT)
    assert done.returncode == 0, done.stderr
    added = json.loads(done.stdout.strip().splitlines()[-1])
    assert [m for m in added if m.split(".")[0] in HEAVY or m.startswith(HEAVY)] == []
