"""The dependency locks agree with pyproject.toml: every direct dependency is pinned by a
version its range admits, nothing is locked as direct that pyproject.toml no longer asks for,
and every pin carries hashes (pip installs the lock with --require-hashes)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

pytestmark = pytest.mark.tc("none")

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+)==(?P<version>\S+)(?:\s*;\s*(?P<marker>[^\\]+))?")
PYTHONS = ("3.11", "3.12")  # requires-python >=3.11,<3.13


def _pins(lock: Path) -> tuple[dict[str, list[tuple[Version, Marker | None]]], set[str], list[str]]:
    """Returns (pins by name, names locked as direct dependencies, pins without a hash)."""
    pins: dict[str, list[tuple[Version, Marker | None]]] = {}
    direct: set[str] = set()
    unhashed: list[str] = []
    blocks = re.split(r"\n(?=[A-Za-z0-9])", lock.read_text())
    for block in blocks:
        m = PIN.match(block)
        if not m:
            continue
        name = canonicalize_name(m["name"])
        marker = Marker(m["marker"].strip()) if m["marker"] else None
        pins.setdefault(name, []).append((Version(m["version"]), marker))
        if "--hash=sha256:" not in block:
            unhashed.append(name)
        if "bot-ai-tasks (pyproject.toml)" in block:
            direct.add(name)
    return pins, direct, unhashed


def _wanted(extras: tuple[str, ...]) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


@pytest.mark.parametrize(
    ("lock", "extras"),
    [("requirements.lock", ("test",)), ("requirements-bench.lock", ("test", "bench"))],
)
def test_lock_pins_what_pyproject_asks_for(lock: str, extras: tuple[str, ...]) -> None:
    pins, direct, unhashed = _pins(ROOT / lock)
    wanted = _wanted(extras)
    fix = "run ./scripts/lock.sh and commit the locks"
    assert not unhashed, f"{lock}: pins without --hash: {unhashed}; {fix}"
    names = {canonicalize_name(r.name) for r in wanted}
    assert direct == names, (
        f"{lock} locks as direct {sorted(direct - names)} that pyproject.toml does not ask for, "
        f"misses {sorted(names - direct)}; {fix}"
    )
    for req in wanted:
        for python in PYTHONS:
            env = {"python_version": python, "python_full_version": f"{python}.0"}
            chosen = [
                v for v, mk in pins[canonicalize_name(req.name)] if mk is None or mk.evaluate(env)
            ]
            assert len(chosen) == 1, (
                f"{lock}: {req.name} has {len(chosen)} pins for Python {python}"
            )
            assert req.specifier.contains(chosen[0], prereleases=True), (
                f"{lock} pins {req.name}=={chosen[0]} for Python {python}, outside "
                f"pyproject.toml's '{req.specifier}'; {fix}"
            )


def test_the_install_script_installs_the_lock_with_hashes() -> None:
    env = (ROOT / "scripts" / "_env.sh").read_text()
    assert "--require-hashes -r requirements.lock" in env
    assert "pyproject.toml requirements.lock" in env  # either file changing re-installs
