"""Mutation score of the modules whose numbers decide things (the spec's bar: >= 80 %).

mutmut (``requirements-bench.lock``) changes one operator, constant or call at a time in
``backtest/metrics.py``, ``ml/metrics.py``, ``ml/deploy_rule.py`` and
``integrations/store/usage.py`` and runs the tests that reach the changed function; a mutant
no test fails on "survived". Run with the bench venv (README):

    .venv-bench/bin/python bench/bench_mutation.py [--module ml/metrics.py ...] [--max-children N]

It works in a scratch copy (the worktree gets no ``mutants/`` folder): the product packages,
the tests listed in :data:`TESTS`, ``scripts/traceability.py`` and ``pyproject.toml`` plus a
``[tool.mutmut]`` section; ``shared`` beside the copy points at the real ``../shared`` (the
market data and the spec). Prints killed / survived / timeout / no tests and the score per
module with the machine load, every survivor's diff, and writes the figures to
``bench/results/mutation.json``. Surviving mutants are explained in docs/quality.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: The modules mutated.
MODULES = [
    "backtest/metrics.py",
    "ml/metrics.py",
    "ml/deploy_rule.py",
    "integrations/store/usage.py",
]
#: The tests run against the mutants (mutmut runs, per mutant, those that reach its function):
#: the fast ones; test_engine.py's cross-checks on the real data take minutes a mutant.
TESTS = [
    "tests/backtest/test_metrics_mutants.py",
    "tests/ml/test_train_deploy_rule.py",
    "tests/ml/test_deploy_rule_mutants.py",
    "tests/foundation/test_store_usage.py",
    "tests/foundation/test_store_quota.py",
]
#: Packages copied whole (a mutated module's package must be importable from the copy).
PACKAGES = ["backtest", "ml", "integrations"]
#: Also needed by the tests (conftest, shared helpers, the traceability check).
SUPPORT = ["tests/conftest.py", "tests/peers.py", "scripts/traceability.py"]

#: mutmut's exit codes -> what they mean (mutmut.stats.status_by_exit_code).
STATUS = {
    0: "survived",
    1: "killed",
    3: "killed",
    5: "no tests",
    33: "no tests",
    34: "skipped",
    36: "timeout",
    24: "timeout",
    -24: "timeout",
    152: "timeout",
    255: "timeout",
}


def load() -> str:
    """The 1/5/15-minute load averages and the core count, as printed beside every figure."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def prepare(work: Path, modules: list[str]) -> None:
    """Copy what mutmut needs into ``work`` and configure it there.

    Raises:
        FileNotFoundError: a module or test listed above is missing.
    """
    for rel in [*modules, *TESTS, *SUPPORT]:
        if not (REPO / rel).exists():
            raise FileNotFoundError(f"{REPO / rel} is missing (bench/bench_mutation.py lists it)")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, work / pkg, ignore=ignore)
    for rel in [*TESTS, *SUPPORT]:
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, work / rel)
    for extra in ("tests/backtest/conftest.py", "tests/ml/conftest.py"):
        shutil.copy2(REPO / extra, work / extra)
    (work / "shared").symlink_to(REPO.parent / "shared")
    quoted = ", ".join(json.dumps(x) for x in TESTS)
    config = (REPO / "pyproject.toml").read_text() + (
        "\n[tool.mutmut]\n"
        f"source_paths = {json.dumps(PACKAGES)}\n"
        f"only_mutate = {json.dumps(modules)}\n"
        f"pytest_add_cli_args_test_selection = [{quoted}]\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-W", "ignore"]\n'
        'also_copy = ["scripts"]\n'
        "use_git_change_detection = false\n"
    )
    (work / "pyproject.toml").write_text(config)


def read_results(work: Path, modules: list[str]) -> dict[str, dict[str, str]]:
    """``{module: {mutant name: status}}`` from mutmut's ``.meta`` files in ``work``."""
    out = {}
    for rel in modules:
        meta = json.loads((work / "mutants" / f"{rel}.meta").read_text())
        out[rel] = {
            name: STATUS.get(code, "not checked" if code is None else "suspicious")
            for name, code in meta["exit_code_by_key"].items()
        }
    return out


def score(statuses: dict[str, str]) -> tuple[Counter, float]:
    """Counts per status and the score: (killed + timeout) / (mutants - skipped), percent."""
    counts = Counter(statuses.values())
    tested = len(statuses) - counts["skipped"]
    caught = counts["killed"] + counts["timeout"]
    return counts, (100.0 * caught / tested if tested else float("nan"))


def main() -> int:
    """Run mutmut, print the table and the survivors; returns 1 when a module is under 80 %."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", action="append", choices=MODULES, help="only these")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy")
    args = parser.parse_args()
    modules = args.module or MODULES
    mutmut = Path(sys.executable).with_name("mutmut")
    if not mutmut.exists():
        print(f"mutmut is not installed next to {sys.executable}: build the bench venv (README)")
        return 2
    work = Path(tempfile.mkdtemp(prefix="botai-mutation-"))
    try:
        prepare(work, modules)
        before = load()
        started = time.perf_counter()
        run = subprocess.run(
            [str(mutmut), "run", "--max-children", str(args.max_children)],
            cwd=work,
            capture_output=True,
            text=True,
        )
        elapsed = time.perf_counter() - started
        after = load()
        metas = [work / "mutants" / f"{m}.meta" for m in modules]
        results = read_results(work, modules) if all(p.exists() for p in metas) else {}
        if not results or all(
            v == "not checked" for statuses in results.values() for v in statuses.values()
        ):
            print(run.stdout[-4000:], run.stderr[-4000:], sep="\n")
            print(f"mutmut run failed (exit {run.returncode}); nothing measured")
            return 2
        print(f"mutation testing with mutmut, {elapsed:.0f} s ({before} before, {after} after)")
        header = f"{'module':<30}{'mutants':>8}{'killed':>8}{'survived':>9}{'timeout':>8}"
        print(header + f"{'no tests':>9}{'other':>7}{'score':>9}")
        figures, below = {}, []
        for rel in modules:
            counts, pct = score(results[rel])
            other = len(results[rel]) - sum(
                counts[k] for k in ("killed", "survived", "timeout", "no tests")
            )
            print(
                f"{rel:<30}{len(results[rel]):>8}{counts['killed']:>8}{counts['survived']:>9}"
                f"{counts['timeout']:>8}{counts['no tests']:>9}{other:>7}{pct:>7.1f} %"
            )
            figures[rel] = {"mutants": len(results[rel]), **dict(counts), "score_pct": pct}
            if not pct >= 80.0:
                below.append(rel)
        all_statuses = {f"{m}:{k}": v for m in modules for k, v in results[m].items()}
        counts, pct = score(all_statuses)
        print(
            f"{'all':<30}{len(all_statuses):>8}{counts['killed']:>8}{counts['survived']:>9}"
            f"{counts['timeout']:>8}{counts['no tests']:>9}{'':>7}{pct:>7.1f} %"
        )
        for rel in modules:
            for name, status in sorted(results[rel].items()):
                if status in ("killed", "timeout", "not checked"):
                    continue
                diff = subprocess.run(
                    [str(mutmut), "show", name], cwd=work, capture_output=True, text=True
                ).stdout
                print(f"\n--- {status}: {name}\n{diff.strip()}")
        out = REPO / "bench" / "results" / "mutation.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps(
                {
                    "seconds": elapsed,
                    "load_before": before,
                    "load_after": after,
                    "modules": figures,
                    "survivors": {
                        m: sorted(
                            k for k, v in results[m].items() if v not in ("killed", "timeout")
                        )
                        for m in modules
                    },
                },
                indent=2,
            )
        )
        print(f"\nfigures written to {out.relative_to(REPO)}")
        return 1 if below else 0
    finally:
        if args.keep:
            print(f"scratch copy kept at {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
