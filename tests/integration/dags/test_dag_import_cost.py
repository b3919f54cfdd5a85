"""The DAG processor re-parses the files in dags/ every 30 s and every task re-parses its own: a DAG
file must not import heavy libraries at top level. Checked in a fresh interpreter (a subprocess),
where nothing has been imported yet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[3]
DAGS_DIR = PROJECT_ROOT / "dags"


@pytest.mark.parametrize("name", ["trigger_emails", "trigger_reprocess"])
def test_importing_the_dag_file_stays_light(name: str) -> None:
    """The DAG processor re-parses the file every 30 s: heavy libraries load only inside tasks."""
    dag_file = DAGS_DIR / f"{name}.py"
    code = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('{name}_dag', {str(dag_file)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "heavy = ('great_expectations', 'pandas', 'include.triggerflow.stages.validate')\n"
        "print(json.dumps({name: name in sys.modules for name in heavy}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == {"great_expectations": False, "pandas": False, "include.triggerflow.stages.validate": False}
