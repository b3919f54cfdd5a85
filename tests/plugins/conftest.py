"""Shared helpers of the plugin tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PLUGINS_DIR = Path(__file__).resolve().parents[2] / "plugins"


def load_plugin(name: str) -> ModuleType:
    """A plugin module imported from plugins/<name>.py under the name Airflow's plugin manager
    gives it (its file name), once per process."""
    path = PLUGINS_DIR / f"{name}.py"
    module = sys.modules.get(name)
    if module is None or getattr(module, "__file__", None) != str(path):
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module
