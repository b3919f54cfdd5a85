# Sourced by bin/demo and bin/test: make sure .venv exists and matches requirements.txt.
# Re-installs only when requirements.txt changed (its hash is stamped into the venv).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

pick_python() {
  for candidate in "${TRIGGERFLOW_PYTHON:-}" python3.11 python3.12 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 13) else 1)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "error: no Python 3.10-3.13 found (Airflow 3.3 supports those); set TRIGGERFLOW_PYTHON" >&2
  return 1
}

want="$(sha256sum "$ROOT/requirements.txt" | cut -d' ' -f1)"
have="$(cat "$VENV/.requirements.sha256" 2>/dev/null || true)"
if [ ! -x "$VENV/bin/python" ] || [ "$want" != "$have" ]; then
  PY="$(pick_python)"
  echo "[bootstrap] preparing $VENV with $("$PY" --version) (requirements.txt changed or no venv yet)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet --progress-bar off -r "$ROOT/requirements.txt"
  echo "$want" > "$VENV/.requirements.sha256"
  echo "[bootstrap] venv ready"
fi
export PATH="$VENV/bin:$PATH"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
