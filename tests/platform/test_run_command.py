"""The run command (`botai up`) on a fresh state folder and free ports: it reaches "ready",
serves the UI and the API, lists every deployment of prefect.yaml, starts the first
pipeline, and after SIGINT no process it started is left (flow runs included).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from core.settings import load_settings
from deployments.secrets import prefect_auth_string
from deployments.service_records import read_records
from integrations.embedded_mongo import free_port

pytestmark = pytest.mark.tc(
    "TC-ASYNC-094", "TC-ASYNC-099", "TC-ASYNC-100", "TC-ASYNC-101", "TC-ASYNC-105"
)

REPO_ROOT = Path(__file__).resolve().parents[2]
GATEWAY_SECRET = "gateway-signing-secret-" + "x" * 24


def _wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.mark.tc("TC-ASYNC-105", "TC-ASYNC-101", "TC-ASYNC-087")
def test_up_ready_serves_ui_and_deployments_then_sigint_leaves_nothing(tmp_path: Path):
    state = tmp_path / "state"
    port, mongo_port, api_port = free_port(), free_port(), free_port()
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
        BOTAI_BINANCE_BASE_URL=f"http://127.0.0.1:{free_port()}",  # nothing listens: synthetic
        BOTAI_API_JWT_SECRET=GATEWAY_SECRET,
        BOTAI_API_PORT=str(api_port),
    )
    settings = load_settings(state_dir=state, prefect_port=port, mongodb_port=mongo_port)
    out_path = tmp_path / "up.out"
    with open(out_path, "w") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "deployments.cli", "up"],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    seen: dict[int, psutil.Process] = {}
    try:
        started = time.monotonic()
        _wait_for(
            lambda: up.poll() is not None or "first pipeline" in out_path.read_text(),
            420,  # a fresh Prefect database migrates: 100 s seen for the server alone at load 19
            "botai up to print 'ready' and start the first pipeline",
        )
        text = out_path.read_text()
        assert up.poll() is None, text[-3000:]
        assert "botai: ready in" in text
        print(f"botai up -> ready (fresh state folder): {time.monotonic() - started:.1f} s")
        assert f"http://127.0.0.1:{port}" in text and "synthetic" in text

        # the API needs the stack's auth string (basic auth in the URL); /health does not
        api = settings.prefect_api_url.replace("://", f"://{prefect_auth_string(settings)}@", 1)
        assert httpx.get(f"{api}/health", timeout=5).json() is True
        ui = httpx.get(settings.prefect_ui_url + "/", timeout=5)
        assert ui.status_code == 200 and "<html" in ui.text.lower()

        spec = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
        wanted = {d["name"] for d in spec["deployments"]}
        listed = httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()
        assert {d["name"] for d in listed} == wanted
        assert all(d["work_pool_name"] == "botai-process" for d in listed)
        queues = httpx.post(
            f"{api}/work_pools/botai-process/queues/filter", json={}, timeout=10
        ).json()
        limits = {q["name"]: q["concurrency_limit"] for q in queues}
        assert limits["ml_training"] == 2
        assert {"analysis", "backtesting", "scheduled"} <= set(limits)

        # the thin CLI commands against the running stack
        cli = [sys.executable, "-m", "deployments.cli"]
        ingest = subprocess.run(
            [*cli, "ingest", "--source", "synthetic", "--symbols", "XRPUSDT", "--days", "10"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ingest.returncode == 0, ingest.stderr[-2000:]
        new_bars = re.search(r"XRPUSDT 1h \(synthetic\): \+(\d+) new", ingest.stdout)
        assert new_bars and 238 <= int(new_bars.group(1)) <= 240, ingest.stdout  # 10 days of 1h
        status = subprocess.run(
            [*cli, "status", "--json"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        info = json.loads(status.stdout)
        assert info["api_healthy"] and all(s["alive"] for s in info["services"])
        supervised = [s for s in info["services"] if s["name"] != "botai-up"]
        assert supervised and all(s["restarts"] == 0 and s["uptime_s"] > 0 for s in supervised)
        assert {q["queue"] for q in info["queues"]} >= {"ml_training", "analysis", "backtesting"}
        assert any(w["status"] == "ONLINE" for w in info["workers"])
        assert {d.split("/", 1)[1] for d in info["deployments"]} == wanted

        # the first pipeline: one run per existing deployment; wait until one runs
        runs = httpx.post(f"{api}/flow_runs/filter", json={}, timeout=10).json()
        pipeline = {"ingest-market-data", "train-model", "backtest-strategy"} & wanted
        ids = {d["id"] for d in listed if d["name"] in pipeline}
        first = [r for r in runs if r["deployment_id"] in ids and r["parent_task_run_id"] is None]
        assert len(first) == len(pipeline), [
            (r["name"], r["flow_id"], r["deployment_id"], r["parent_task_run_id"]) for r in runs
        ]

        # the HTTP gateway: started because BOTAI_API_JWT_SECRET is set, creates real runs
        gateway = f"http://127.0.0.1:{api_port}/api"
        assert f"HTTP gateway: {gateway}" in text
        assert httpx.get(f"{gateway}/health", timeout=10).json()["status"] == "ok"
        token = subprocess.run(
            [sys.executable, "-m", "api.cli", "token", "--user", "ops", "--admin"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()
        today = datetime.now(UTC).date()
        body = {
            "strategy_name": "macd",
            "symbol": "ETHUSDT",
            "start_date": str(today - timedelta(days=30)),
            "end_date": str(today),
        }
        auth = {"Authorization": f"Bearer {token}"}
        assert httpx.post(f"{gateway}/tasks/backtest", json=body, timeout=10).status_code == 401
        accepted = httpx.post(f"{gateway}/tasks/backtest", json=body, headers=auth, timeout=30)
        assert accepted.status_code == 202, accepted.text
        run = httpx.get(f"{api}/flow_runs/{accepted.json()['task_id']}", timeout=10).json()
        assert run["parameters"]["params"]["symbol"] == "ETHUSDT" and "user:ops" in run["tags"]
        status = httpx.get(gateway + accepted.json()["status_url"][4:], headers=auth, timeout=10)
        assert status.json()["job"] == "backtest" and status.json()["owner"] == "ops"

        def a_run_is_running() -> bool:
            for p in _tree(up.pid):
                seen[p.pid] = p
            states = [
                r["state_type"]
                for r in httpx.post(f"{api}/flow_runs/filter", json={}, timeout=10).json()
            ]
            return "RUNNING" in states

        _wait_for(a_run_is_running, 90, "a first-pipeline run to be Running")
        records = read_records(settings)
        assert {r.name for r in records} >= {
            "botai-up",
            "nx-27017",
            "prefect-server",
            "prefect-worker",
            "api-gateway",
        }
        for r in records:  # the gateway's secret is in the gateway's environment only
            environ = Path(f"/proc/{r.pid}/environ").read_bytes()
            expected = r.name in ("botai-up", "api-gateway")
            assert (GATEWAY_SECRET.encode() in environ) is expected, r.name
        for p in _tree(up.pid):
            seen[p.pid] = p
        for r in records:
            for p in _tree(r.pid):
                seen[p.pid] = p
        assert len(seen) >= 5  # up, store, server, worker, at least one flow-run process

        # the first forecast, shown to a newcomer; botai models from another terminal (no
        # secret in its environment: the gateway left its URL and the operator's token)
        shown = out_path.read_text()
        assert "first forecast (lstm BTCUSDT 1h):" in shown
        assert "botai models promote lstm-BTCUSDT-1h-v1 --reason" in shown
        fresh = {k: v for k, v in env.items() if k != "BOTAI_API_JWT_SECRET"}
        models = subprocess.run(
            [*cli, "models", "list", "--symbol", "BTCUSDT", "--json"],
            cwd=REPO_ROOT,
            env=fresh,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert models.returncode == 0, models.stderr[-2000:]
        assert json.loads(models.stdout)["deployed"] == {}  # nothing deployed yet
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(90)
        except subprocess.TimeoutExpired:
            up.kill()
            raise AssertionError(
                "botai up did not stop within 90 s of SIGINT:\n" + out_path.read_text()[-3000:]
            ) from None
    assert up.returncode == 0, out_path.read_text()[-3000:]
    left = [p for p in seen.values() if _alive(p)]
    assert not left, [(p.pid, p.cmdline()) for p in left]
    by_cmdline = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if any(str(state) in a for a in (p.info["cmdline"] or [])):
            by_cmdline.append(p.info)
    assert not by_cmdline
    assert not (state / "run" / "services.json").exists()
    logs = [out_path, *sorted((state / "run").glob("*.log"))]
    assert any("Uvicorn running" in p.read_text() for p in logs)  # the gateway's own log
    for path in logs:  # the gateway's signing secret is in no output and no log
        assert GATEWAY_SECRET not in path.read_text(errors="replace"), path
