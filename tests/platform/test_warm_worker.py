"""The warm worker (deployments/warm_worker.py): runs forked from a pre-imported parent keep
what a process per run gives - a kill -9 of one run leaves a concurrent run unharmed and the
worker serving, cancellation ends a run within 10 s, a run re-run under the same flow-run id
runs again, and a real flow (bulk-analysis) runs end to end.

One real warm worker (``python -m deployments.warm_worker``) serves a test pool for the
whole module; its fork server also preloads tests.platform.warm_flows.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.states import Cancelling, Scheduled

from flows.bulk_analysis import bulk_analysis
from integrations.market_data.synthetic import generate_candles
from integrations.store import Store
from tests.peers import create_process_deployment, create_process_pool
from tests.platform.warm_flows import warm_probe

REPO_ROOT = Path(__file__).resolve().parents[2]
SLOW_POLL_S = 20


def _wait(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture(scope="module")
def warm_pool(prefect_server: str, tmp_path_factory) -> Iterator[dict]:
    """A process pool (queue ``warm``), the probe and bulk-analysis deployments and a
    running warm worker. Returns {"pool", "probe", "bulk", "worker"}."""
    pool = f"warm-test-{uuid.uuid4().hex[:6]}"
    create_process_pool(pool, {"warm": None})
    probe = create_process_deployment(
        warm_probe, f"probe-{pool}", pool, "warm", "tests/platform/warm_flows.py:warm_probe"
    )
    bulk = create_process_deployment(
        bulk_analysis, f"bulk-{pool}", pool, "warm", "flows/bulk_analysis.py:bulk_analysis"
    )
    log_path = tmp_path_factory.mktemp("warm") / "worker.log"
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "deployments.warm_worker", "--pool", pool]
    # polling every 20 s: runs are picked up by the Scheduled event (the poll is the fallback)
    cmd += ["--preload", "tests.platform.warm_flows", "--query-seconds", str(SLOW_POLL_S)]
    with open(log_path, "w") as log:
        worker = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    try:
        with get_client(sync_client=True) as client:
            _wait(
                lambda: (
                    worker.poll() is not None
                    or any(
                        str(w.status).upper().endswith("ONLINE")
                        for w in client.read_workers_for_work_pool(pool)
                    )
                ),
                180,
                "the warm worker to come online",
            )
        assert worker.poll() is None, log_path.read_text()[-3000:]
        yield {"pool": pool, "probe": probe, "bulk": bulk, "worker": worker, "log": log_path}
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()


def _state(client, run_id) -> str:
    return client.read_flow_run(run_id).state.type.value


@pytest.mark.tc("TC-ASYNC-077", "TC-ASYNC-086")
def test_kill_9_of_one_run_leaves_concurrent_run_and_worker_unharmed(warm_pool, tmp_path: Path):
    with get_client(sync_client=True) as client:
        victim = client.create_flow_run_from_deployment(
            warm_pool["probe"], parameters={"sleep_s": 60, "marker_dir": str(tmp_path)}
        )
        other = client.create_flow_run_from_deployment(
            warm_pool["probe"], parameters={"sleep_s": 4, "marker_dir": str(tmp_path)}
        )
        pid_file = tmp_path / f"{victim.id}.pid"
        _wait(lambda: pid_file.exists() and pid_file.read_text(), 90, "the victim to run")
        pid = int(pid_file.read_text())
        # the run's own process is recorded as host:pid (what crash recovery checks)
        infra = _wait(lambda: client.read_flow_run(victim.id).infrastructure_pid, 10, "pid")
        assert infra == f"{socket.gethostname()}:{pid}"
        assert pid != warm_pool["worker"].pid
        _wait(lambda: _state(client, other.id) == "RUNNING", 60, "the other run to run")
        os.kill(pid, signal.SIGKILL)
        _wait(lambda: _state(client, victim.id) == "CRASHED", 30, "the victim to be Crashed")
        _wait(lambda: _state(client, other.id) == "COMPLETED", 60, "the other run to complete")
        assert warm_pool["worker"].poll() is None
        other_pid = int((tmp_path / f"{other.id}.pid").read_text())
        assert other_pid != pid
        # the worker serves on: a new run completes, in a new process
        after = client.create_flow_run_from_deployment(warm_pool["probe"], parameters={})
        _wait(lambda: _state(client, after.id) == "COMPLETED", 60, "a later run to complete")
        # a run re-run under the same flow-run id (crash recovery's resubmission) runs again
        client.set_flow_run_state(other.id, Scheduled(), force=True)
        _wait(
            lambda: (
                client.read_flow_run(other.id).run_count >= 2
                and _state(client, other.id) == "COMPLETED"
            ),
            90,
            "the re-run to complete",
        )
        assert int((tmp_path / f"{other.id}.pid").read_text()) != other_pid
        # its memory went back: no process of the finished runs is left
        assert not psutil.pid_exists(other_pid) or psutil.Process(other_pid).status() == "zombie"


@pytest.mark.tc("TC-ASYNC-088")
def test_a_scheduled_run_is_picked_up_on_its_event_not_at_the_next_poll(warm_pool):
    """The worker polls every 20 s; each of four runs must still be claimed (Pending)
    within 6 s of its creation: only the Scheduled event can do that (by chance, a poll
    would claim all four so fast with probability (6/20)^4, under 1 %). Unloaded, a claim
    takes about 0.3 s; the bound leaves room for a loaded CI machine (3.2 s seen)."""
    with get_client(sync_client=True) as client:
        claim_s = []
        for _ in range(4):
            run = client.create_flow_run_from_deployment(warm_pool["probe"], parameters={})
            created = client.read_flow_run(run.id).created
            _wait(lambda r=run: _state(client, r.id) == "COMPLETED", 60, "the run to complete")
            states = {s.type.value: s.timestamp for s in client.read_flow_run_states(run.id)}
            claim_s.append((states["PENDING"] - created).total_seconds())
        assert max(claim_s) < 6.0, claim_s


@pytest.mark.tc("TC-ASYNC-005")
def test_cancelling_a_warm_run_ends_it_within_10_s(warm_pool, tmp_path: Path):
    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(
            warm_pool["probe"], parameters={"sleep_s": 120, "marker_dir": str(tmp_path)}
        )
        pid_file = tmp_path / f"{run.id}.pid"
        _wait(lambda: pid_file.exists() and pid_file.read_text(), 90, "the run to start")
        _wait(lambda: _state(client, run.id) == "RUNNING", 30, "the run to be Running")
        pid = int(pid_file.read_text())
        asked = time.monotonic()
        client.set_flow_run_state(run.id, Cancelling(), force=True)
        _wait(lambda: _state(client, run.id) == "CANCELLED", 10, "Cancelled within 10 s")
        _wait(lambda: not psutil.pid_exists(pid), 10, "the run's process to exit")
        print(f"cancelled in {time.monotonic() - asked:.1f} s")
        assert warm_pool["worker"].poll() is None


@pytest.mark.tc("TC-ASYNC-011", "TC-ASYNC-088")
def test_real_flow_runs_end_to_end_on_the_warm_worker(warm_pool, mongo_block: Store):
    for s in ("BTCUSDT", "ETHUSDT"):
        mongo_block.upsert_candles(
            s,
            "1h",
            generate_candles(s, "1h", datetime(2026, 9, 1, tzinfo=UTC), 300),
            source="synthetic",
        )
    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(
            warm_pool["bulk"],
            parameters={"params": {"symbols": ["BTCUSDT", "ETHUSDT", "NOPEUSDT"]}},
        )
        _wait(lambda: client.read_flow_run(run.id).state.is_final(), 120, "bulk-analysis")
        final = client.read_flow_run(run.id)
        assert final.state.is_completed(), final.state.message

        def summary_lines() -> list[str]:  # the run's logs reach the API shortly after it ends
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
            return [r.message for r in logs if r.message.startswith("bulk analysis 1h:")]

        summary = _wait(summary_lines, 30, "the run's summary log line")
        assert "2/3 analysed" in summary[0] and "1 failed" in summary[0], summary
        assert final.infrastructure_pid.startswith(f"{socket.gethostname()}:")
        states = {s.type.value: s.timestamp for s in client.read_flow_run_states(run.id)}
        print(
            "bulk-analysis on the warm worker: request -> Running "
            f"{(states['RUNNING'] - run.created).total_seconds():.2f} s, -> Completed "
            f"{(states['COMPLETED'] - run.created).total_seconds():.2f} s, "
            f"load {os.getloadavg()[0]:.1f}"
        )


@pytest.mark.tc("TC-ASYNC-088")
def test_flow_is_taken_from_the_fork_server_only_when_that_is_the_deployed_code():
    from deployments.fork_server import preload_modules, preloaded_entrypoint

    preloaded = set(preload_modules())
    cwd = [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO_ROOT)}}]
    templated = [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $BOTAI_ROOT }}"}}
    ]
    ep = "flows/bulk_analysis.py:bulk_analysis"
    assert preloaded_entrypoint(ep, cwd, {}, preloaded) == (
        REPO_ROOT,
        "flows.bulk_analysis:bulk_analysis",
    )
    env = {"BOTAI_ROOT": str(REPO_ROOT)}
    assert (
        preloaded_entrypoint(ep, templated, env, preloaded)[1]
        == "flows.bulk_analysis:bulk_analysis"
    )
    # another checkout, other pull steps, a module the server did not import: stock loading
    assert preloaded_entrypoint(ep, cwd[:0], {}, preloaded) is None
    other = [{"prefect.deployments.steps.set_working_directory": {"directory": "/tmp"}}]
    assert preloaded_entrypoint(ep, other, {}, preloaded) is None
    clone = [*cwd, {"prefect.deployments.steps.git_clone": {"repository": "x"}}]
    assert preloaded_entrypoint(ep, clone, {}, preloaded) is None
    assert preloaded_entrypoint("bench/latency_job.py:latency_job", cwd, {}, preloaded) is None
