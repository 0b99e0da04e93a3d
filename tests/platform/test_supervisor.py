"""A real supervised stack (`botai up` on free ports, a temp state folder) under faults:
the worker killed mid-run (its orphaned flow-run process is ended and the run left Crashed
for recovery), the worker stopped (SIGSTOP: alerted within 60 s and replaced), the store and
the Prefect server killed (back on the same port; a new run is picked up and completes).
Nothing tears the stack down; `botai status --json` counts the restarts and shows queues and
worker heartbeats. Last, `botai up` itself is killed -9 and started again: it adopts the same
processes and their in-flight run. Also the queue-depth reads against the session's Prefect server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from prefect import flow

from core.settings import Settings, load_settings
from integrations.embedded_mongo import free_port
from integrations.store import connect

REPO_ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = "tests/platform/test_supervisor.py:supervisor_test_sleep"


@flow(name="supervisor-test-sleep")
def supervisor_test_sleep(seconds: float, marker: str = "") -> float:
    """Sleep ``seconds`` (writing this process's pid to ``marker`` first). Returns seconds."""
    if marker:
        Path(marker).write_text(str(os.getpid()))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.2)
    return seconds


def _wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@dataclass
class Stack:
    up: subprocess.Popen
    settings: Settings
    env: dict[str, str]
    out_path: Path
    tmp: Path
    old_run_id: str = ""

    def status(self) -> dict:
        res = subprocess.run(
            [sys.executable, "-m", "deployments.cli", "status", "--json"],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return json.loads(res.stdout)

    def service(self, name: str) -> dict:
        return next(s for s in self.status()["services"] if s["name"] == name)

    def running_pid(self, name: str) -> int:
        from deployments.supervisor import read_state

        st = read_state(self.settings).get("services", {}).get(name, {})
        return st.get("pid") if st.get("status") == "running" else 0

    def api(self, path: str, body: dict | None = None) -> httpx.Response:
        url = f"{self.settings.prefect_api_url}{path}"
        user, _, password = (self.settings.prefect_auth_string() or ":").partition(":")
        auth = (user, password)  # the stack's API needs its auth string (docs/security.md)
        for _ in range(10):  # a busy SQLite answers 503, which Prefect's own clients retry too
            if body is None:
                r = httpx.get(url, timeout=10, auth=auth)
            else:
                r = httpx.post(url, json=body, timeout=10, auth=auth)
            if r.status_code != 503:
                break
            time.sleep(0.5)
        return r

    def alerts(self, title_part: str) -> list[dict]:
        client = connect(self.settings.embedded_mongodb_uri, timeout_ms=5000)
        try:
            docs = list(client["bot_ai"]["alerts"].find({}, {"_id": 0}))
        finally:
            client.close()
        return [d for d in docs if title_part in d.get("title", "")]

    def assert_up(self) -> None:
        assert self.up.poll() is None, self.out_path.read_text()[-3000:]


def _start_up(env: dict[str, str], out_path: Path) -> subprocess.Popen:
    """``botai up --no-first-pipeline`` in the background, its output in ``out_path``."""
    with open(out_path, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "deployments.cli", "up", "--no-first-pipeline"],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("supervised")
    state = tmp / "state"
    port, mongo_port = free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "BOTAI_", "MONGODB_", "DASK_"))
    }
    env.update(
        BOTAI_STATE_DIR=str(state),
        BOTAI_PREFECT_PORT=str(port),
        BOTAI_MONGODB_PORT=str(mongo_port),
        BOTAI_MIN_FREE_DISK_GB="0.1",
        BOTAI_DEMO_PROBE_TIMEOUT_S="1",
        BOTAI_DEMO_DAYS="60",
        BOTAI_BINANCE_BASE_URL=f"http://127.0.0.1:{free_port()}",  # nothing listens: synthetic
        BOTAI_FLOW_RUN_STOP_GRACE_S="10",
        BOTAI_ALERT_COOLDOWN_S="0",
        BOTAI_RUN_RETENTION_DAYS="1",  # the shortest horizon, so old things can be faked
        BOTAI_CLEANUP_INTERVAL_S="60",
    )
    settings = load_settings(state_dir=state, prefect_port=port, mongodb_port=mongo_port)
    out_path = tmp / "up.out"
    s = Stack(_start_up(env, out_path), settings, env, out_path, tmp)
    up = s.up
    try:
        _wait_for(
            lambda: up.poll() is not None or "supervising:" in out_path.read_text(),
            300,
            "botai up to be ready and supervising",
        )
        s.assert_up()
        from deployments.up import prefect_api
        from tests.peers import create_process_deployment

        with prefect_api(settings):
            create_process_deployment(
                supervisor_test_sleep, "sleep", settings.work_pool, "analysis", ENTRYPOINT
            )
        s.old_run_id = _finished_run_aged(s, days=2)
        charts = settings.state_dir / "backtests"
        charts.mkdir(parents=True, exist_ok=True)
        for name, age_days in (("old.png", 2), ("new.png", 0)):
            (charts / name).write_bytes(b"png")
            t = time.time() - age_days * 86400
            os.utime(charts / name, (t, t))
        yield s
    finally:
        up = s.up  # a later botai up that adopted the stack, if a test started one
        up.send_signal(signal.SIGINT)
        try:
            up.wait(120)
        except subprocess.TimeoutExpired:
            up.kill()
            raise
    assert up.returncode == 0, s.out_path.read_text()[-3000:]
    left = [
        p.info
        for p in psutil.process_iter(["pid", "cmdline"])
        if any(str(state) in a for a in (p.info["cmdline"] or []))
    ]
    assert not left


def _finished_run_aged(stack: Stack, days: float) -> str:
    """A Completed run whose end time is set ``days`` back in the server's SQLite database
    (the API stamps end times with the server's clock). Returns its id."""
    import sqlite3
    from datetime import UTC, datetime, timedelta

    flow_id = stack.api("/flows/", {"name": "supervisor-test-aged"}).json()["id"]
    run_id = stack.api("/flow_runs/", {"flow_id": flow_id}).json()["id"]  # no deployment
    for state in ("RUNNING", "COMPLETED"):
        res = stack.api(f"/flow_runs/{run_id}/set_state", {"state": {"type": state}, "force": True})
        assert res.status_code in (200, 201), res.text
    ended = (datetime.now(UTC) - timedelta(days=days)).strftime("%Y-%m-%d %H:%M:%S.%f")
    db = sqlite3.connect(stack.settings.prefect_home / "prefect.db", timeout=30)
    try:
        cur = db.execute(
            "UPDATE flow_run SET end_time = ?, start_time = ? WHERE id IN (?, ?)",
            (ended, ended, run_id, run_id.replace("-", "")),
        )
        db.commit()
        assert cur.rowcount == 1
    finally:
        db.close()
    return run_id


def _run(stack: Stack, seconds: float, marker: str = "") -> str:
    deployments = stack.api("/deployments/filter", {}).json()
    dep = next(d for d in deployments if d["name"] == "sleep")
    run = stack.api(
        f"/deployments/{dep['id']}/create_flow_run",
        {"parameters": {"seconds": seconds, "marker": marker}},
    )
    assert run.status_code == 201, run.text
    return run.json()["id"]


def _state(stack: Stack, run_id: str) -> str:
    try:
        return stack.api(f"/flow_runs/{run_id}").json()["state"]["type"]
    except (httpx.HTTPError, KeyError, TypeError):
        return "?"


@pytest.mark.slow
@pytest.mark.tc("TC-ASYNC-077")
def test_killed_worker_is_restarted_and_its_orphaned_flow_run_ended(stack: Stack):
    marker = stack.tmp / "flow-run.pid"
    run_id = _run(stack, 600, str(marker))
    pid = int(_wait_for(lambda: marker.exists() and marker.read_text(), 120, "the run to start"))
    flow_proc = psutil.Process(pid)
    worker_pid = stack.running_pid("prefect-worker")
    assert flow_proc.pid in {c.pid for c in psutil.Process(worker_pid).children(recursive=True)}

    killed_at = time.monotonic()
    os.kill(worker_pid, signal.SIGKILL)
    new_pid = _wait_for(
        lambda: (p := stack.running_pid("prefect-worker")) and p != worker_pid and p,
        60,
        "a new worker",
    )
    _wait_for(lambda: not flow_proc.is_running(), 60, "the orphaned flow-run process to end")
    ended_s = time.monotonic() - killed_at
    _wait_for(lambda: _state(stack, run_id) == "CRASHED", 60, "the orphaned run to be Crashed")
    print(f"worker kill -9 -> orphan ended after {ended_s:.1f} s, new worker pid {new_pid}")
    assert ended_s < 60
    stack.assert_up()
    worker = stack.service("prefect-worker")
    assert worker["alive"] and worker["restarts"] >= 1 and worker["last_exit_code"] == -9
    assert _wait_for(lambda: stack.alerts("prefect-worker died"), 30, "the death alert")


@pytest.mark.slow
@pytest.mark.tc("TC-ASYNC-102", "TC-ASYNC-077")
def test_stopped_worker_is_alerted_within_60_s_and_replaced(stack: Stack):
    worker_pid = _wait_for(lambda: stack.running_pid("prefect-worker"), 60, "a running worker")
    before = stack.service("prefect-worker")["restarts"]
    stopped_at = time.monotonic()
    os.kill(worker_pid, signal.SIGSTOP)
    try:
        alert = _wait_for(lambda: stack.alerts("prefect-worker hung"), 60, "the hung alert")
    finally:
        if psutil.pid_exists(worker_pid):
            os.kill(worker_pid, signal.SIGCONT)
    alerted_s = time.monotonic() - stopped_at
    print(f"worker SIGSTOP -> alert after {alerted_s:.1f} s")
    assert alerted_s < 60 and alert[0]["level"] == "critical"
    _wait_for(
        lambda: stack.running_pid("prefect-worker") not in (0, worker_pid), 60, "a new worker"
    )
    assert not psutil.pid_exists(worker_pid) or psutil.Process(worker_pid).status() == "zombie"
    assert stack.service("prefect-worker")["restarts"] == before + 1
    assert any("hung" in a["title"] for a in stack.status()["alerts"])


@pytest.mark.slow
@pytest.mark.tc(
    "TC-ASYNC-076", "TC-ASYNC-078", "TC-ASYNC-079", "TC-ASYNC-087", "TC-ASYNC-093", "TC-ASYNC-104"
)
def test_killed_store_and_server_come_back_on_their_ports_and_new_runs_complete(stack: Stack):
    settings = stack.settings
    for name in ("nx-27017", "prefect-server"):
        pid = _wait_for(lambda n=name: stack.running_pid(n), 60, f"{name} running")
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        _wait_for(
            lambda n=name, p=pid: stack.running_pid(n) not in (0, p), 180, f"{name} restarted"
        )
        print(f"{name} kill -9 -> running again after {time.monotonic() - killed_at:.1f} s")
        stack.assert_up()
    client = connect(settings.embedded_mongodb_uri, timeout_ms=5000)
    assert client.admin.command("ping")["ok"] == 1  # same port
    client.close()
    assert stack.api("/health").json() is True  # same port

    run_id = _run(stack, 0.5)  # the worker rode the restarts out, or was restarted
    _wait_for(lambda: _state(stack, run_id) == "COMPLETED", 180, "a new run to complete")
    info = _wait_for(
        lambda: (i := stack.status()).get("workers") and i, 60, "status with the pool read"
    )
    rows = {s["name"]: s for s in info["services"]}
    assert rows["nx-27017"]["restarts"] >= 1 and rows["prefect-server"]["restarts"] >= 1
    assert rows["nx-27017"]["last_exit_code"] == -9 and rows["prefect-server"]["alive"]
    assert all(r["alive"] and r["uptime_s"] is not None for r in rows.values() if "restarts" in r)
    queues = {q["queue"]: q for q in info["queues"]}
    assert {"ml_training", "analysis", "backtesting", "scheduled"} <= set(queues)
    assert queues["ml_training"]["concurrency_limit"] == 2
    mine = [w for w in info["workers"] if w["name"].startswith("botai-worker-")]
    assert mine and mine[0]["heartbeat_age_s"] < settings.worker_heartbeat_stale_s

    # retention: Prefect's db-vacuum deleted the run that ended 2 days ago (horizon 1 day),
    # the supervisor's clean-up the 2-day-old chart; today's run and chart are kept
    _wait_for(
        lambda: stack.api(f"/flow_runs/{stack.old_run_id}").status_code == 404,
        120,
        "the db-vacuum to delete the old run",
    )
    assert stack.api(f"/flow_runs/{run_id}").status_code == 200
    charts = settings.state_dir / "backtests"
    _wait_for(lambda: not (charts / "old.png").exists(), 90, "the clean-up of the old chart")
    assert (charts / "new.png").exists()
    jobs = stack.status()["jobs"]
    assert jobs[0]["name"] == "clean-up" and "chart files" in jobs[0]["last_summary"], jobs


@pytest.mark.slow
@pytest.mark.tc("TC-ASYNC-077", "TC-ASYNC-102")
def test_a_restarted_botai_up_adopts_the_running_services_and_their_in_flight_run(stack: Stack):
    """kill -9 of `botai up` alone: its services run on; a new `botai up` on the same state
    folder supervises the same processes (nothing killed), the run in flight completes, and a
    service that dies afterwards is restarted by the new supervisor."""
    from deployments.supervisor import read_state

    names = ("nx-27017", "prefect-server", "prefect-worker")
    pids = {n: _wait_for(lambda n=n: stack.running_pid(n), 60, f"{n} running") for n in names}
    marker = stack.tmp / "adopted-run.pid"
    run_id = _run(stack, 45, str(marker))
    flow_pid = int(_wait_for(lambda: marker.exists() and marker.read_text(), 120, "the run"))

    old_up = stack.up
    os.kill(old_up.pid, signal.SIGKILL)
    assert old_up.wait(30) == -9
    assert all(psutil.pid_exists(p) for p in [*pids.values(), flow_pid])

    stack.out_path = stack.tmp / "up-again.out"
    stack.up = _start_up(stack.env, stack.out_path)
    _wait_for(
        lambda: stack.up.poll() is not None or "supervising:" in stack.out_path.read_text(),
        180,
        "the new botai up to supervise",
    )
    stack.assert_up()
    out = stack.out_path.read_text()
    assert all(f"adopted {n} (pid {pids[n]})" in out for n in names), out[-3000:]
    assert read_state(stack.settings)["pid"] == stack.up.pid  # the new supervisor's view
    assert {n: stack.running_pid(n) for n in names} == pids  # the same processes
    assert psutil.pid_exists(flow_pid) and _state(stack, run_id) == "RUNNING"
    _wait_for(lambda: _state(stack, run_id) == "COMPLETED", 120, "the in-flight run to complete")

    os.kill(pids["prefect-worker"], signal.SIGKILL)  # a death after the adoption
    new_pid = _wait_for(
        lambda: (p := stack.running_pid("prefect-worker")) not in (0, pids["prefect-worker"]) and p,
        90,
        "the new supervisor to restart the worker",
    )
    worker = read_state(stack.settings)["services"]["prefect-worker"]  # the new supervisor's
    assert worker["status"] == "running" and worker["pid"] == new_pid and worker["restarts"] == 1
    assert "adopted: exit code unknown" in (worker.get("last_error") or "")
    run_id = _run(stack, 0.5)
    _wait_for(lambda: _state(stack, run_id) == "COMPLETED", 180, "a run on the new worker")


@pytest.mark.tc("TC-ASYNC-087", "TC-ASYNC-102")
def test_queue_depth_oldest_wait_and_missing_worker_are_read_and_alerted(prefect_server: str):
    import uuid

    from prefect.client.orchestration import get_client

    from tasks.monitoring import perform_health_check
    from tasks.queue_health import pool_health, pool_problems, queue_health_services
    from tests.peers import create_process_deployment, create_process_pool

    pool = f"qh-{uuid.uuid4().hex[:8]}"
    create_process_pool(pool, {"busy": 1, "idle": None})
    dep = create_process_deployment(supervisor_test_sleep, "qh", pool, "busy", ENTRYPOINT)
    with get_client(sync_client=True) as client:
        ids = [
            client.create_flow_run_from_deployment(dep, parameters={"seconds": 1}).id
            for _ in range(3)
        ]
        time.sleep(1.5)
        health = pool_health(client, pool)
    queues = {q.queue: q for q in health.queues}
    assert queues["busy"].waiting == 3 and queues["busy"].by_state == {"Scheduled": 3}
    assert queues["busy"].oldest_waiting_s >= 1.0 and queues["busy"].oldest_run_id == str(ids[0])
    assert queues["idle"].waiting == 0 and queues["idle"].oldest_waiting_s is None
    assert health.workers == []

    settings = load_settings(queue_max_depth=2, queue_max_wait_s=1.0, work_pool=pool)
    problems = pool_problems(health, settings)
    assert problems[0][0] == "critical" and "no live worker" in problems[0][1]
    assert [s for s, _ in problems[1:]] == ["warning", "warning"]
    assert "3 runs waiting (threshold 2)" in problems[2][1]
    entries = queue_health_services(health, settings)
    assert entries["Worker heartbeats"].severity == "critical"
    assert entries["Work queue busy"].severity == "warning"
    assert entries["Work queue idle"].severity == "ok"
    report = perform_health_check([], settings, None, None, extra_services=entries)
    assert report.overall_status == "critical"
    assert any("no live worker" in a for a in report.critical_alerts)
    assert sum("Work queue busy" in a for a in report.alerts) == 1
