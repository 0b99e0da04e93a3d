"""Process bookkeeping of the run command, on real child processes: stop kills the whole
group and descendants (even one ignoring SIGTERM), down signals the controller, and the
watch loop notices a service that died."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from core.settings import Settings
from deployments import services
from deployments.up import watch_services

STUBBORN = (
    "import os, signal, subprocess, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    # a grandchild in a session of its own, as Prefect starts flow runs
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],"
    " start_new_session=True)\n"
    "time.sleep(120)\n"
)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.mark.tc("none")
def test_stop_all_kills_group_and_descendants_even_when_sigterm_is_ignored(tmp_path: Path):
    settings = Settings(state_dir=tmp_path / "state")
    env = services.prefect_env(settings)
    child = services.spawn("stubborn", [sys.executable, "-c", STUBBORN], env, settings)
    deadline = time.monotonic() + 20
    while not psutil.Process(child.pid).children() and time.monotonic() < deadline:
        time.sleep(0.1)
    grandchild = psutil.Process(child.pid).children()[0]
    assert grandchild.pid and services.running_services(settings)[0].name == "stubborn"

    started = time.monotonic()
    assert services.stop_all(settings, timeout_s=1.0) == ["stubborn"]
    child.wait(5)
    assert time.monotonic() - started < 10
    assert not _alive(child.pid) and not _alive(grandchild.pid)
    assert not services.pid_file(settings).exists()
    assert services.stop_all(settings) == []  # idempotent


@pytest.mark.tc("TC-ASYNC-077")
def test_watch_returns_when_a_service_exits_and_stop_spares_other_owners(tmp_path: Path):
    settings = Settings(state_dir=tmp_path / "state")
    env = services.prefect_env(settings)
    short = services.spawn(
        "short", [sys.executable, "-c", "import time; time.sleep(0.5)"], env, settings
    )
    said: list[str] = []
    watch_services(settings, said.append, poll_s=0.1)
    short.wait(5)
    assert said and "short" in said[0] and "exited on its own" in said[0]

    # a record owned by another process survives a stop limited to this owner
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        rec = services.record_service(settings, "other", other.pid, tmp_path / "o.log")
        records = services.read_records(settings)
        records[-1].owner = rec.owner + 1
        services._write_records(settings, records)
        assert services.stop_all(settings, owner=rec.owner) == []
        assert other.poll() is None and services.pid_file(settings).exists()
        assert services.stop_all(settings) == ["other"]
        assert other.wait(5) is not None
    finally:
        other.kill()


@pytest.mark.tc("none")
def test_apply_deployments_is_skipped_only_when_inputs_and_deployments_are_unchanged(
    tmp_path: Path,
):
    settings = Settings(state_dir=tmp_path / "state")
    names = set(services.prefect_yaml_deployments())
    assert {"train-model", "backtest-strategy", "ingest-market-data"} <= names
    stamp = settings.prefect_home / "deployed.sha256"
    stamp.parent.mkdir(parents=True)
    stamp.write_text(services.deployment_inputs_hash() + "\n")
    # unchanged inputs, every deployment present: no `prefect deploy` (no API needed)
    assert services.apply_deployments(settings, {}, existing=names) is False
    assert services.deployment_inputs_hash() == stamp.read_text().strip()
    # a stamp from other inputs, or a missing deployment, would run it: check the decision
    stamp.write_text("0" * 64)
    assert services.deployment_inputs_hash() != stamp.read_text().strip()
