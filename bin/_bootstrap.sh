# Sourced by bin/demo and bin/test, and safe to source from an interactive shell: make sure .venv
# exists and matches requirements-dev.txt (which includes requirements.txt, the image's list), then
# put it first on PATH and the project on PYTHONPATH. Re-installs only when either file changed:
# one hash over both is stamped into the venv.
#
# The caller's shell options are left as they were: the work runs in a subshell under
# `set -euo pipefail`, so a failure stops it there, and this file then returns non-zero, which
# ends bin/demo and bin/test (they run under `set -e`) but never the shell of a user who sourced it.

_tf_bootstrap_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

_tf_bootstrap_venv() (
  set -euo pipefail
  root="$1"
  venv="$root/.venv"

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

  # Both files, by name, in one hash: an edit to either re-installs, and a missing one fails here
  # (sha256sum names it) rather than installing half the venv.
  sums="$(cd "$root" && sha256sum requirements.txt requirements-dev.txt)"
  want="$(printf '%s\n' "$sums" | sha256sum | cut -d' ' -f1)"
  have="$(cat "$venv/.requirements.sha256" 2>/dev/null || true)"
  if [ ! -x "$venv/bin/python" ] || [ "$want" != "$have" ]; then
    py="$(pick_python)"
    echo "[bootstrap] preparing $venv with $("$py" --version) (requirements changed or no venv yet)"
    [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet --progress-bar off -r "$root/requirements-dev.txt"
    echo "$want" > "$venv/.requirements.sha256"
    echo "[bootstrap] venv ready"
  fi
)

# Called on its own, not as an `if` or `||` condition: there bash would ignore `set -e` inside it.
# A caller under `set -e` (bin/demo, bin/test) stops right here on failure, loudly.
_tf_bootstrap_venv "$_tf_bootstrap_root"
if [ "$?" -eq 0 ]; then
  ROOT="$_tf_bootstrap_root"
  VENV="$ROOT/.venv"
  export PATH="$VENV/bin:$PATH"
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  unset -f _tf_bootstrap_venv
  unset _tf_bootstrap_root
else
  echo "error: [bootstrap] could not prepare $_tf_bootstrap_root/.venv (see the lines above)" >&2
  unset -f _tf_bootstrap_venv
  unset _tf_bootstrap_root
  # `return` when sourced (the usual case); `exit` if someone runs the file directly.
  return 1 2>/dev/null || exit 1
fi
