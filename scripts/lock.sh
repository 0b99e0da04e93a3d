#!/usr/bin/env bash
# Re-resolve the dependency locks from pyproject.toml (run after changing a dependency or to
# upgrade): requirements.lock (the project and its test extras: what scripts/_env.sh installs)
# and requirements-bench.lock (plus the bench extras). Both carry every file's sha256, and
# pip installs them with --require-hashes. Extra arguments go to `uv pip compile`, e.g.
# `--upgrade-package prefect` or `--upgrade`. Then run ./scripts/test.sh and commit the locks.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
UV_VERSION=0.13.9
TOOLS="${TMPDIR:-/tmp}/botai-lock-tools-$UV_VERSION"
if [ ! -x "$TOOLS/bin/uv" ]; then
    python3 -m venv "$TOOLS"
    "$TOOLS/bin/python" -m pip install --quiet "uv==$UV_VERSION"
fi
compile() {  # compile OUTPUT EXTRA... [-- uv args]
    local out="$1"; shift
    "$TOOLS/bin/uv" pip compile pyproject.toml "$@" --universal --python-version 3.11 \
        --generate-hashes --no-header --quiet -o "$out"
}
compile requirements.lock --extra test "$@"
compile requirements-bench.lock --extra test --extra bench "$@"
echo "locked: requirements.lock, requirements-bench.lock (now run ./scripts/test.sh)" >&2
