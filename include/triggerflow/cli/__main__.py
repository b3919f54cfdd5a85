"""``python -m include.triggerflow.cli <command>`` (see the package docstring)."""

from include.triggerflow.cli import main

raise SystemExit(main())
