"""Metrics and alerts for operators: a real Prometheus scrapes the gateway's ``/metrics`` and a
real warm worker's endpoint, evaluates config/prometheus/alerts.yml, and the alerts that must
fire do (queue stuck, dead letters, LLM cost critical, deployed model below its accuracy
target, then worker gone after a kill -9); the figures equal what the Prefect API and the
store hold, and every query of the Grafana dashboard has data. A slow or dead source never
hangs a scrape.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from prefect.client.orchestration import get_client
from prefect.states import Crashed, Running
from prometheus_client.parser import text_string_to_metric_families

from api.main import create_app
from api.settings import load_api_settings
from core.schemas.training import DeployDecision, HeldOutComparison
from core.settings import Settings
from deployments.dead_letters import save_dead_letter
from deployments.metrics import PlatformCollector
from deployments.metrics_prefect import LATENCY_BUCKETS_S, requested_at
from deployments.recovery import recover_once
from deployments.worker_metrics import WorkerMetrics, serve_worker_metrics
from integrations.store import Store, connect
from ml.registry import ModelRecord, ModelRegistry
from tests.peers import create_process_deployment, create_process_pool, free_port
from tests.platform.warm_flows import warm_probe
from tests.prometheus import PROMTOOL, needs_prometheus, running_prometheus

REPO_ROOT = Path(__file__).resolve().parents[2]
RULES = REPO_ROOT / "config" / "prometheus" / "alerts.yml"
SECRET = "metrics-test-" + "k" * 40


def _histogram_quantile(q: float, values: list[float]) -> float:
    """Return what PromQL's histogram_quantile gives for ``values`` in our latency buckets."""
    bounds = [0.0, *LATENCY_BUCKETS_S]
    rank = q * len(values)
    for lower, upper in itertools.pairwise(bounds):
        below, within = sum(v <= lower for v in values), sum(v <= upper for v in values)
        if within >= rank:
            return lower + (upper - lower) * (rank - below) / (within - below)
    return bounds[-1]


def _wait(what: str, probe, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _scrape(url: str, **headers: str) -> dict[tuple[str, tuple], float]:
    """GET a metrics endpoint. Returns (sample name, sorted labels) -> value."""
    resp = httpx.get(url, headers=headers, timeout=30)
    resp.raise_for_status()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }


def _rules_without_for(folder: Path) -> Path:
    """config/prometheus/alerts.yml with every ``for:`` set to 0s (the test cannot wait
    minutes; the expressions and labels are the file's own)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "alerts.yml"
    path.write_text(re.sub(r"(?m)^(\s+)for: .*$", r"\1for: 0s", RULES.read_text()))
    return path


@pytest.fixture(scope="module")
def stack(prefect_server: str, mongo_uri: str, tmp_path_factory) -> Iterator[dict]:
    """A pool (queue ``fast`` served by a real warm worker with its metrics endpoint, queue
    ``idle`` served by nobody), the probe deployment on each, a store database and the
    gateway served by uvicorn on a free port."""
    pool = f"metrics-{uuid.uuid4().hex[:6]}"
    create_process_pool(pool, {"fast": None, "idle": None})
    fast = create_process_deployment(
        warm_probe, f"probe-fast-{pool}", pool, "fast", "tests/platform/warm_flows.py:warm_probe"
    )
    idle = create_process_deployment(
        warm_probe, f"probe-idle-{pool}", pool, "idle", "tests/platform/warm_flows.py:warm_probe"
    )
    api = urlparse(prefect_server)
    settings = Settings(
        work_pool=pool,
        host=api.hostname,
        prefect_port=api.port,
        queue_max_wait_s=1.0,
        worker_heartbeat_stale_s=10.0,
        metrics_timeout_s=2.0,  # within the test's scrape timeout (3 s)
        recovery_backoff_s=0.0,
    )
    client = connect(mongo_uri)
    store = Store(client, f"t_{uuid.uuid4().hex[:12]}")
    store.ensure_indexes()

    folder = tmp_path_factory.mktemp("metrics")
    worker_port = free_port()
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "PYTHONPATH": str(REPO_ROOT),
        "PREFECT_WORKER_HEARTBEAT_SECONDS": "2",
        "BOTAI_WORKER_METRICS_PORT": str(worker_port),
    }
    cmd = [sys.executable, "-m", "deployments.warm_worker", "--pool", pool, "--queue", "fast"]
    cmd += ["--preload", "tests.platform.warm_flows", "--query-seconds", "1"]
    log = open(folder / "worker.log", "w")  # noqa: SIM115 - closed in the teardown
    worker = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True
    )

    app = create_app(load_api_settings(jwt_secret=SECRET), store_factory=lambda: store)
    app.state.platform_settings = settings
    gateway_port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=gateway_port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        with get_client(sync_client=True) as prefect:
            _wait(
                "the warm worker to come online",
                lambda: (
                    worker.poll() is not None
                    or any(
                        str(w.status).upper().endswith("ONLINE")
                        for w in prefect.read_workers_for_work_pool(pool)
                    )
                ),
                180,
            )
        assert worker.poll() is None, (folder / "worker.log").read_text()[-3000:]
        _wait("the gateway", lambda: server.started, 30)
        yield {
            "pool": pool,
            "fast": fast,
            "idle": idle,
            "settings": settings,
            "store": store,
            "worker": worker,
            "worker_url": f"127.0.0.1:{worker_port}",
            "gateway_url": f"127.0.0.1:{gateway_port}",
            "folder": folder,
        }
    finally:
        server.should_exit = True
        thread.join(10)
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
        log.close()
        store.close()
        client.close()


def _seed_store(store: Store, settings: Settings, tmp_path: Path) -> None:
    """A dead letter, LLM calls above the daily critical cost, and a deployed model whose
    held-out accuracy is below the self-analysis target (through the store's own writers)."""
    now = datetime.now(UTC)
    save_dead_letter(
        store,
        {
            "task_id": str(uuid.uuid4()),
            "flow_name": "train-model",
            "deployment": "train-model/train-model",
            "run_name": "dead-run",
            "parameters": {},
            "attempts": [{"run_count": 1, "state": "Crashed", "message": "killed", "at": now}],
            "reason": "dead-lettered after 3 attempts",
            "created_at": now,
        },
    )
    for cost in (2.5, 3.75):  # 6.25 > cost_daily_critical_usd (5)
        store.improvement.record_llm_cost(
            run_id=None, model="gpt-4o", prompt_tokens=1000, completion_tokens=200, cost_usd=cost
        )
    record = ModelRecord(
        model_id=uuid.uuid4().hex,
        model_type="lstm",
        symbol="BTCUSDT",
        timeframe="1h",
        version=1,
        file_path=str(tmp_path / "m.keras"),
        metrics={
            "holdout_accuracy": 0.55,  # < self_analysis_min_accuracy (0.65)
            "val_accuracy": 0.61,
            "baselines": {"majority_class": {"accuracy": 0.5}},  # of the validation split
            "holdout": DeployDecision(
                deployed=True,
                outcome="deployed",
                reason="beats every comparator",
                holdout_start=now - timedelta(days=3),
                holdout_end=now - timedelta(days=2),
                holdout_samples=300,
                candidate_accuracy=0.55,
                comparisons=[
                    HeldOutComparison(
                        name="majority_class",
                        accuracy=0.52,
                        difference=0.03,
                        standard_error=0.01,
                        beaten=True,
                    )
                ],
            ).model_dump(mode="json"),
        },
        status="candidate",
        created_by="test",
        created_at=now.replace(microsecond=0) - timedelta(days=2),
        feature_spec={},
        horizon_bars=1,
    )
    store.model_insert(record.to_doc())
    ModelRegistry(store, tmp_path, os.urandom(32)).deploy(record.model_id, "test")


@needs_prometheus
@pytest.mark.tc("TC-ASYNC-087", "TC-ASYNC-088", "TC-ASYNC-102", "TC-ASYNC-103")
def test_prometheus_scrapes_the_stack_and_the_alerts_fire(stack, tmp_path: Path):
    settings, store = stack["settings"], stack["store"]
    _seed_store(store, settings, tmp_path)
    with get_client(sync_client=True) as prefect:
        # a run nobody serves waits in queue "idle"; another one there crashed and the
        # recovery service resubmits it
        prefect.create_flow_run_from_deployment(stack["idle"], parameters={})
        crashed = prefect.create_flow_run_from_deployment(stack["idle"], parameters={})
        prefect.set_flow_run_state(crashed.id, Running(), force=True)  # it ran, then died
        prefect.set_flow_run_state(crashed.id, Crashed(message="process killed"), force=True)
        report = recover_once(settings, store=store)
        assert report.resubmitted == [str(crashed.id)], report
        # one long run, seen by the worker's process metrics while it runs
        long = prefect.create_flow_run_from_deployment(
            stack["fast"], parameters={"sleep_s": 6, "marker_dir": str(tmp_path)}
        )
        pid_file = tmp_path / f"{long.id}.pid"
        _wait("the long run to start", pid_file.exists, 90)
        on_worker = _scrape(f"http://{stack['worker_url']}/metrics")
        assert on_worker[("botai_flow_run_processes", ())] == 1
        assert on_worker[("botai_fork_server_up", ())] == 1
        assert on_worker[("botai_flow_run_rss_bytes", ())] > 10_000_000
        assert on_worker[("botai_worker_runs_in_flight", ())] == 1
        assert int(pid_file.read_text()) != stack["worker"].pid
        short = [
            prefect.create_flow_run_from_deployment(stack["fast"], parameters={}) for _ in range(3)
        ]
        runs = [long, *short]
        _wait(
            "the fast runs to complete",
            lambda: all(prefect.read_flow_run(r.id).state.is_completed() for r in runs),
            90,
        )
        done = [prefect.read_flow_run(r.id) for r in runs]
    expected_start = sorted((r.start_time - requested_at(r)).total_seconds() for r in done)
    expected_done = sorted((r.end_time - requested_at(r)).total_seconds() for r in done)
    fast_name, idle_name = f"probe-fast-{stack['pool']}", f"probe-idle-{stack['pool']}"

    rules = _rules_without_for(tmp_path / "rules")
    targets = {"botai-gateway": [stack["gateway_url"]], "botai-worker": [stack["worker_url"]]}
    # seconds between scrapes (and their timeout): the gateway's reads Prefect and the store
    intervals = {"botai-gateway": 3, "botai-worker": 2}
    with running_prometheus(targets, rules, tmp_path / "prometheus", intervals_s=intervals) as prom:
        prom.wait(
            "both targets up",
            lambda: len(prom.targets()) == 2 and all(t["health"] == "up" for t in prom.targets()),
        )
        # the figures are the Prefect API's and the store's
        fast = f'deployment="{fast_name}"'
        assert prom.latest(f'botai_flow_runs_ended{{{fast},state="Completed"}}') == 4
        assert prom.latest(f"botai_run_start_seconds_gcount{{{fast}}}") == 4
        assert prom.latest(f"botai_run_start_seconds_gsum{{{fast}}}") == pytest.approx(
            sum(expected_start), abs=1e-3
        )
        assert prom.latest(f"botai_run_complete_seconds_gsum{{{fast}}}") == pytest.approx(
            sum(expected_done), abs=1e-3
        )
        within_1s = sum(v <= 1.0 for v in expected_start)
        assert prom.latest(f'botai_run_start_seconds_bucket{{{fast},le="1.0"}}') == within_1s
        p50 = prom.value(
            f"histogram_quantile(0.5, last_over_time(botai_run_start_seconds_bucket{{{fast}}}[30s]))"
        )
        # Prometheus interpolates inside the bucket that holds the median, so the figure is
        # computed the same way from the observed waits (it may exceed the largest of them)
        assert p50 == pytest.approx(_histogram_quantile(0.5, expected_start), abs=1e-6)
        assert prom.latest('botai_queue_depth{queue="idle"}') == 2
        assert prom.latest('botai_queue_depth{queue="fast"}') == 0
        assert prom.latest('botai_queue_oldest_wait_seconds{queue="idle"}') > 1
        # Scheduled, or Late once the server's late-runs service saw them
        idle_runs = f'sum(botai_flow_runs{{deployment="{idle_name}"}})'
        assert prom.value(f"last_over_time({idle_runs}[30s:1s])") == 2
        assert prom.latest(f'botai_recoveries{{deployment="{idle_name}"}}') == 1
        assert prom.latest("botai_workers_alive") == 1
        assert prom.latest('botai_dead_letters{deployment="train-model"}') == 1
        assert prom.latest("botai_llm_cost_today_usd") == pytest.approx(6.25)
        assert prom.latest("botai_llm_calls_today") == 2
        model = 'model_type="lstm",symbol="BTCUSDT",timeframe="1h"'
        assert prom.latest(f'botai_model_accuracy{{{model},split="holdout"}}') == 0.55
        base = f'{model},split="holdout",baseline="majority_class"'
        assert prom.latest(f"botai_model_baseline_accuracy{{{base}}}") == 0.52
        assert prom.latest(f'botai_model_eval_samples{{{model},split="holdout"}}') == 300
        assert prom.latest(f"botai_model_age_seconds{{{model}}}") > 2 * 86400 - 60
        assert prom.latest("botai_worker_runs_started_total") == 4
        prom.wait(  # the worker counts a run once its process was joined
            "4 runs finished on the worker",
            lambda: prom.latest('botai_worker_runs_finished_total{outcome="ok"}') == 4,
            20,
        )
        for source in ("prefect", "store"):  # reported at every scrape (0 or 1)
            assert prom.latest(f'botai_scrape_errors{{source="{source}"}}') is not None

        # the rules: what must fire does, what must not does not
        prom.wait("the queue-stuck alert", lambda: prom.firing("BotaiQueueStuck"))
        for name in ("BotaiDeadLetters", "BotaiLLMCostCritical", "BotaiModelBelowAccuracyTarget"):
            prom.wait(f"the {name} alert", lambda name=name: prom.firing(name))
        prom.wait(
            "queue-stuck only for idle, dead letters of train-model",
            lambda: (
                [a["queue"] for a in prom.firing("BotaiQueueStuck")] == ["idle"]
                and [a["deployment"] for a in prom.firing("BotaiDeadLetters")] == ["train-model"]
            ),
            20,
        )
        firing = {a["labels"]["alertname"] for a in prom.alerts() if a["state"] == "firing"}
        assert not firing & {
            "BotaiNoLiveWorker",
            "BotaiWorkerHostDown",
            "BotaiModelNoBetterThanBaseline",
        }, firing

        # every query of the Grafana dashboard parses and has data on this stack
        dashboard = json.loads((RULES.parent / "grafana-dashboard.json").read_text())
        exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
        assert exprs
        prom.wait("data for every dashboard query", lambda: all(prom.query(e) for e in exprs), 30)

        # a read cut at metrics_max_runs says so
        capped = PlatformCollector(settings.model_copy(update={"metrics_max_runs": 2}), None)
        families = {f.name: f for f in capped.collect()}
        cut = {
            s.labels["read"]: s.value for s in families["botai_flow_runs_read_truncated"].samples
        }
        assert cut == {"active": 0.0, "ended": 1.0}
        ended = families["botai_flow_runs_ended"].samples
        assert sum(s.value for s in ended) == 2
        capped.close()

        # worker gone: kill -9 of the worker (and its fork server)
        os.killpg(stack["worker"].pid, signal.SIGKILL)
        stack["worker"].wait(10)
        prom.wait("the worker-host-down alert", lambda: prom.firing("BotaiWorkerHostDown"), 30)
        prom.wait("the no-live-worker alert", lambda: prom.firing("BotaiNoLiveWorker"), 60)


@pytest.mark.tc("TC-ASYNC-087")
def test_a_hung_or_dead_source_never_hangs_the_scrape(store: Store):
    """Prefect hung (a socket that accepts and never answers) or gone: the scrape answers
    within metrics_timeout_s with botai_scrape_errors{source="prefect"} 1 and the store's
    metrics; the store gone too: both errors, still an answer."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    try:
        for port in (hung.getsockname()[1], free_port()):
            settings = Settings(prefect_port=port, metrics_timeout_s=1.5)
            app = create_app(load_api_settings(jwt_secret=SECRET), store_factory=lambda: store)
            app.state.platform_settings = settings
            started = time.monotonic()
            resp = TestClient(app).get("/metrics")
            took = time.monotonic() - started
            assert resp.status_code == 200
            assert took < 1.5 + 1.0, took
            assert 'botai_scrape_errors{source="prefect"} 1.0' in resp.text
            assert 'botai_scrape_errors{source="store"} 0.0' in resp.text
            assert "botai_llm_cost_today_usd 0.0" in resp.text
            assert "botai_queue_depth{" not in resp.text
    finally:
        hung.close()

    def no_store() -> Store:
        raise ConnectionError("store down")

    app = create_app(load_api_settings(jwt_secret=SECRET), store_factory=no_store)
    app.state.platform_settings = Settings(prefect_port=free_port(), metrics_timeout_s=1.5)
    text = TestClient(app).get("/metrics").text
    assert 'botai_scrape_errors{source="store"} 1.0' in text
    assert "botai_queue_max_wait_threshold_seconds 3600.0" in text


@pytest.mark.tc("none")
def test_a_metrics_token_is_required_when_set(store: Store):
    """BOTAI_METRICS_TOKEN set: the gateway's and the worker's endpoints answer 401 without
    it, 200 with it; the token never appears in an answer."""
    token = "scrape-" + uuid.uuid4().hex
    settings = Settings(prefect_port=free_port(), metrics_timeout_s=1.0, metrics_token=token)
    app = create_app(load_api_settings(jwt_secret=SECRET), store_factory=lambda: store)
    app.state.platform_settings = settings
    client = TestClient(app)
    refused = client.get("/metrics", headers={"Authorization": "Bearer wrong"})
    assert refused.status_code == 401 and token not in refused.text
    assert client.get("/metrics").status_code == 401
    ok = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200 and "botai_scrape_errors" in ok.text
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]

    port = free_port()
    server = serve_worker_metrics(
        WorkerMetrics(lambda: None), settings.model_copy(update={"worker_metrics_port": port})
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        assert httpx.get(url).status_code == 401
        page = httpx.get(url, headers={"Authorization": f"Bearer {token}"})
        assert page.status_code == 200 and "botai_fork_server_up 0.0" in page.text
        assert token not in page.text
    finally:
        server.shutdown()


@needs_prometheus
@pytest.mark.tc("TC-ASYNC-087", "TC-ASYNC-102", "TC-ASYNC-103")
def test_promtool_accepts_the_rules_and_their_durations_hold():
    """``promtool check`` passes on the rules and the example configuration, and the rules'
    unit tests (config/prometheus/alerts_test.yml: the real ``for:`` durations, e.g. a
    queue stuck for 3 min is not yet an alert, for 6 min it is) pass."""
    folder = RULES.parent
    outputs = []
    for args in (
        ["check", "rules", str(RULES)],
        ["check", "config", "prometheus.yml"],
        ["test", "rules", "alerts_test.yml"],
    ):
        done = subprocess.run(
            [PROMTOOL, *args], cwd=folder, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
        outputs.append(done.stdout + done.stderr)
    assert "SUCCESS: 14 rules found" in outputs[0]
    assert "SUCCESS" in outputs[2]
