"""Process bookkeeping and supervision of the run command, on real child processes: stop
kills the whole group and descendants (even one ignoring SIGTERM); the supervisor restarts a
killed or stopped (hung) service with backoff, alerts, and ends the orphaned flow-run
processes of a dead worker; the clean-up deletes only old result and chart files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from core.settings import Settings, load_settings
from deployments import service_records, services, work_pool
from deployments.housekeeping import clean_up
from deployments.orphans import end_orphaned_flow_runs
from deployments.supervisor import ServiceSpec, Supervisor, backoff_s, read_state
from integrations.embedded_mongo import free_port

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


@pytest.mark.tc("TC-ASYNC-077")
def test_stop_all_kills_group_and_descendants_even_when_sigterm_is_ignored(tmp_path: Path):
    settings = load_settings(state_dir=tmp_path / "state")
    env = services.prefect_env(settings)
    child = services.spawn("stubborn", [sys.executable, "-c", STUBBORN], env, settings)
    deadline = time.monotonic() + 20
    while not psutil.Process(child.pid).children() and time.monotonic() < deadline:
        time.sleep(0.1)
    grandchild = psutil.Process(child.pid).children()[0]
    assert grandchild.pid and service_records.running_services(settings)[0].name == "stubborn"

    started = time.monotonic()
    assert services.stop_all(settings, timeout_s=1.0) == ["stubborn"]
    child.wait(5)
    assert time.monotonic() - started < 10
    assert not _alive(child.pid) and not _alive(grandchild.pid)
    assert not service_records.pid_file(settings).exists()
    assert services.stop_all(settings) == []  # idempotent


def _tick_until(sup: Supervisor, predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sup.tick()
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _fast_settings(tmp_path: Path, **overrides) -> Settings:
    values = {
        "state_dir": tmp_path / "state",
        "restart_backoff_initial_s": 0.2,
        "restart_backoff_max_s": 0.8,
        "restart_alert_failures": 3,
        "watchdog_interval_s": 0.1,
        "service_hung_after_s": 0.5,
        **overrides,
    }
    return load_settings(**values)


@pytest.mark.tc("TC-ASYNC-076", "TC-ASYNC-077", "TC-ASYNC-078")
def test_supervisor_restarts_a_killed_service_with_backoff_and_alerts_when_it_keeps_dying(
    tmp_path: Path,
):
    settings = _fast_settings(tmp_path)
    env = services.prefect_env(settings)
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    alerts: list[tuple[str, str]] = []
    spec = ServiceSpec("sleeper", lambda: services.spawn("sleeper", sleeper, env, settings))
    sup = Supervisor(settings, [spec], lambda level, title, *_: alerts.append((level, title)))
    first = sup.launch("sleeper")
    try:
        sup.tick()
        assert read_state(settings)["services"]["sleeper"]["status"] == "running"
        pids = [first.pid]
        for _ in range(3):  # killed 3 times: each time back, on a new pid
            os.kill(pids[-1], signal.SIGKILL)
            _tick_until(
                sup,
                lambda: (
                    sup.states["sleeper"].status == "running"
                    and sup.states["sleeper"].pid not in pids
                ),
                10,
                "the sleeper to be restarted",
            )
            pids.append(sup.states["sleeper"].pid)
        state = read_state(settings)["services"]["sleeper"]
        assert state["restarts"] == 3 and state["last_exit_code"] == -signal.SIGKILL
        assert state["uptime_s"] is not None and state["pid"] == pids[-1]
        assert [r.pid for r in service_records.read_records(settings) if r.name == "sleeper"] == [
            pids[-1]
        ]
        assert alerts.count(("warning", "sleeper died: restarting")) == 3
        assert ("critical", "sleeper keeps failing") in alerts  # 3 deaths within the window
        assert [backoff_s(n, settings) for n in (1, 2, 3, 4)] == [0.2, 0.4, 0.8, 0.8]
    finally:
        services.stop_all(settings, timeout_s=2)


@pytest.mark.tc("TC-ASYNC-076", "TC-ASYNC-078")
def test_a_service_that_cannot_start_is_reported_failing_and_retried_until_it_comes_back(
    tmp_path: Path,
):
    from core.exceptions import ServiceUnavailableError

    settings = _fast_settings(tmp_path)
    env = services.prefect_env(settings)
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    broken = {"on": False}
    attempts: list[float] = []

    def start() -> subprocess.Popen:
        attempts.append(time.monotonic())
        if broken["on"]:
            raise ServiceUnavailableError("flaky did not answer within 1 s")
        return services.spawn("flaky", sleeper, env, settings)

    alerts: list[tuple[str, str]] = []
    sup = Supervisor(
        settings, [ServiceSpec("flaky", start)], lambda lvl, title, *_: alerts.append((lvl, title))
    )
    first = sup.launch("flaky")
    try:
        broken["on"] = True
        os.kill(first.pid, signal.SIGKILL)
        _tick_until(sup, lambda: len(attempts) >= 4, 15, "three failed restarts")
        st = read_state(settings)["services"]["flaky"]
        assert st["status"] == "restarting" and st["restarts"] == 0
        assert st["last_error"] == "restart failed: flaky did not answer within 1 s"
        assert ("critical", "flaky keeps failing") in alerts
        gaps = [b - a for a, b in zip(attempts[1:], attempts[2:], strict=False)]
        assert gaps[0] >= 0.35 and gaps[1] >= 0.7  # 0.4 s then 0.8 s (the maximum)
        broken["on"] = False
        _tick_until(sup, lambda: sup.states["flaky"].status == "running", 10, "flaky back")
        assert read_state(settings)["services"]["flaky"]["restarts"] == 1
    finally:
        services.stop_all(settings, timeout_s=2)


@pytest.mark.tc("TC-ASYNC-102", "TC-ASYNC-077")
def test_a_stopped_service_is_killed_as_hung_and_restarted(tmp_path: Path):
    settings = _fast_settings(tmp_path)
    env = services.prefect_env(settings)
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    alerts: list[tuple[str, str, str]] = []
    spec = ServiceSpec("stuck", lambda: services.spawn("stuck", sleeper, env, settings))
    sup = Supervisor(
        settings, [spec], lambda lvl, title, msg, _key: alerts.append((lvl, title, msg))
    )
    first = sup.launch("stuck")
    try:
        os.kill(first.pid, signal.SIGSTOP)
        started = time.monotonic()
        _tick_until(
            sup,
            lambda: (
                sup.states["stuck"].status == "running" and sup.states["stuck"].pid != first.pid
            ),
            10,
            "the stopped service to be replaced",
        )
        assert time.monotonic() - started < 5
        assert first.poll() == -signal.SIGKILL
        assert alerts[0][:2] == ("critical", "stuck hung: killed and restarted")
        assert "SIGSTOP" in alerts[0][2]
    finally:
        services.stop_all(settings, timeout_s=2)


FAKE_WORKER = (
    "import os, subprocess, sys, time\n"
    # a flow-run process in a session of its own, as the process worker starts them; it saves
    # a 'checkpoint' on SIGTERM like the training flow does
    "code = ('import pathlib, signal, sys, time\\n'\n"
    "        'def stop(*_):\\n'\n"
    "        '    pathlib.Path(sys.argv[1]).write_text(\"saved\")\\n'\n"
    "        '    sys.exit(0)\\n'\n"
    "        'signal.signal(signal.SIGTERM, stop)\\n'\n"
    '        \'pathlib.Path(sys.argv[1] + ".ready").write_text("")\\n\'\n'
    "        'time.sleep(120)\\n')\n"
    "subprocess.Popen([sys.executable, '-c', code, sys.argv[1]], start_new_session=True,\n"
    "                 env={**os.environ, 'PREFECT__FLOW_RUN_ID': sys.argv[2]})\n"
    "time.sleep(120)\n"
)


@pytest.mark.tc("TC-ASYNC-077")
def test_a_dead_workers_flow_run_is_found_after_reparenting_and_ended_with_sigterm(
    tmp_path: Path,
):
    settings = _fast_settings(tmp_path, prefect_port=free_port())
    env = services.prefect_env(settings)
    checkpoint = tmp_path / "checkpoint"
    run_id = str(uuid.uuid4())
    worker = services.spawn(
        "fake-worker",
        [sys.executable, "-c", FAKE_WORKER, str(checkpoint), run_id],
        env,
        settings,
    )
    try:
        deadline = time.monotonic() + 30
        ready = tmp_path / "checkpoint.ready"  # its SIGTERM handler is installed
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        flow_run = psutil.Process(worker.pid).children()[0]
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(5)
        # reparented: no record and no parent leads to it any more; only its environment does
        assert flow_run.ppid() != worker.pid
        report = end_orphaned_flow_runs(settings, known=[], grace_s=10)
        assert report["ended"] == [flow_run.pid] and report["runs"] == [run_id]
        assert report["killed"] == 0 and checkpoint.read_text() == "saved"  # SIGTERM, not -9
        assert not psutil.pid_exists(flow_run.pid) or flow_run.status() == psutil.STATUS_ZOMBIE
        assert report["crashed"] == []  # no Prefect API here: left to crash recovery
    finally:
        services.stop_all(settings, timeout_s=2)


@pytest.mark.tc("TC-ASYNC-093", "TC-ASYNC-104")
def test_clean_up_deletes_only_result_and_chart_files_older_than_the_horizon(tmp_path: Path):
    settings = load_settings(state_dir=tmp_path / "state", run_retention_days=7)
    old_t = time.time() - 8 * 86400
    files = {
        "old_result": settings.prefect_home / "storage" / "a" / "old-result",
        "new_result": settings.prefect_home / "storage" / "new-result",
        "old_chart": settings.state_dir / "backtests" / "old.png",
        "new_chart": settings.state_dir / "backtests" / "new.png",
        "old_model": settings.model_dir / "old.keras.enc",
        "old_db": settings.prefect_home / "prefect.db",
    }
    for name, path in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 1000)
        if name.startswith("old"):
            os.utime(path, (old_t, old_t))
    summary = clean_up(settings)
    assert "result files: 1 deleted" in summary and "chart files: 1 deleted" in summary
    left = {name for name, path in files.items() if path.exists()}
    assert left == {"new_result", "new_chart", "old_model", "old_db"}
    assert not (settings.prefect_home / "storage" / "a").exists()  # emptied folder removed


@pytest.mark.tc("TC-ASYNC-077")
def test_stop_spares_other_owners(tmp_path: Path):
    settings = load_settings(state_dir=tmp_path / "state")
    # a record owned by another process survives a stop limited to this owner
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        rec = service_records.record_service(settings, "other", other.pid, tmp_path / "o.log")
        records = service_records.read_records(settings)
        records[-1].owner = rec.owner + 1
        service_records.write_records(settings, records)
        assert services.stop_all(settings, owner=rec.owner) == []
        assert other.poll() is None and service_records.pid_file(settings).exists()
        assert services.stop_all(settings) == ["other"]
        assert other.wait(5) is not None
    finally:
        other.kill()


@pytest.mark.tc("none")
def test_apply_deployments_is_skipped_only_when_inputs_and_deployments_are_unchanged(
    tmp_path: Path,
):
    settings = load_settings(state_dir=tmp_path / "state")
    names = set(work_pool.prefect_yaml_deployments())
    assert {"train-model", "backtest-strategy", "ingest-market-data"} <= names
    stamp = settings.prefect_home / "deployed.sha256"
    stamp.parent.mkdir(parents=True)
    stamp.write_text(work_pool.deployment_inputs_hash() + "\n")
    # unchanged inputs, every deployment present: no `prefect deploy` (no API needed)
    assert work_pool.apply_deployments(settings, {}, existing=names) is False
    assert work_pool.deployment_inputs_hash() == stamp.read_text().strip()
    # a stamp from other inputs, or a missing deployment, would run it: check the decision
    stamp.write_text("0" * 64)
    assert work_pool.deployment_inputs_hash() != stamp.read_text().strip()


@pytest.mark.tc("TC-ASYNC-077", "TC-ASYNC-102")
def test_status_shows_restarts_uptime_and_last_exit_of_supervised_services(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    from deployments.cli import main
    from deployments.up import status

    settings = _fast_settings(tmp_path, prefect_port=free_port())  # no API answers there
    env = services.prefect_env(settings)
    service_records.record_service(
        settings, service_records.CONTROLLER, os.getpid(), tmp_path / "up.log"
    )
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    spec = ServiceSpec("sleeper", lambda: services.spawn("sleeper", sleeper, env, settings))
    sup = Supervisor(settings, [spec], lambda *_: None)
    first = sup.launch("sleeper")
    try:
        os.kill(first.pid, signal.SIGKILL)
        _tick_until(sup, lambda: sup.states["sleeper"].restarts == 1, 10, "a restart")
        row = next(s for s in status(settings)["services"] if s["name"] == "sleeper")
        assert row["alive"] and row["pid"] == sup.states["sleeper"].pid != first.pid
        assert row["restarts"] == 1 and row["last_exit_code"] == -9 and row["uptime_s"] >= 0
        assert status(settings)["alerts"][0]["title"] == "sleeper died: restarting"
        monkeypatch.setenv("BOTAI_STATE_DIR", str(settings.state_dir))
        monkeypatch.setenv("BOTAI_PREFECT_PORT", str(settings.prefect_port))
        assert main(["status"]) == 1  # the API does not answer
        out = capsys.readouterr().out
        line = next(x for x in out.splitlines() if x.strip().startswith("sleeper"))
        assert line.split()[1:4] == [str(row["pid"]), "running", "1"], line
        assert "code -9: exited on its own with code -9" in line
        assert "WARNING: sleeper died: restarting" in out
    finally:
        services.stop_all(settings, owner=os.getpid(), timeout_s=2)


@pytest.mark.tc("TC-ASYNC-105")
def test_a_stop_signal_arriving_inside_a_probe_stops_the_supervisor(tmp_path: Path):
    """The supervisor survives any ``Exception`` of a probe; SIGINT landing inside a slow
    probe (a loaded machine) must still end ``botai up``, not be logged as a failed round."""
    import threading

    from deployments.up import StopRequested, _raise_stop

    settings = _fast_settings(tmp_path)
    env = services.prefect_env(settings)
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    in_probe = threading.Event()

    def slow_probe() -> str | None:
        in_probe.set()
        time.sleep(3)
        return None

    spec = ServiceSpec("slow", lambda: services.spawn("slow", sleeper, env, settings), slow_probe)
    sup = Supervisor(settings, [spec], lambda *_: None)
    sup.launch("slow")
    previous = signal.signal(signal.SIGINT, _raise_stop)
    sender = threading.Thread(
        target=lambda: in_probe.wait(10) and os.kill(os.getpid(), signal.SIGINT), daemon=True
    )
    try:
        sender.start()
        started = time.monotonic()
        with pytest.raises(StopRequested, match="SIGINT"):
            sup.run(should_stop=lambda: time.monotonic() - started > 15)
        assert in_probe.is_set() and time.monotonic() - started < 10
    finally:
        signal.signal(signal.SIGINT, previous)
        services.stop_all(settings, timeout_s=2)
