"""Generate docs/traceability.md from the tests' ``@pytest.mark.tc(...)`` markers.

Each of the 105 TC-ASYNC spec cases is listed with its title and the tests that carry its
marker; a case no test covers shows why (docs/traceability-reasons.yaml). Tests marked
``tc("none")`` cover platform behaviour the spec does not describe and are listed apart.

Usage (from the repository root)::

    .venv/bin/python scripts/traceability.py          # rewrite docs/traceability.md
    .venv/bin/python scripts/traceability.py --check  # exit 1 when it is out of date

The tests are found by a ``pytest --collect-only`` run (nothing is executed). The spec is read
from ``../shared/spec/TC-ASYNC.md`` next to the repository, or from ``$BOTAI_SPEC_PATH``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DOC_PATH = REPO_ROOT / "docs" / "traceability.md"
REASONS_PATH = REPO_ROOT / "docs" / "traceability-reasons.yaml"
NONE = "none"
STATUSES = ("not applicable", "not yet")
CASE_ID = re.compile(r"TC-ASYNC-\d{3}")
_HEADING = re.compile(r"^### (TC-ASYNC-\d{3}): (.+?)\s*$")
_LISTED = re.compile(r"^\*\*(TC-ASYNC-\d{3}):\*\* (.+?)\s*$")
_CATEGORY = re.compile(r"^## (.+?) Test Cases\s*$")


@dataclass(frozen=True)
class Case:
    """One spec case: its id, title and the spec section it belongs to."""

    case_id: str
    title: str
    category: str


def spec_path() -> Path:
    """Returns where the spec is expected: ``$BOTAI_SPEC_PATH`` or ../shared/spec/TC-ASYNC.md."""
    override = os.environ.get("BOTAI_SPEC_PATH")
    if override:
        return Path(override)
    return REPO_ROOT.parent / "shared" / "spec" / "TC-ASYNC.md"


def read_cases(path: Path) -> list[Case]:
    """Returns the spec's cases in spec order.

    Raises:
        ValueError: the file does not hold exactly TC-ASYNC-001 .. TC-ASYNC-105, each once.
    """
    cases: list[Case] = []
    category = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if m := _CATEGORY.match(line):
            category = m.group(1)
        elif m := _HEADING.match(line) or _LISTED.match(line):
            cases.append(Case(m.group(1), m.group(2).strip(), category))
    ids = [c.case_id for c in cases]
    expected = [f"TC-ASYNC-{i:03d}" for i in range(1, 106)]
    if sorted(ids) != expected:
        missing = sorted(set(expected) - set(ids))
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(
            f"{path}: expected cases TC-ASYNC-001..105 once each; "
            f"missing {missing or 'none'}, repeated {repeated or 'none'}"
        )
    return cases


def marker_problems(nodeid: str, args: list[object], known: set[str] | None) -> list[str]:
    """Returns what is wrong with one test's tc marker arguments (empty list: nothing).

    ``known`` is the set of spec case ids, or None when the spec is not available (then only
    the form of each id is checked).
    """
    if not args:
        return [f"{nodeid}: no @pytest.mark.tc(...) marker naming the spec case(s) it covers"]
    problems = []
    for arg in args:
        if arg == NONE:
            continue
        if not isinstance(arg, str) or not CASE_ID.fullmatch(arg):
            problems.append(f"{nodeid}: tc marker {arg!r} is not of the form 'TC-ASYNC-NNN'")
        elif known is not None and arg not in known:
            problems.append(f"{nodeid}: tc marker {arg!r} names no case of the spec")
    if NONE in args and len(args) > 1:
        problems.append(f"{nodeid}: tc('none') cannot be combined with case ids")
    return problems


def test_key(nodeid: str) -> str:
    """Returns the node id of the test function (parametrised variants share one line)."""
    return nodeid.split("[", 1)[0]


def group_markers(items: Iterable[tuple[str, list[object]]]) -> dict[str, set[str]]:
    """Returns test function node id -> the ids its tc markers name (over all variants)."""
    out: dict[str, set[str]] = {}
    for nodeid, args in items:
        out.setdefault(test_key(nodeid), set()).update(str(a) for a in args)
    return out


def load_reasons(path: Path = REASONS_PATH) -> dict[str, dict[str, str]]:
    """Returns case id -> {"status", "reason"} from the reasons file.

    Raises:
        ValueError: an entry has an unknown status or no reason.
    """
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for case_id, entry in data.items():
        if not isinstance(entry, dict) or entry.get("status") not in STATUSES:
            raise ValueError(f"{path}: {case_id}: status must be one of {', '.join(STATUSES)}")
        if not str(entry.get("reason") or "").strip():
            raise ValueError(f"{path}: {case_id}: a reason is required")
    return data


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render(
    cases: list[Case], tests: dict[str, set[str]], reasons: dict[str, dict[str, str]]
) -> str:
    """Returns the markdown of docs/traceability.md.

    Raises:
        ValueError: a case has neither a test nor a reason in the reasons file.
    """
    by_case: dict[str, list[str]] = {c.case_id: [] for c in cases}
    plumbing: list[str] = []
    for nodeid in sorted(tests):
        for case_id in sorted(tests[nodeid]):
            if case_id == NONE:
                plumbing.append(nodeid)
            elif case_id in by_case:
                by_case[case_id].append(nodeid)
    untested = [c.case_id for c in cases if not by_case[c.case_id]]
    unexplained = [c for c in untested if c not in reasons]
    if unexplained:
        raise ValueError(
            f"no test covers {', '.join(unexplained)} and {REASONS_PATH.name} says nothing "
            "about why: add a test marked with the case, or an entry (status, reason)"
        )
    counts = {s: sum(reasons[c]["status"] == s for c in untested) for s in STATUSES}
    lines = [
        "# Traceability: TC-ASYNC spec cases and the tests that cover them",
        "",
        "Generated by `scripts/traceability.py` from the tests' `@pytest.mark.tc(...)` markers;",
        "do not edit by hand. Run `.venv/bin/python scripts/traceability.py` after adding or",
        "re-marking a test (`tests/test_traceability.py` fails while this file is out of date).",
        "Why a case has no test: `docs/traceability-reasons.yaml`.",
        "",
        f"* {len(cases) - len(untested)} of {len(cases)} cases are covered by at least one test.",
        f"* {counts['not applicable']} are not applicable on Prefect (the reason says what"
        " stands in their place).",
        f"* {counts['not yet']} are not covered yet.",
        f"* {len(tests)} test functions in all; {len(plumbing)} of them cover platform behaviour"
        " no spec case describes (listed at the end).",
        "",
    ]
    category = None
    for case in cases:
        if case.category != category:
            category = case.category
            lines += [
                f"## {category}",
                "",
                "| Case | Title | Covered by |",
                "|------|-------|------------|",
            ]
        covered = by_case[case.case_id]
        if covered:
            cell = "<br>".join(f"`{n}`" for n in covered)
        else:
            entry = reasons[case.case_id]
            cell = f"**{entry['status']}**: {_cell(entry['reason'])}"
        lines.append(f"| {case.case_id} | {_cell(case.title)} | {cell} |")
        nxt = cases.index(case) + 1
        if nxt == len(cases) or cases[nxt].category != category:
            lines.append("")
    lines += [
        "## Tests of platform behaviour no spec case describes",
        "",
        'The spec was written for a Celery system; these tests (marked `tc("none")`) cover what',
        "this platform adds around it: market-data ingestion, the store, block bootstrap,",
        "process bookkeeping of the run command and the traceability check itself.",
        "",
        *[f"* `{n}`" for n in plumbing],
        "",
    ]
    return "\n".join(lines)


class _Collector:
    """pytest plugin: records every collected test's node id and tc marker arguments."""

    def __init__(self) -> None:
        self.items: list[tuple[str, list[object]]] = []

    def pytest_itemcollected(self, item) -> None:  # noqa: ANN001 - pytest.Item
        args = [a for m in item.iter_markers("tc") for a in m.args]
        self.items.append((item.nodeid, args))


def collect(test_paths: list[str] | None = None) -> list[tuple[str, list[object]]]:
    """Returns (node id, tc marker arguments) of every test pytest collects under tests/.

    Raises:
        RuntimeError: collection failed (the pytest output says why).
    """
    import pytest

    os.chdir(REPO_ROOT)
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    plugin = _Collector()
    args = ["--collect-only", "-qq", "-p", "no:cacheprovider", *(test_paths or ["tests"])]
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        code = pytest.main(args, plugins=[plugin])
    if code != 0:
        raise RuntimeError(f"pytest --collect-only failed (exit code {code}):\n{shown.getvalue()}")
    return plugin.items


def generate(items: list[tuple[str, list[object]]], spec: Path | None = None) -> str:
    """Returns the traceability document for the collected tests.

    Raises:
        FileNotFoundError: the spec is not where :func:`spec_path` says.
        ValueError: see :func:`read_cases`, :func:`load_reasons` and :func:`render`.
    """
    cases = read_cases(spec or spec_path())
    return render(cases, group_markers(items), load_reasons())


def main(argv: list[str] | None = None) -> int:
    """Writes (or with --check compares) docs/traceability.md. Returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is out of date")
    opts = parser.parse_args(argv)
    spec = spec_path()
    if not spec.exists():
        sys.stderr.write(f"spec not found at {spec}: set BOTAI_SPEC_PATH to TC-ASYNC.md\n")
        return 2
    text = generate(collect(), spec)
    current = DOC_PATH.read_text(encoding="utf-8") if DOC_PATH.exists() else ""
    if opts.check:
        if current != text:
            sys.stderr.write(
                f"{DOC_PATH.relative_to(REPO_ROOT)} is out of date: "
                "run .venv/bin/python scripts/traceability.py\n"
            )
            return 1
        return 0
    if current != text:
        DOC_PATH.write_text(text, encoding="utf-8")
    sys.stdout.write(
        f"{DOC_PATH.relative_to(REPO_ROOT)}: {'written' if current != text else 'up to date'}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
