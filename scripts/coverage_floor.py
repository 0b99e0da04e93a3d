"""Per-package statement coverage of the suite's combined coverage data, and its floors.

Run by scripts/test.sh after ``coverage combine``: prints, for each package of
``[tool.coverage.run] source`` (pyproject.toml), its statements, missed statements and percent
covered, with the floor of ``[tool.coverage.package_floors]``. With ``--check`` it exits 1
when a package is below its floor, naming the package, its figure, the floor and the files
that miss the most statements. ``[tool.coverage.package_targets]`` (the spec's 95 % for
``tasks/``) is printed beside each figure and reported when missed, without failing the run.
Files never imported count with all their statements missed.

Usage: ``python scripts/coverage_floor.py [--check] [--data-file PATH]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import coverage

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class PackageFigure:
    """Statement counts of one package (its ``.py`` files, recursively)."""

    name: str
    statements: int = 0
    missed: int = 0
    files: list[tuple[int, str]] = field(default_factory=list)  # (missed, relative path)

    @property
    def percent(self) -> float:
        """Percent of statements run (100.0 for a package without statements)."""
        if not self.statements:
            return 100.0
        return 100.0 * (self.statements - self.missed) / self.statements


def read_config(
    pyproject: Path, table: str = "package_floors"
) -> tuple[list[str], dict[str, float]]:
    """The measured packages and their floors (or, with ``table="package_targets"``, the
    targets that are printed but do not fail a run) from ``pyproject``.

    Returns:
        (package names of ``[tool.coverage.run] source``, ``{package: percent}``).

    Raises:
        SystemExit: the source list is missing or a floor names an unmeasured package or is
            not a number from 0 to 100.
    """
    tool = tomllib.loads(pyproject.read_text())["tool"]["coverage"]
    packages = list(tool.get("run", {}).get("source", []))
    if not packages:
        raise SystemExit(f"{pyproject}: [tool.coverage.run] source lists no package to measure")
    floors = dict(tool.get(table, {}))
    for name, floor in floors.items():
        if name not in packages:
            raise SystemExit(
                f"{pyproject}: [tool.coverage.{table}] {name} is not measured; "
                f"add it to [tool.coverage.run] source ({', '.join(packages)}) or remove it"
            )
        if not isinstance(floor, int | float) or not 0 <= floor <= 100:
            raise SystemExit(
                f"{pyproject}: [tool.coverage.{table}] {name} = {floor!r}; "
                "a floor is a percent from 0 to 100"
            )
    return packages, {k: float(v) for k, v in floors.items()}


def measure(cov: coverage.Coverage, root: Path, packages: list[str]) -> list[PackageFigure]:
    """Statement coverage per package of the loaded data ``cov``.

    Returns:
        one :class:`PackageFigure` per package, in ``packages`` order.
    """
    figures = []
    for name in packages:
        fig = PackageFigure(name)
        for path in sorted((root / name).rglob("*.py")):
            _, statements, _, missing, _ = cov.analysis2(str(path))
            fig.statements += len(statements)
            fig.missed += len(missing)
            if missing:
                fig.files.append((len(missing), str(path.relative_to(root))))
        figures.append(fig)
    return figures


def render(
    figures: list[PackageFigure], floors: dict[str, float], targets: dict[str, float] | None = None
) -> str:
    """The per-package table (with a total line)."""
    targets = targets or {}
    lines = [
        f"{'package':<14}{'statements':>11}{'missed':>8}{'covered':>10}{'floor':>9}{'target':>9}"
    ]
    for f in figures:
        floor = f"{floors[f.name]:.1f} %" if f.name in floors else "-"
        target = f"{targets[f.name]:.1f} %" if f.name in targets else "-"
        lines.append(
            f"{f.name + '/':<14}{f.statements:>11}{f.missed:>8}{f.percent:>8.1f} %{floor:>9}"
            f"{target:>9}"
        )
    total = PackageFigure(
        "total", sum(f.statements for f in figures), sum(f.missed for f in figures)
    )
    lines.append(f"{'total':<14}{total.statements:>11}{total.missed:>8}{total.percent:>8.1f} %")
    return "\n".join(lines)


def below_floor(figures: list[PackageFigure], floors: dict[str, float]) -> list[str]:
    """One message per package below its floor (empty when all are at or above)."""
    out = []
    for f in figures:
        floor = floors.get(f.name)
        if floor is None or f.percent >= floor:
            continue
        worst = ", ".join(f"{p} ({m} missed)" for m, p in sorted(f.files, reverse=True)[:5])
        out.append(
            f"coverage of {f.name}/ is {f.percent:.1f} %, below its floor {floor:.1f} % "
            f"([tool.coverage.package_floors] in pyproject.toml): test the missed statements "
            f"(most in {worst}; `coverage report -m --include '{f.name}/*'` lists them)"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the table; with ``--check`` return 1 when a package is below its floor.

    Returns:
        the exit code: 0, 1 (below a floor) or 2 (no coverage data).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail when below a floor")
    parser.add_argument("--data-file", help="combined coverage data (default: pyproject's)")
    args = parser.parse_args(argv)
    packages, floors = read_config(REPO_ROOT / "pyproject.toml")
    _, targets = read_config(REPO_ROOT / "pyproject.toml", "package_targets")
    os.chdir(REPO_ROOT)  # the data file of pyproject.toml is relative to the repository
    options = {"data_file": args.data_file} if args.data_file else {}
    cov = coverage.Coverage(config_file="pyproject.toml", **options)
    cov.load()
    if not cov.get_data().measured_files():
        sys.stderr.write(
            f"no coverage data in {cov.get_data().data_filename()}: run the suite through "
            "scripts/test.sh (coverage run -m pytest, then coverage combine)\n"
        )
        return 2
    figures = measure(cov, REPO_ROOT, packages)
    sys.stdout.write("statement coverage per package (scripts/coverage_floor.py)\n")
    sys.stdout.write(render(figures, floors, targets) + "\n")
    for f in figures:
        if f.name in targets and f.percent < targets[f.name]:
            sys.stdout.write(
                f"{f.name}/ is below its target {targets[f.name]:.1f} % "
                "([tool.coverage.package_targets]; reported, not failed)\n"
            )
    sys.stdout.flush()
    if not args.check:
        return 0
    problems = below_floor(figures, floors)
    for line in problems:
        sys.stderr.write(line + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
