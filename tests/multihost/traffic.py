"""What the multi-host scenarios send and read: jobs through the gateway (as a client does,
with an ``Idempotency-Key`` so that a retried POST never queues twice), and the facts the
assertions need from Prefect through the load balancer (runs, their state history, the
training slots, the pool's workers) and from the shared MongoDB."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from api.security import issue_token
from api.settings import load_api_settings
from integrations.market_data.synthetic import generate_candles
from integrations.store import Store, connect
from tests.multihost.cluster import DB_NAME, Cluster

FINAL = ("SUCCESS", "FAILURE", "REVOKED")
BACKTEST_SYMBOL = "MHBTUSDT"
#: A training small enough for a loaded CI machine: one tiny GRU, two epochs.
TRAIN_BODY = {"model_type": "gru", "timeframe": "4h", "epochs": 2, "days_of_data": 30}
TRAIN_BODY |= {"units": 8, "lookback": 12, "batch_size": 32}


def seed_candles(cluster: Cluster, symbols: list[str]) -> None:
    """30 days of 4h candles per training symbol and 60 days of 1h for the backtests, in the
    shared MongoDB of the database host."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with Store(connect(cluster.mongodb_uri, timeout_ms=5000), DB_NAME) as store:
        for symbol in symbols:
            frame = generate_candles(symbol, "4h", start, 30 * 6)
            store.upsert_candles(symbol, "4h", frame, source="synthetic")
        frame = generate_candles(BACKTEST_SYMBOL, "1h", start, 60 * 24)
        store.upsert_candles(BACKTEST_SYMBOL, "1h", frame, source="synthetic")


def seed_hours(cluster: Cluster, symbols: list[str], bars: int) -> None:
    """``bars`` generated 1h candles per symbol, ending now, in the shared MongoDB: bulk
    inserts of the candle writer's documents, then the tails rebuilt by the write path's own
    rebuild (upserting symbol by symbol costs O(collection) each on nx-27017)."""
    from datetime import timedelta

    from core.market import bar_length
    from integrations.store import C
    from integrations.store.candles import frame_to_docs

    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=bars)
    with Store(connect(cluster.mongodb_uri, timeout_ms=5000), DB_NAME) as store:
        for i in range(0, len(symbols), 50):
            docs = []
            for symbol in symbols[i : i + 50]:
                frame = generate_candles(symbol, "1h", start, bars)
                docs += frame_to_docs(symbol, "1h", frame, bar_length("1h"), "synthetic")
            store.col(C.MARKET_DATA).insert_many(docs, ordered=False)
        states = store.market.rebuild_candle_tails(symbols, "1h")
        assert set(states.values()) == {"valid"}, states


def training_job(cluster: Cluster, task_id: str) -> dict[str, Any] | None:
    """The ``training_jobs`` record of a training run, from the shared MongoDB."""
    with Store(connect(cluster.mongodb_uri, timeout_ms=5000), DB_NAME) as store:
        return store.training_job_get(task_id)


def dead_letters(cluster: Cluster, task_ids: list[str]) -> int:
    """How many dead letters the runs ``task_ids`` have."""
    from integrations.store import C

    with Store(connect(cluster.mongodb_uri, timeout_ms=5000), DB_NAME) as store:
        return store.col(C.DEAD_LETTERS).count_documents({"task_id": {"$in": task_ids}})


def models_of_run(cluster: Cluster, task_id: str) -> int:
    """How many models the training run ``task_id`` registered."""
    from integrations.store import C

    with Store(connect(cluster.mongodb_uri, timeout_ms=5000), DB_NAME) as store:
        return store.col(C.MODELS).count_documents({"training_task_id": task_id})


@dataclass
class Gateway:
    """A client of the gateway host, as ``user`` (an admin: trainings allowed)."""

    cluster: Cluster
    user: str = "alice"
    answers: list[tuple] = field(default_factory=list)  # (job, HTTP status[, body])

    def __post_init__(self) -> None:
        settings = load_api_settings(jwt_secret=self.cluster.jwt_secret)
        token = issue_token(settings, self.user, admin=True)
        self.headers = {"Authorization": f"Bearer {token}"}
        self.http = httpx.Client(base_url=self.cluster.gateway_url, timeout=60)

    def submit(self, job: str, body: dict[str, Any], attempts: int = 5) -> str | None:
        """POST ``/tasks/<job>``; a 5xx or a broken connection is retried with the same
        Idempotency-Key. Returns the task id of the 202, or None (every answer recorded)."""
        key = uuid.uuid4().hex
        for attempt in range(attempts):
            try:
                r = self.http.post(
                    f"/tasks/{job}", json=body, headers={**self.headers, "Idempotency-Key": key}
                )
            except httpx.HTTPError:
                self.answers.append((job, 0))
                time.sleep(1 + attempt)
                continue
            self.answers.append(
                (job, r.status_code, r.text[:200]) if r.status_code != 202 else (job, 202)
            )
            if r.status_code == 202:
                return r.json()["task_id"]
            if r.status_code < 500:
                raise AssertionError(f"{job} refused: {r.status_code} {r.text}")
            time.sleep(1 + attempt)
        return None

    def train(self, symbol: str, **overrides: Any) -> str | None:
        return self.submit("train", {**TRAIN_BODY, "symbol": symbol, **overrides})

    def backtest(self) -> str | None:
        body = {"strategy_name": "rsi", "symbol": BACKTEST_SYMBOL, "timeframe": "1h"}
        body |= {"start_date": "2026-01-05", "end_date": "2026-02-25"}
        return self.submit("backtest", body)

    def cancel(self, task_id: str) -> tuple[int, dict[str, Any]]:
        """DELETE ``/tasks/<id>``. Returns the HTTP status and the answer's body."""
        r = self.http.delete(f"/tasks/{task_id}", headers=self.headers)
        return r.status_code, r.json()

    def status(self, task_id: str) -> dict[str, Any]:
        r = self.http.get(f"/tasks/{task_id}", headers=self.headers)
        r.raise_for_status()
        return r.json()

    def wait_final(self, task_ids: list[str], timeout_s: float) -> dict[str, dict[str, Any]]:
        """Poll until every task is SUCCESS, FAILURE or REVOKED. Returns id -> last status.

        Raises:
            AssertionError: some task is not final within ``timeout_s`` (their statuses named).
        """
        last: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for task_id in task_ids:
                if last.get(task_id, {}).get("status") not in FINAL:
                    with contextlib.suppress(httpx.HTTPError):
                        last[task_id] = self.status(task_id)
            if all(last.get(t, {}).get("status") in FINAL for t in task_ids):
                return last
            time.sleep(2)
        waiting = {
            t: last.get(t, {}).get("state")
            for t in task_ids
            if t not in last or last[t]["status"] not in FINAL
        }
        raise AssertionError(f"{len(waiting)} task(s) not final in {timeout_s:.0f} s: {waiting}")


@contextlib.contextmanager
def prefect(cluster: Cluster) -> Iterator[Any]:
    """A sync Prefect client of the stack through the load balancer."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with (
        temporary_settings(
            {PREFECT_API_URL: cluster.api_url, PREFECT_API_AUTH_STRING: cluster.auth_string}
        ),
        get_client(sync_client=True) as client,
    ):
        yield client


def run_facts(cluster: Cluster, task_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Per run: the host that ran it (host part of ``host:pid``), its Running and final
    timestamps, how many times it entered Running, its final state name."""
    out = {}
    with prefect(cluster) as client:
        for task_id in task_ids:
            run = client.read_flow_run(uuid.UUID(task_id))
            states = sorted(client.read_flow_run_states(run.id), key=lambda s: s.timestamp)
            running = [s.timestamp for s in states if s.type.value == "RUNNING"]
            final = [s.timestamp for s in states if s.is_final()]
            out[task_id] = {
                "host": str(run.infrastructure_pid or "?").split(":")[0],
                "running_at": running[0] if running else None,
                "ended_at": final[-1] if final else None,
                "times_running": len(running),
                "state": run.state.name if run.state else None,
            }
    return out


def state_history(cluster: Cluster, task_id: str) -> list[str]:
    """The run's states, oldest first, as ``TYPE/name: message`` (for a failure's message)."""
    with prefect(cluster) as client:
        states = client.read_flow_run_states(uuid.UUID(task_id))
    states = sorted(states, key=lambda s: s.timestamp)
    return [f"{s.type.value}/{s.name}: {(s.message or '')[:400]}" for s in states]


def max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    """The largest number of ``(start, end)`` intervals open at one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    peak = now = 0
    for _, step in events:  # at equal times an end (-1) sorts before a start (+1)
        now += step
        peak = max(peak, now)
    return peak


def slot_intervals(cluster: Cluster, task_ids: list[str]) -> dict[str, list[tuple]]:
    """Per run of ``task_ids``: the (acquired, released) times of each ``ml-training`` slot
    it held, from the ``prefect.concurrency-limit.*`` events the runs emitted (stored by the
    services process through Redis messaging). A slot still held has no release (None)."""
    held: dict[str, list[tuple]] = {t: [] for t in task_ids}
    acquired: dict[str, tuple[str, datetime]] = {}  # event id -> (run id, time)
    body = {
        "filter": {"event": {"prefix": ["prefect.concurrency-limit."]}, "order": "ASC"},
        "limit": 50,
    }
    with httpx.Client(headers=cluster.prefect_headers(), timeout=30) as http:
        page = http.post(f"{cluster.api_url}/events/filter", json=body).json()
        events = list(page["events"])
        while page.get("next_page"):
            page = http.get(page["next_page"]).json()
            events += page["events"]
    for e in events:
        if e["resource"].get("prefect.resource.name") != "ml-training":
            continue
        at = datetime.fromisoformat(e["occurred"].replace("Z", "+00:00"))
        runs = [
            r["prefect.resource.id"].removeprefix("prefect.flow-run.")
            for r in e["related"]
            if r.get("prefect.resource.role") == "flow-run"
        ]
        if e["event"].endswith(".acquired") and runs and runs[0] in held:
            acquired[e["id"]] = (runs[0], at)
            held[runs[0]].append((at, None))
        elif e["event"].endswith(".released") and e.get("follows") in acquired:
            run_id, start = acquired[e["follows"]]
            held[run_id] = [(s, at if s == start else end) for s, end in held[run_id]]
    return held


def training_slots(cluster: Cluster) -> int:
    """Active slots of the ``ml-training`` limit every training takes."""
    from tasks.training import TRAINING_LIMIT

    with prefect(cluster) as client:
        return client.read_global_concurrency_limit_by_name(TRAINING_LIMIT).active_slots


def workers(cluster: Cluster) -> dict[str, str]:
    """Worker name -> status of the stack's pool."""
    with prefect(cluster) as client:
        return {
            w.name: str(w.status.value) for w in client.read_workers_for_work_pool("botai-process")
        }


def runs_of_user(cluster: Cluster, user: str) -> list[str]:
    """Ids of every flow run the gateway created for ``user`` (tag ``user:<user>``), sorted."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with prefect(cluster) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"user:{user}"]))
        )
    return sorted(str(r.id) for r in runs)


def unfinished(cluster: Cluster, task_ids: list[str]) -> int:
    """How many of ``task_ids`` are not in a final state yet."""
    with prefect(cluster) as client:
        runs = [client.read_flow_run(uuid.UUID(t)) for t in task_ids]
    return sum(1 for r in runs if not (r.state and r.state.is_final()))
