#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite; extra arguments go to pytest.
# The suite runs under coverage.py ([tool.coverage] in pyproject.toml, subprocesses and forked
# flow runs included); afterwards the per-package statement coverage is printed and, for the
# whole suite (no arguments), checked against the floors (scripts/coverage_floor.py).
# pytest's exit code is ours; a package below its floor fails an otherwise green run.
# BOTAI_COVERAGE=0 runs plain pytest; BOTAI_COVERAGE_FLOORS=1 checks the floors for a subset too.
source "$(dirname "$0")/_env.sh"
source "$(dirname "$0")/_os_packages.sh"
if [ "${BOTAI_COVERAGE:-1}" = "0" ]; then
    exec .venv/bin/python -m pytest "$@"
fi
rm -rf .state/coverage
set +e
.venv/bin/python -m coverage run -m pytest "$@"
rc=$?
check=()
if [ $# -eq 0 ] || [ "${BOTAI_COVERAGE_FLOORS:-0}" = "1" ]; then
    check=(--check)
fi
.venv/bin/python -m coverage combine --quiet \
    && .venv/bin/python scripts/coverage_floor.py ${check[@]+"${check[@]}"}
floor_rc=$?
if [ "$rc" -ne 0 ]; then
    exit "$rc"
fi
exit "$floor_rc"
