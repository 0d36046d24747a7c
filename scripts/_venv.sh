# Shared by scripts/demo and scripts/test: create .venv when missing and install the project.
# Usage: VENV_EXTRA=test source scripts/_venv.sh   (VENV_EXTRA optional: an extra to install)
# (Not a positional argument: a sourced file sees its caller's arguments.)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "bandit-stream needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    echo "creating .venv" >&2
    "$PY" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
fi
SPEC="."
if [ -n "${VENV_EXTRA:-}" ]; then SPEC=".[$VENV_EXTRA]"; fi
# Re-install only when pyproject.toml changed since the last install of this spec.
STAMP=".venv/.installed-$(echo "$SPEC" | tr -c 'a-z' '_')"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    echo "installing bandit-stream $SPEC into .venv" >&2
    .venv/bin/python -m pip install -q -e "$SPEC"
    touch "$STAMP"
fi
