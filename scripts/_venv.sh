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
# The exact versions (and hashes) of requirements/<extra>.lock, then the project itself
# without resolving anything: every machine runs what CI ran (scripts/lock renews them).
LOCK="requirements/${VENV_EXTRA:-service}.lock"
# Re-install only when pyproject.toml or the lock changed since the last install of it.
STAMP=".venv/.installed-$(echo "$LOCK" | tr -c 'a-z' '_')"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ "$LOCK" -nt "$STAMP" ]; then
    echo "installing bandit-stream with $LOCK into .venv" >&2
    .venv/bin/python -m pip install -q --require-hashes -r "$LOCK"
    .venv/bin/python -m pip install -q --no-deps -e .
    touch "$STAMP"
fi
