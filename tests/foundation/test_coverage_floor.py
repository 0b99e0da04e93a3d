"""scripts/coverage_floor.py: statement coverage per package and the floors the suite must hold.

A small project in a temporary folder is measured for real (``coverage run`` in a separate
process, so the suite's own measurement is left alone), then checked against floors.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import coverage
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.tc("none")


def _floor_module():  # noqa: ANN202 - the scripts/coverage_floor.py module
    spec = importlib.util.spec_from_file_location(
        "botai_coverage_floor", REPO_ROOT / "scripts" / "coverage_floor.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def _project(root: Path) -> None:
    """``alpha`` (4 statements, 3 run), ``beta`` (one module run, one never imported)."""
    (root / "alpha").mkdir()
    (root / "alpha" / "__init__.py").write_text("")
    (root / "alpha" / "calc.py").write_text(
        "def double(x):\n    return 2 * x\n\ndef unused(x):\n    return -x\n"
    )
    (root / "beta").mkdir()
    (root / "beta" / "__init__.py").write_text("")
    (root / "beta" / "run.py").write_text("VALUE = 1\n")
    (root / "beta" / "never.py").write_text("A = 1\nB = 2\nC = 3\n")
    (root / "main.py").write_text("import alpha.calc, beta.run\nprint(alpha.calc.double(2))\n")
    (root / "pyproject.toml").write_text(
        '[tool.coverage.run]\nsource = ["alpha", "beta"]\ndata_file = ".cov"\n'
        "[tool.coverage.package_floors]\nalpha = 70.0\nbeta = 50.0\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    subprocess.run(
        [sys.executable, "-m", "coverage", "run", "main.py"], cwd=root, env=env, check=True
    )


def test_packages_are_measured_with_files_never_imported(tmp_path: Path) -> None:
    floor = _floor_module()
    _project(tmp_path)
    packages, floors = floor.read_config(tmp_path / "pyproject.toml")
    assert (packages, floors) == (["alpha", "beta"], {"alpha": 70.0, "beta": 50.0})
    cov = coverage.Coverage(data_file=str(tmp_path / ".cov"), config_file=False)
    cov.load()
    alpha, beta = floor.measure(cov, tmp_path, packages)
    assert (alpha.statements, alpha.missed, alpha.percent) == (4, 1, 75.0)
    assert (beta.statements, beta.missed) == (4, 3)  # never.py counts, all missed
    assert beta.files == [(3, "beta/never.py")]
    table = floor.render([alpha, beta], floors, {"alpha": 95.0})
    assert table.splitlines()[1].split() == [
        "alpha/",
        "4",
        "1",
        "75.0",
        "%",
        "70.0",
        "%",
        "95.0",
        "%",
    ]
    assert table.splitlines()[-1].split() == ["total", "8", "4", "50.0", "%"]
    (problem,) = floor.below_floor([alpha, beta], floors)
    assert problem.startswith("coverage of beta/ is 25.0 %, below its floor 50.0 %")
    assert "beta/never.py (3 missed)" in problem
    assert floor.below_floor([alpha, beta], {"alpha": 75.0, "beta": 25.0}) == []


def test_a_floor_of_an_unmeasured_package_or_out_of_range_is_refused(tmp_path: Path) -> None:
    floor = _floor_module()
    config = tmp_path / "pyproject.toml"
    config.write_text(
        '[tool.coverage.run]\nsource = ["alpha"]\n[tool.coverage.package_floors]\ngamma = 5\n'
    )
    with pytest.raises(SystemExit, match="gamma is not measured"):
        floor.read_config(config)
    config.write_text(
        '[tool.coverage.run]\nsource = ["alpha"]\n[tool.coverage.package_floors]\nalpha = 120\n'
    )
    with pytest.raises(SystemExit, match="a floor is a percent from 0 to 100"):
        floor.read_config(config)
    config.write_text("[tool.coverage.run]\nparallel = true\n")
    with pytest.raises(SystemExit, match="source lists no package"):
        floor.read_config(config)


def test_the_repository_floors_name_measured_packages() -> None:
    floor = _floor_module()
    packages, floors = floor.read_config(REPO_ROOT / "pyproject.toml")
    assert set(packages) >= {"tasks", "flows", "ml", "backtest", "integrations", "api"}
    assert set(floors) == set(packages)
    _, targets = floor.read_config(REPO_ROOT / "pyproject.toml", "package_targets")
    assert targets["tasks"] == 95.0  # the spec's bar for the task modules
