"""bin/_bootstrap.sh: safe to source from a user's shell, still loud under bin/demo and bin/test.

Runs real bash processes against a copy of bin/_bootstrap.sh in a throw-away project folder whose
.venv is stamped as up to date for its requirements.txt and requirements-dev.txt (so nothing is
installed), or whose requirement files are missing (so preparing the venv fails)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def project(tmp_path: Path, *, ready: bool) -> Path:
    root = tmp_path / "project"
    (root / "bin").mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "bin" / "_bootstrap.sh", root / "bin" / "_bootstrap.sh")
    if ready:
        files = {"requirements.txt": "nothing==1.0\n", "requirements-dev.txt": "-r requirements.txt\n"}
        for name, text in files.items():
            (root / name).write_text(text)
        venv_bin = root / ".venv" / "bin"
        venv_bin.mkdir(parents=True)
        (venv_bin / "python").symlink_to(shutil.which("python3") or shutil.which("python"))
        # as bin/_bootstrap.sh stamps it: the hash of `sha256sum requirements.txt requirements-dev.txt`
        sums = "".join(f"{hashlib.sha256(text.encode()).hexdigest()}  {name}\n" for name, text in files.items())
        stamp = hashlib.sha256(sums.encode()).hexdigest()
        (root / ".venv" / ".requirements.sha256").write_text(stamp + "\n")
    return root


def bash(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("ready", [True, False], ids=["venv-ready", "bootstrap-fails"])
def test_sourcing_leaves_the_callers_options_and_shell_alone(tmp_path: Path, ready: bool) -> None:
    root = project(tmp_path, ready=ready)
    done = bash(
        f'echo "before:$-:$(set -o | grep -c "pipefail.*on")"; source "{root}/bin/_bootstrap.sh"; '
        'echo "sourced:$?"; echo "after:$-:$(set -o | grep -c "pipefail.*on")"; '
        'false; echo "alive after a failing command"; echo "path:${PATH%%:*}"'
    )
    lines = done.stdout.splitlines()
    before, after = lines[0].split(":")[1:], lines[2].split(":")[1:]
    assert after == before  # no -e, -u or pipefail left behind
    assert "e" not in after[0] and "u" not in after[0]
    assert "alive after a failing command" in lines
    if ready:
        assert "sourced:0" in lines
        assert f"path:{root}/.venv/bin" in lines
    else:
        assert "sourced:1" in lines
        assert "could not prepare" in done.stderr


def test_a_script_under_set_e_stops_at_a_failing_bootstrap(tmp_path: Path) -> None:
    root = project(tmp_path, ready=False)
    done = bash(f'set -euo pipefail; source "{root}/bin/_bootstrap.sh"; echo "went on regardless"')
    assert done.returncode != 0
    assert "went on regardless" not in done.stdout
    assert "requirements.txt" in done.stderr  # sha256sum names the missing file


def test_a_script_under_set_e_goes_on_after_a_ready_bootstrap(tmp_path: Path) -> None:
    root = project(tmp_path, ready=True)
    done = bash(f'set -euo pipefail; source "{root}/bin/_bootstrap.sh"; echo "on:$PYTHONPATH"; echo "opts:$-"')
    assert done.returncode == 0, done.stderr
    assert f"on:{root}" in done.stdout
    assert "e" in done.stdout.split("opts:")[1].split()[0]  # the script's own -e is still on
