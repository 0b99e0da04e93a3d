#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite; extra arguments go to pytest.
source "$(dirname "$0")/_env.sh"
exec .venv/bin/python -m pytest "$@"
