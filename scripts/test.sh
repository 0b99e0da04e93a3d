#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite; extra arguments go to pytest.
# The suite runs under coverage.py ([tool.coverage] in pyproject.toml, subprocesses and forked
# flow runs included); afterwards the per-package statement coverage is printed and, for the
# whole suite (no arguments), checked against the floors (scripts/coverage_floor.py).
# pytest's exit code is ours; a package below its floor fails an otherwise green run.
# BOTAI_COVERAGE=0 runs plain pytest; BOTAI_COVERAGE_FLOORS=1 checks the floors for a subset too.
# The whole suite runs in two lanes at once (see below).
source "$(dirname "$0")/_env.sh"
source "$(dirname "$0")/_os_packages.sh"
if [ "${BOTAI_COVERAGE:-1}" = "0" ]; then
    exec .venv/bin/python -m pytest "$@"
fi
rm -rf .state/coverage
set +e
if [ $# -eq 0 ] && [ "${BOTAI_TEST_LANES:-2}" = "2" ]; then
    # The whole suite in two lanes at once (measured on 2 cores: 24 and 29 minutes, where
    # one process took 44): the multi-host module (its hosts live in network namespaces of
    # their own) and the stack tests of tests/platform in one, everything else in the other;
    # the first lane's output follows the second's. The machine's CPUs are then busy nearly
    # all the time, so moving more tests between the lanes does not shorten the run.
    # BOTAI_TEST_LANES=1 runs everything in one pytest.
    mkdir -p .state
    lane_log=.state/test-lane-hosts.log
    lane_a=(tests/multihost tests/platform)
    .venv/bin/python -m coverage run -m pytest -p no:cacheprovider "${lane_a[@]}" \
        > "$lane_log" 2>&1 &
    lane=$!
    .venv/bin/python -m coverage run -m pytest "${lane_a[@]/#/--ignore=}"
    rc=$?
    wait "$lane"
    lane_rc=$?
    echo "================ the other lane (${lane_a[*]}), exit code $lane_rc"
    cat "$lane_log"
    if [ "$rc" -eq 0 ] && [ "$lane_rc" -ne 5 ]; then
        rc=$lane_rc  # 5: nothing collected is not a failure
    fi
else
    .venv/bin/python -m coverage run -m pytest "$@"
    rc=$?
fi
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
