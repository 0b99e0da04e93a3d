"""Chaos run: a mixed workload while flow-run processes, the worker, the Prefect server and the
store are killed (-9) at seeded random moments; prints what finished, what was lost, what ran
twice, how long each fault took to recover from, and the machine load.

    PYTHONPATH=. .venv/bin/python bench/chaos.py [--runs 32] [--seed 7] [--fault-window-s 240]

By default it starts its own stack on free ports in a temp folder (store, Prefect server,
work pool, worker, recovery service, deployments of train-model, backtest-strategy,
bulk-analysis and predict-price) and restarts each killed service itself, as the supervisor
of ``botai up`` does. ``--attach`` runs against a stack already started with ``botai up`` on
``BOTAI_STATE_DIR`` instead: it kills the recorded processes and lets the supervisor restart
them (restarting one itself only when nothing did within 60 s).

Definitions: *lost* = accepted runs left Crashed (not recovered) or missing at the deadline
(runs still queued or running then are counted apart, as unfinished); *executed twice* = a run with more than one Completed state
or more than one result document / registered model; *recovery* of a fault = over the runs executing
(Running/Pending) at the kill that it interrupted (Crashed or Failed after it), the time from
the kill to the interruption being recorded (detected), to the run being scheduled again
(resubmitted) and to it running again or ending (recovered); runs that rode the fault out
and runs still queued are counted apart;
*stale record* = a training_jobs record still open while its run is final.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.chaos_report import EXECUTING, FINAL, load, report, say  # noqa: E402
from core.settings import Settings, load_settings  # noqa: E402
from deployments import service_records, services, work_pool  # noqa: E402
from integrations.embedded_mongo import free_port, start_embedded_mongo  # noqa: E402
from integrations.store import Store, connect  # noqa: E402

SYMBOLS = ["BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT"]
TINY_TRAIN = {"timeframe": "1h", "days_of_data": 30, "epochs": 8, "batch_size": 32, "units": 8}
#: Symbols given a deployed GRU at bootstrap, for the predict-price runs (a training deploys
#: its model only when it beats the deployed one and the baselines on held-out data).
PREDICT_SYMBOLS = SYMBOLS[:2]


class Chaos:
    """The stack under test, its workload and its faults."""

    def __init__(self, settings: Settings, env: dict[str, str], attach: bool) -> None:
        self.settings, self.env, self.attach = settings, env, attach
        self.procs: dict[str, Any] = {}
        self.mongo = None
        self.store: Store | None = None
        self.deployments: dict[str, Any] = {}

    # ------------------------------------------------------------ stack
    def start(self) -> None:
        from prefect.client.orchestration import get_client

        s = self.settings
        if not self.attach:
            self.mongo = start_embedded_mongo(s.mongodb_dir, port=s.mongodb_port)
            self.procs["server"] = services.start_prefect_server(s, self.env)
        uri = self.mongo.uri if self.mongo else s.effective_mongodb_uri
        self.store = Store(connect(uri), s.mongodb_database)
        self.store.ensure_indexes()
        if not self.attach:
            self._bootstrap(uri)
            self.procs["worker"] = services.start_worker(s, self.env)
            services.wait_worker_online(s, self.procs["worker"], 120)
            self.procs["recovery"] = services.spawn(
                "recovery", [sys.executable, "-m", "deployments.recovery"], self.env, s
            )
        with get_client(sync_client=True) as client:
            flows = {f.id: f.name for f in client.read_flows()}
            for d in client.read_deployments():
                self.deployments[flows.get(d.flow_id)] = d.id

    def _bootstrap(self, uri: str) -> None:
        from prefect.client.orchestration import get_client
        from prefect.utilities.callables import parameter_schema

        from bench.models import deploy_small_gru
        from blocks.model_store import ModelStoreBlock, generate_model_key
        from blocks.mongodb import MongoDBBlock
        from deployments.automations import ensure_crash_detection
        from flows.backtest_strategy import backtest_strategy
        from flows.bulk_analysis import bulk_analysis
        from flows.predict_price import predict_price
        from flows.train_model import train_model
        from integrations.market_data.synthetic import synthetic_range

        s = self.settings
        MongoDBBlock(uri=uri, database=s.mongodb_database).save("mongodb", overwrite=True)
        s.model_dir.mkdir(parents=True, exist_ok=True)
        ModelStoreBlock(directory=str(s.model_dir), key=generate_model_key()).save(
            "model-store", overwrite=True
        )
        work_pool.ensure_work_pool(s)
        ensure_crash_detection(s)
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        key = ModelStoreBlock.load("model-store").get_key()
        for i, sym in enumerate(SYMBOLS):
            frame = synthetic_range(sym, "1h", end - timedelta(days=90), end, seed=i)
            self.store.upsert_candles(sym, "1h", frame, source="synthetic")
            if sym in PREDICT_SYMBOLS:
                deploy_small_gru(
                    self.store, s.model_dir, key, sym, frame, units=8, epochs=1, created_by="chaos"
                )
        with get_client(sync_client=True) as client:
            for flow, module, queue in (
                (train_model, "train_model", "ml_training"),
                (backtest_strategy, "backtest_strategy", "backtesting"),
                (bulk_analysis, "bulk_analysis", "analysis"),
                (predict_price, "predict_price", "analysis"),
            ):
                client.create_deployment(
                    flow_id=client.create_flow_from_name(flow.name),
                    name=flow.name,
                    work_pool_name=s.work_pool,
                    work_queue_name=queue,
                    entrypoint=f"flows/{module}.py:{module}",
                    path=str(REPO),
                    parameter_openapi_schema=parameter_schema(flow).model_dump_for_openapi(),
                    pull_steps=[
                        {
                            "prefect.deployments.steps.set_working_directory": {
                                "directory": str(REPO)
                            }
                        }
                    ],
                )

    def stop(self) -> None:
        if self.attach:
            return
        services.stop_all(self.settings, timeout_s=10)
        # flow processes orphaned by a killed worker belong to no recorded service
        from deployments.run_processes import kill_processes, local_flow_processes

        mine = []
        for procs in local_flow_processes().values():
            for p in procs:
                try:
                    if p.environ().get("BOTAI_STATE_DIR") == str(self.settings.state_dir):
                        mine.append(p)
                except Exception:
                    continue
        kill_processes(mine)
        if self.mongo is not None:
            self.mongo.stop()

    # ------------------------------------------------------------ workload
    def workload(self, n: int, rng: random.Random) -> list[tuple[str, dict]]:
        """``n`` runs: ~1/4 tiny trainings (distinct model+symbol), backtests, bulk analyses
        and predictions (of the models deployed at bootstrap), trainings first."""
        today = date.today()
        combos = [(m, s) for m in ("lstm", "gru") for s in SYMBOLS]
        rng.shuffle(combos)
        n_train = min(len(combos), max(2, n // 4))
        items: list[tuple[str, dict]] = [
            ("train-model", {**TINY_TRAIN, "model_type": m, "symbol": s})
            for m, s in combos[:n_train]
        ]
        rest = n - n_train
        for i in range(rest):
            kind = ("backtest-strategy", "bulk-analysis", "predict-price")[i % 3]
            sym = rng.choice(SYMBOLS)
            if kind == "backtest-strategy":
                params = {
                    "strategy_name": rng.choice(["rsi", "macd", "bollinger", "volume"]),
                    "symbol": sym,
                    "timeframe": "1h",
                    "start_date": str(today - timedelta(days=60)),
                    "end_date": str(today),
                }
            elif kind == "bulk-analysis":
                params = {"symbols": rng.sample(SYMBOLS, 3), "timeframe": "1h"}
            else:
                params = {
                    "symbol": rng.choice(PREDICT_SYMBOLS),
                    "model_type": "gru",
                    "horizon_hours": 6,
                }
            items.append((kind, params))
        trains, others = items[:n_train], items[n_train:]
        rng.shuffle(others)
        return trains + others

    def submit(self, kind: str, params: dict) -> str:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            return str(
                client.create_flow_run_from_deployment(
                    self.deployments[kind], parameters={"params": params}
                ).id
            )

    def runs(self, ids: list[str]) -> dict[str, Any]:
        from uuid import UUID

        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        with get_client(sync_client=True) as client:
            found = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(i) for i in ids])),
                limit=len(ids),
            )
        return {str(r.id): r for r in found}

    # ------------------------------------------------------------ faults
    def kill_flow_process(self, rng: random.Random, ids: list[str]) -> str | None:
        """kill -9 the process executing one Running run (found by its recorded pid, as
        forked runs do not carry their run id in their environment). Returns what was
        killed, or None when no run is executing now."""
        from deployments.run_processes import local_flow_processes, processes_of

        try:
            running = [r for r in self.runs(ids).values() if r.state and r.state.name == "Running"]
        except Exception:
            return None
        procs = local_flow_processes()
        rng.shuffle(running)
        for run in running:
            found = processes_of(run, procs)
            pids = {p.pid for p in found}
            leaf = [p for p in found if not any(c.pid in pids for c in p.children())]
            if leaf or found:
                (leaf or found)[0].kill()
                return f"flow-run process of {str(run.id)[:8]}"
        return None

    def kill_service(self, name: str) -> str:
        record = {"worker": "prefect-worker", "server": "prefect-server", "store": "nx-27017"}[name]
        if name == "store" and self.mongo is not None:
            self.mongo.process.kill()
            self.mongo.process.wait(10)
        elif name in self.procs:
            self.procs[name].kill()
            self.procs[name].wait(10)
        else:  # attached: the recorded process
            for rec in service_records.read_records(self.settings):
                if rec.name == record and service_records.record_alive(rec):
                    os.kill(rec.pid, signal.SIGKILL)
        time.sleep(3)
        if not self.attach or not self._back(record, 60):
            self._restart(name)
        return name

    def _back(self, record: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(
                r.name == record and service_records.record_alive(r)
                for r in service_records.read_records(self.settings)
            ):
                return True
            time.sleep(1)
        return False

    def _restart(self, name: str) -> None:
        s = self.settings
        if name == "store":
            self.mongo = start_embedded_mongo(s.mongodb_dir, port=s.mongodb_port)
        elif name == "server":
            self.procs["server"] = services.start_prefect_server(s, self.env)
        else:
            self.procs["worker"] = services.start_worker(s, self.env)


#: Seconds a fault waits for a run to be executing before it is injected anyway.
FAULT_WAIT_S = 90.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=32)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--fault-window-s", type=float, default=240.0)
    parser.add_argument("--flow-kills", type=int, default=3)
    parser.add_argument("--deadline-s", type=float, default=600.0)
    parser.add_argument("--attach", action="store_true", help="run against `botai up`")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    if args.attach:
        settings = load_settings()
    else:
        settings = load_settings(
            state_dir=Path(tempfile.mkdtemp(prefix="botai-chaos-")) / "state",
            prefect_port=free_port(),
            mongodb_port=free_port(),
            min_free_disk_gb=0.1,
            worker_query_seconds=1.0,
        )
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "BOTAI_"))}
    base.update(BOTAI_MIN_FREE_DISK_GB=str(settings.min_free_disk_gb))
    env = services.prefect_env(settings, base)
    # this process's own Prefect clients call the stack's API with its auth string; Prefect is
    # already imported (prefect_env reads its settings), so its settings are rebuilt from the
    # environment: without that they point at an ephemeral server of their own
    os.environ.update({k: v for k, v in env.items() if k.startswith("PREFECT_")})
    import prefect.context

    prefect.context.refresh_global_settings_context()
    chaos = Chaos(settings, env, args.attach)
    say(f"chaos: seed {args.seed}, {args.runs} runs, state {settings.state_dir}; {load()}")
    t0 = time.monotonic()
    try:
        chaos.start()
        say(f"stack ready in {time.monotonic() - t0:.0f} s; {load()}")
        plan = chaos.workload(args.runs, rng)
        kinds = ["flow"] * args.flow_kills + ["worker", "server", "store"]
        rng.shuffle(kinds)
        start = time.monotonic()
        fault_at = sorted(rng.uniform(15, args.fault_window_s) for _ in kinds)
        ids: list[str] = []
        kind_of: dict[str, str] = {}
        faults: list[tuple[float, str, list[str]]] = []
        submit_every = args.fault_window_s * 0.6 / max(1, len(plan))
        next_submit = start
        while plan or fault_at:
            now = time.monotonic()
            if plan and now >= next_submit:
                kind, params = plan.pop(0)
                try:
                    run_id = chaos.submit(kind, params)
                    ids.append(run_id)
                    kind_of[run_id] = kind
                except Exception as e:  # the server is down right now: try again shortly
                    plan.insert(0, (kind, params))
                    say(f"  submit deferred ({type(e).__name__})")
                next_submit = now + submit_every
            if not chaos.attach and chaos.procs["worker"].poll() is not None:
                say("  worker exited on its own: restarting it (as the supervisor does)")
                chaos.procs["worker"] = services.start_worker(settings, env)
            if fault_at and now - start >= fault_at[0]:
                try:
                    states = chaos.runs(ids)
                    active = [
                        i for i, r in states.items() if r.state and r.state.type.value in EXECUTING
                    ]
                except Exception:
                    active = list(ids)
                if not active and now - start < fault_at[0] + FAULT_WAIT_S:
                    time.sleep(0.5)  # faults are injected while work is executing
                    continue
                fault_at.pop(0)
                kind = kinds.pop(0)
                at = time.time()
                what = (
                    chaos.kill_flow_process(rng, ids)
                    if kind == "flow"
                    else chaos.kill_service(kind)
                )
                if what:
                    faults.append((at, what, active))
                    say(f"  t+{now - start:5.0f} s killed {what}; {load()}")
            time.sleep(0.5)
        deadline = time.monotonic() + args.deadline_s
        while time.monotonic() < deadline:
            try:
                states = chaos.runs(ids)
            except Exception:
                time.sleep(2)
                continue
            open_ = [i for i in ids if not states.get(i) or states[i].state.type.value not in FINAL]
            crashed = [i for i in ids if states.get(i) and states[i].state.type.value == "CRASHED"]
            if not open_ and not crashed:
                break
            time.sleep(3)
        time.sleep(2 * settings.recovery_poll_s + 2)  # one more reconciliation pass
        report(chaos, ids, kind_of, faults, time.monotonic() - start)
    finally:
        chaos.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
