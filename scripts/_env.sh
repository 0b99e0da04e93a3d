# Shared by scripts/up.sh and scripts/test.sh: create .venv if missing and install the
# locked dependencies (requirements.lock) and the project, skipping the install when
# pyproject.toml and the lock are unchanged.
# Sourced (not run); needs only Python 3.11 (or 3.12) and access to the package registry.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ ! -x .venv/bin/python ]; then
    PY="$(command -v python3.11 || command -v python3 || true)"
    if [ -z "$PY" ]; then
        echo "Python 3.11 not found: install python3.11 (or python3 >= 3.11)" >&2
        exit 1
    fi
    "$PY" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 13) else 1)' || {
        echo "$PY is $("$PY" -V 2>&1); the project needs Python 3.11 or 3.12" >&2
        exit 1
    }
    echo "creating .venv with $PY" >&2
    "$PY" -m venv .venv
fi
STAMP=.venv/.botai-install-stamp
WANT="$(cat pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
    echo "installing the locked dependencies into .venv (first run takes minutes)" >&2
    # Exactly the versions and files the suite was tested with (requirements.lock, every file's
    # sha256 checked); the project itself is installed editable on top, without resolving again.
    .venv/bin/python -m pip install --quiet --upgrade 'pip>=24'
    .venv/bin/python -m pip install --quiet --require-hashes -r requirements.lock
    .venv/bin/python -m pip install --quiet --no-deps -e .
    echo "$WANT" > "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
