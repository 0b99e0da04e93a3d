"""Chaos across hosts: a mixed workload through the gateway while whole worker hosts, API
servers, the background services, recovery replicas and flow-run processes are killed (-9)
at seeded random moments, on the test hosts of ``tests/multihost`` (network namespaces:
a database host, HAProxy, two API servers, a services host, two worker hosts, a gateway and
two recovery replicas, each started with ``botai up --role``).

    sudo .venv/bin/python bench/chaos_hosts.py [--trainings 8] [--backtests 24] [--faults 6]
        [--seed 7] [--fault-window-s 150] [--deadline-s 600]

Needs root, HAProxy, redis-server and PostgreSQL's binaries, like the multi-host tests.
A killed service is restarted by its host's own supervisor; a killed host (every process,
``botai up`` included) is replaced 20 s later by starting its role again, as an operator
would. Printed, with the machine load: runs accepted, completed, dead-lettered (with the
reasons), lost (must be 0), executed twice (must be 0), stale job records, and per fault the
time from the kill to the interrupted runs being detected, re-queued and running again
(p50 and max); definitions as in ``bench/chaos.py``.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.chaos_report import EXECUTING, load, report, say  # noqa: E402
from tests.multihost.cluster import DB_NAME, Cluster, build_cluster  # noqa: E402
from tests.multihost.traffic import Gateway, prefect, seed_candles  # noqa: E402

FAULTS = ("worker host", "API server", "services", "recovery replica", "run process")
REPLACE_AFTER_S = 20.0


class HostChaos:
    """What :func:`bench.chaos_report.report` reads: the runs and the shared store."""

    def __init__(self, cluster: Cluster) -> None:
        from integrations.store import Store, connect

        self.cluster = cluster
        self.store = Store(connect(cluster.mongodb_uri, timeout_ms=10_000), DB_NAME)
        self.replace_at: dict[str, float] = {}  # killed host -> when to start its role again

    def runs(self, ids: list[str]) -> dict[str, Any]:
        with prefect(self.cluster) as client:
            return {i: client.read_flow_run(uuid.UUID(i)) for i in ids}

    def executing(self, ids: list[str]) -> list[str]:
        return [i for i, r in self.runs(ids).items() if r.state and r.state.type.value in EXECUTING]

    def inject(self, rng: random.Random, kind: str, ids: list[str]) -> str | None:
        """One fault of ``kind``. Returns what was killed (None: nothing to kill now)."""
        c = self.cluster
        if kind == "worker host":
            alive = [h for h in ("w1", "w2") if h not in self.replace_at]
            if len(alive) < 2:
                return None  # keep one worker host: the bench measures recovery, not an outage
            host = rng.choice(alive)
            c.lab.kill_host(host)
            self.replace_at[host] = time.monotonic() + REPLACE_AFTER_S
            return f"worker host {host} (every process)"
        if kind == "run process":
            running = [
                r
                for r in self.runs(ids).values()
                if r.state and r.state.is_running() and r.infrastructure_pid
            ]
            if not running:
                return None
            run = rng.choice(running)
            host, pid = str(run.infrastructure_pid).split(":")
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                return None
            return f"run process {pid} on {host}"
        host, service = {
            "API server": (rng.choice(("api1", "api2")), "prefect-api"),
            "services": ("svc", "prefect-services"),
            "recovery replica": (rng.choice(("rec1", "rec2")), "recovery"),
        }[kind]
        if host in self.replace_at:
            return None
        pid = c.service_pid(host, service)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return None  # killed before and not restarted yet: the next kind is drawn
        return f"{service} on {host} (pid {pid})"

    def replace_due(self) -> None:
        for host, at in list(self.replace_at.items()):
            if time.monotonic() >= at:
                self.cluster.start_role(host, "worker")
                self.cluster.wait_ready(host, "worker", timeout_s=240)
                del self.replace_at[host]
                say(f"  replaced worker host {host}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trainings", type=int, default=8)
    ap.add_argument("--backtests", type=int, default=24)
    ap.add_argument("--faults", type=int, default=6)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--fault-window-s", type=float, default=150.0)
    ap.add_argument("--deadline-s", type=float, default=600.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        say("chaos_hosts needs root (network namespaces): run it with sudo")
        return 2
    rng = random.Random(args.seed)
    symbols = [f"CHX{i}USDT" for i in range(args.trainings)]
    root = Path(tempfile.mkdtemp(prefix="botai-chaos-hosts-"))
    cluster = build_cluster(root)
    try:
        cluster.start_all()
        say(f"stack ready in {cluster.timings['stack_ready_s']:.0f} s ({load()})")
        seed_candles(cluster, symbols)
        chaos = HostChaos(cluster)
        gateway = Gateway(cluster, user="chaos")
        started = time.monotonic()
        kind_of: dict[str, str] = {}
        for k in range(max(args.trainings, args.backtests)):
            if k < args.trainings:
                task = gateway.train(symbols[k], epochs=60, checkpoint_interval=10)
                if task:
                    kind_of[task] = "train"
            if k < args.backtests:
                task = gateway.backtest()
                if task:
                    kind_of[task] = "backtest"
        ids = list(kind_of)
        refused = sum(1 for a in gateway.answers if a[1] != 202)
        say(
            f"accepted {len(ids)} runs in {time.monotonic() - started:.0f} s ({refused} answers "
            "other than 202, retried with the same Idempotency-Key)"
        )
        faults: list[tuple[float, str, list[str]]] = []
        gaps = sorted(rng.uniform(5, args.fault_window_s) for _ in range(args.faults))
        for due in gaps:
            while time.monotonic() - started < due:
                chaos.replace_due()
                time.sleep(0.5)
            kinds = list(FAULTS)
            rng.shuffle(kinds)
            for kind in kinds:  # the drawn kind, or the next one that has something to kill
                active = chaos.executing(ids)
                what = chaos.inject(rng, kind, ids)
                if what:
                    faults.append((time.time(), what, active))
                    say(f"  t={time.monotonic() - started:5.0f} s: killed {what} ({load()})")
                    break
        final = {"Completed", "DeadLettered", "Failed", "Cancelled", "Crashed"}
        while time.monotonic() - started < args.deadline_s:
            chaos.replace_due()
            states = chaos.runs(ids)
            if all(r.state and r.state.name in final for r in states.values()):
                break
            time.sleep(3)
        from prefect.settings import (
            PREFECT_API_AUTH_STRING,
            PREFECT_API_URL,
            temporary_settings,
        )

        with temporary_settings(
            {PREFECT_API_URL: cluster.api_url, PREFECT_API_AUTH_STRING: cluster.auth_string}
        ):
            report(chaos, ids, kind_of, faults, time.monotonic() - started)
        return 0
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
