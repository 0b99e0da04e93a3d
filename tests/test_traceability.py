"""docs/traceability.md is generated from the tests' tc markers and must be up to date; the
marker check of tests/conftest.py rejects missing markers and unknown case ids."""

from __future__ import annotations

import difflib
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.tc("none")

REPO_ROOT = Path(__file__).resolve().parent.parent


def _whole_suite_collected(config: pytest.Config) -> bool:
    """True when this session collected every test under tests/ (no narrower path or node id,
    no ``--ignore``: the test runner's lanes each collect a part)."""
    if config.getoption("ignore") or config.getoption("ignore_glob"):
        return False
    roots = {REPO_ROOT.resolve(), (REPO_ROOT / "tests").resolve()}
    return any("::" not in a and Path(a).resolve() in roots for a in config.args)


def test_traceability_doc_is_up_to_date(
    request: pytest.FixtureRequest, traceability, collected_tc_markers
) -> None:
    tr = traceability
    spec = tr.spec_path()
    if not spec.exists():
        pytest.skip(f"spec not found at {spec} (set BOTAI_SPEC_PATH)")
    if not _whole_suite_collected(request.config):
        # run alone or with a subset: collect the whole suite in a fresh process
        done = subprocess.run(
            [sys.executable, "scripts/traceability.py", "--check"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, (done.stderr + done.stdout)[-3000:]
        return
    expected = tr.generate(collected_tc_markers, spec)
    current = tr.DOC_PATH.read_text(encoding="utf-8") if tr.DOC_PATH.exists() else ""
    diff = "".join(
        list(
            difflib.unified_diff(
                current.splitlines(keepends=True),
                expected.splitlines(keepends=True),
                "docs/traceability.md",
                "generated",
            )
        )[:60]
    )
    assert current == expected, (
        "docs/traceability.md is out of date: run .venv/bin/python scripts/traceability.py\n" + diff
    )


def test_marker_check_names_missing_and_unknown_cases(traceability, tmp_path: Path) -> None:
    tr = traceability
    spec = tmp_path / "spec.md"
    spec.write_text(
        "## ML Tasks Test Cases\n"
        + "".join(f"### TC-ASYNC-{i:03d}: Case {i}\n" for i in range(1, 14))
        + "".join(f"**TC-ASYNC-{i:03d}:** Case {i}\n" for i in range(14, 106))
    )
    cases = tr.read_cases(spec)
    known = {c.case_id for c in cases}
    assert len(cases) == 105 and cases[13].title == "Case 14"
    assert tr.marker_problems("t::a", ["TC-ASYNC-001", "TC-ASYNC-105"], known) == []
    assert tr.marker_problems("t::b", ["none"], known) == []
    assert "no @pytest.mark.tc" in tr.marker_problems("t::c", [], known)[0]
    assert "names no case" in tr.marker_problems("t::d", ["TC-ASYNC-106"], known)[0]
    assert "not of the form" in tr.marker_problems("t::e", ["TC-ASYNC-94"], None)[0]
    assert tr.marker_problems("t::f", ["TC-ASYNC-106"], None) == []  # no spec: form only
    assert "cannot be combined" in tr.marker_problems("t::g", ["none", "TC-ASYNC-001"], known)[0]
    spec.write_text(spec.read_text().replace("TC-ASYNC-050:", "TC-ASYNC-049:"))
    with pytest.raises(
        ValueError, match=r"missing \['TC-ASYNC-050'\], repeated \['TC-ASYNC-049'\]"
    ):
        tr.read_cases(spec)


def test_a_case_without_test_or_reason_is_an_error_and_reasons_are_shown(traceability) -> None:
    tr = traceability
    cases = [
        tr.Case("TC-ASYNC-001", "Training", "ML Tasks"),
        tr.Case("TC-ASYNC-078", "Redis", "Err"),
    ]
    tests = {"tests/a.py::test_x": {"TC-ASYNC-001"}, "tests/b.py::test_y": {"none"}}
    with pytest.raises(ValueError, match="no test covers TC-ASYNC-078"):
        tr.render(cases, tests, {})
    reasons = {"TC-ASYNC-078": {"status": "not applicable", "reason": "no result | backend"}}
    text = tr.render(cases, tests, reasons)
    assert "| TC-ASYNC-001 | Training | `tests/a.py::test_x` |" in text
    assert "| TC-ASYNC-078 | Redis | **not applicable**: no result \\| backend |" in text
    assert "* `tests/b.py::test_y`" in text
    assert tr.group_markers(
        [("t.py::a[1]", ["TC-ASYNC-001"]), ("t.py::a[2]", ["TC-ASYNC-002"])]
    ) == {"t.py::a": {"TC-ASYNC-001", "TC-ASYNC-002"}}
