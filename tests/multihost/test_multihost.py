"""The platform on real hosts of one machine (network namespaces, tests/multihost/lab.py):
a database host (PostgreSQL, Redis, nx-27017), HAProxy in front of two Prefect API servers, a
host of Prefect's background services, two worker hosts and a gateway host, each started with
``botai up --role`` as docs/multihost.md describes (tests/multihost/cluster.py).

Scenarios: (a) trainings and short jobs through the gateway run on both worker hosts with
never more than 2 trainings at once; (b) every process of the worker host running a
training is killed: a recovery replica finds the run by its silent heartbeats and the other
worker host resumes it from the checkpoint in MongoDB; (c) one API server host dies: workers and gateway carry
on through the other, no accepted request is lost, and the host is replaced by starting its
role again; (g) with 20 trainings queued, each API server and the services process are
killed -9 while trainings hold both training slots: every queued training completes once and
no slot stays taken (leases in Redis); (d) the processes of
10 trainings killed -9 at random moments on both worker hosts while two recovery replicas
watch: each run is re-run once, none executes twice, nothing is dead-lettered; (e) the
worker host running a training is cut off from every other host for 30 s, then healed: the
training completes, its work done once; (f) 50 short
jobs cancelled right after their 202, over both worker hosts: none
executes. The figures each scenario measures are printed (``-s``) for the guide.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import threading
import time
import uuid

import pytest

from tests.multihost.cluster import Cluster, api_health, build_cluster
from tests.multihost.traffic import (
    TRAIN_BODY,
    Gateway,
    dead_letters,
    max_overlap,
    models_of_run,
    prefect,
    run_facts,
    runs_of_user,
    seed_candles,
    seed_hours,
    slot_intervals,
    state_history,
    training_job,
    training_slots,
    unfinished,
    workers,
)

TOOLS = ("ip", "haproxy", "redis-server", "initdb", "postgres", "createdb", "runuser")
TRAIN_SYMBOLS = [f"MHT{i}USDT" for i in range(12)]
B_SYMBOL = "MHB0USDT"
C_SYMBOLS = [f"MHC{i}USDT" for i in range(2)]
D_SYMBOLS = [f"MHX{i}USDT" for i in range(10)]
E_SYMBOL = "MHE0USDT"
G_SYMBOLS = [f"MHG{i}USDT" for i in range(26)]  # 20 at first, 2 more whenever < 3 are left

pytestmark = pytest.mark.multihost


def _figure(name: str, value: object) -> None:
    print(f"[multihost] {name}: {value}", flush=True)  # noqa: T201 - the guide's figures


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f} on {os.cpu_count()} cores"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """Every host of the stack, started; namespaces and processes removed afterwards."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if os.geteuid() != 0 or missing:
        pytest.skip(
            "the multi-host tests need root (network namespaces) and "
            f"{', '.join(missing) or 'nothing else'}: run them as root with "
            "haproxy, redis-server and PostgreSQL installed (scripts/test.sh installs haproxy)"
        )
    c = build_cluster(tmp_path_factory.mktemp("multihost"))
    try:
        c.start_all()
        seed_candles(c, TRAIN_SYMBOLS + [B_SYMBOL, E_SYMBOL] + C_SYMBOLS + D_SYMBOLS + G_SYMBOLS)
        for name, seconds in c.timings.items():
            _figure(name, f"{seconds:.1f} s ({_load()})")
        yield c
    finally:
        c.close()


def _wait(predicate, timeout_s: float, what: str, poll_s: float = 0.5) -> float:
    started = time.monotonic()
    last: object = None
    while time.monotonic() - started < timeout_s:
        try:
            if predicate():
                return time.monotonic() - started
        except Exception as e:  # noqa: BLE001 - a server on its way back answers errors
            last = e
        time.sleep(poll_s)
    raise AssertionError(
        f"timed out after {timeout_s:.0f} s waiting for {what} (last error: {last!r})"
    )


@pytest.mark.tc("TC-ASYNC-089", "TC-ASYNC-102")
def test_a_jobs_spread_over_both_worker_hosts_with_two_trainings_at_most(cluster: Cluster):
    gateway = Gateway(cluster)
    started = time.monotonic()
    trainings = [gateway.train(s) for s in TRAIN_SYMBOLS]
    jobs = [gateway.backtest() for _ in range(20)]
    accepted_s = time.monotonic() - started
    assert None not in trainings + jobs, gateway.answers
    assert runs_of_user(cluster, "alice") == sorted(trainings + jobs)  # none queued twice
    retried = [a for a in gateway.answers if a[1] != 202]

    final = gateway.wait_final(trainings + jobs, timeout_s=420)
    done_s = time.monotonic() - started
    assert {t: s["status"] for t, s in final.items() if s["status"] != "SUCCESS"} == {}

    facts = run_facts(cluster, trainings + jobs)
    per_host = {h: sum(1 for f in facts.values() if f["host"] == h) for h in ("w1", "w2")}
    assert per_host["w1"] > 0 and per_host["w2"] > 0, facts
    assert sum(per_host.values()) == 32  # every run ran on one of the two worker hosts
    assert all(f["times_running"] == 1 for f in facts.values())  # each ran once
    training_hosts = {facts[t]["host"] for t in trainings}
    # the slots each training held, from the events its process emitted (they reach the
    # database through the services process a moment later)
    slots: dict[str, list[tuple]] = {}

    def all_given_back() -> bool:
        slots.update(slot_intervals(cluster, trainings))
        return all(len(h) == 1 and h[0][1] is not None for h in slots.values())

    _wait(all_given_back, 60, "a slot taken and given back by each training")
    peak = max_overlap([h[0] for h in slots.values()])
    assert peak <= 2
    # each worker host keeps its own heartbeat in the pool (names carry the host)
    online = workers(cluster)
    assert online.get("botai-worker-w1-4200") == "ONLINE", online
    assert online.get("botai-worker-w2-4200") == "ONLINE", online
    _figure("a: 32 jobs accepted in", f"{accepted_s:.1f} s")
    _figure("a: answers retried with the same Idempotency-Key", retried)
    _figure("a: 12 trainings + 20 backtests completed in", f"{done_s:.1f} s ({_load()})")
    _figure("a: runs per worker host", per_host)
    _figure("a: trainings ran on", sorted(training_hosts))
    _figure("a: most trainings holding a slot at once", peak)
    running_peak = max_overlap([(facts[t]["running_at"], facts[t]["ended_at"]) for t in trainings])
    _figure("a: most training runs in state Running at once (some wait for a slot)", running_peak)


@pytest.mark.tc("TC-ASYNC-012", "TC-ASYNC-102")
def test_bulk_analysis_fans_out_to_dask_workers_on_both_worker_hosts(cluster: Cluster):
    from distributed import Client

    from ml.analysis import DASK_MIN_SYMBOLS

    symbols = [f"MHD{i:03d}USDT" for i in range(DASK_MIN_SYMBOLS)]
    seed_hours(cluster, symbols, 80)
    procs = cluster.start_dask()
    try:
        gateway = Gateway(cluster, user="dora")
        body = {"symbols": symbols, "timeframe": "1h", "bars": 60}
        # one symbol short of the threshold: analysed in the flow's own process
        local = gateway.submit("bulk-analysis", {**body, "symbols": symbols[:-1]})
        remote = gateway.submit("bulk-analysis", body)
        assert None not in (local, remote), gateway.answers
        final = gateway.wait_final([local, remote], timeout_s=240)
        assert {t: s["status"] for t, s in final.items()} == {local: "SUCCESS", remote: "SUCCESS"}
        results = {t: final[t]["result"]["result"] for t in (local, remote)}
        assert results[remote]["symbols_analyzed"] == DASK_MIN_SYMBOLS, results[remote]
        assert results[local]["symbols_analyzed"] == DASK_MIN_SYMBOLS - 1
        # the same signals either way, for the symbols both analysed
        signals = {
            t: {r["symbol"]: (r["signal"], r["confidence"]) for r in results[t]["results"]}
            for t in (local, remote)
        }
        assert {s: signals[remote][s] for s in signals[local]} == signals[local]
        with Client(cluster.dask_address, timeout="20s") as client:
            done = client.run(lambda dask_worker: dask_worker.state.executed_count)
        per_host = {addr.split("//")[1].split(":")[0]: n for addr, n in done.items()}
        hosts = {cluster.lab.hosts[h].address: h for h in ("w1", "w2")}
        batches = {hosts[a]: n for a, n in per_host.items()}
        assert batches.get("w1", 0) > 0 and batches.get("w2", 0) > 0, batches
        _figure("dask: batches per worker host", batches)
        _figure(
            "dask: 500 symbols on Dask across hosts vs 499 in the flow's process (s)",
            f"{results[remote]['elapsed_s']:.2f} vs {results[local]['elapsed_s']:.2f} ({_load()})",
        )
    finally:
        for proc in procs:
            proc.kill()


@pytest.mark.tc("TC-ASYNC-076", "TC-ASYNC-077", "TC-ASYNC-085")
def test_b_a_worker_host_dies_mid_training_and_the_other_resumes_it(cluster: Cluster):
    gateway = Gateway(cluster, user="bob")
    task = gateway.submit(
        "train",
        # small batches: 400 epochs last long enough on an idle machine to be killed midway
        {**TRAIN_BODY, "symbol": B_SYMBOL, "epochs": 400, "checkpoint_interval": 10}
        | {"batch_size": 4},
    )
    assert task is not None, gateway.answers

    def trained_30_epochs() -> bool:
        job = training_job(cluster, task)
        return job is not None and len(job.get("epochs") or []) >= 30

    _wait(trained_30_epochs, 180, "30 epochs trained (3 checkpoints stored)")
    first = run_facts(cluster, [task])[task]
    host = first["host"]
    assert host in ("w1", "w2"), first
    killed = cluster.lab.kill_host(host)  # the worker host's botai up, worker and the run
    killed_at = time.monotonic()
    assert killed >= 2
    # the gateway stays true throughout: never FAILURE for a run that will be resumed
    seen: list[str] = []
    while time.monotonic() - killed_at < 240:
        status = gateway.status(task)["status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        if status in ("SUCCESS", "FAILURE", "REVOKED"):
            break
        time.sleep(1)
    completed_s = time.monotonic() - killed_at
    assert seen[-1] == "SUCCESS" and "FAILURE" not in seen, seen
    after = run_facts(cluster, [task])[task]
    other = "w2" if host == "w1" else "w1"
    assert after["host"] == other, after
    assert after["times_running"] == 2, after  # the killed attempt and the resumed one
    job = training_job(cluster, task)
    assert job["status"] == "completed" and job["attempts"] == 2, job
    # from a checkpoint of the killed attempt, taken before its last epoch: killed mid-training
    assert job["resumed_from_epoch"] is not None and 10 < job["resumed_from_epoch"] <= 400, job
    assert models_of_run(cluster, task) == 1  # registered once
    # found by its silent heartbeats (60 s after the last one, sent every 30 s), then the
    # rest of the training on the other host: within 120 s of the kill
    assert completed_s < 120, (completed_s, seen)
    # the host is replaced by starting its role again
    cluster.start_role(host, "worker")
    replaced_s = cluster.wait_ready(host, "worker", timeout_s=240)
    _figure("b: resumed on the other host from epoch", f"{job['resumed_from_epoch']} of 400")
    _figure("b: gateway statuses after the kill", seen)
    _figure("b: completed, counted from the kill, in", f"{completed_s:.1f} s ({_load()})")
    _figure("b: worker host replaced in", f"{replaced_s:.1f} s")


@pytest.mark.tc("TC-ASYNC-076")
def test_c_an_api_server_host_dies_and_the_stack_carries_on(cluster: Cluster):
    gateway = Gateway(cluster, user="carol")
    accepted: list[str | None] = []
    stop = threading.Event()

    def submit_stream() -> None:  # a steady client: one backtest every 0.5 s
        while not stop.is_set():
            accepted.append(gateway.backtest())
            time.sleep(0.5)

    thread = threading.Thread(target=submit_stream)
    thread.start()
    try:
        time.sleep(3)
        killed = cluster.lab.kill_host("api1")  # the host's botai up and its API server
        killed_at = time.monotonic()
        assert killed >= 2
        trainings = [gateway.train(s) for s in C_SYMBOLS]
        time.sleep(10)
    finally:
        stop.set()
        thread.join(60)
    assert not api_health(f"http://{cluster.lab.hosts['api1'].address}:4200/api")
    tasks = accepted + trainings
    assert None not in tasks, gateway.answers
    errors = [a for a in gateway.answers if a[1] != 202]
    final = gateway.wait_final(tasks, timeout_s=300)
    completed_s = time.monotonic() - killed_at
    assert {t: s["status"] for t, s in final.items() if s["status"] != "SUCCESS"} == {}
    facts = run_facts(cluster, tasks)
    assert all(f["times_running"] == 1 for f in facts.values())
    assert runs_of_user(cluster, "carol") == sorted(tasks)  # no request queued twice
    online = workers(cluster)
    assert online.get("botai-worker-w1-4200") == "ONLINE", online
    assert online.get("botai-worker-w2-4200") == "ONLINE", online
    # replacing the host: start its role again (same settings and secrets)
    cluster.start_role("api1", "server")
    replaced_s = cluster.wait_ready("api1", "server", timeout_s=240)
    assert api_health(f"http://{cluster.lab.hosts['api1'].address}:4200/api")
    _figure("c: jobs accepted while an API host died", f"{len(tasks)} of {len(tasks)}")
    _figure("c: answers other than 202 (retried with the same Idempotency-Key)", errors)
    _figure("c: all completed, counted from the kill, in", f"{completed_s:.1f} s")
    _figure("c: API host replaced (botai up --role server) in", f"{replaced_s:.1f} s ({_load()})")


def _recovery_actions(cluster: Cluster, run_ids: list[str]) -> dict[str, int]:
    """Per recovery replica: how many of ``run_ids`` it resubmitted or dead-lettered."""
    out = {}
    for name in ("rec1", "rec2"):
        path = cluster.lab.hosts[name].state_dir / "run" / "recovery.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        out[name] = sum(
            text.count(f"({r}) resubmitted") + text.count(f"{r} dead-lettered") for r in run_ids
        )
    return out


@pytest.mark.tc("TC-ASYNC-076", "TC-ASYNC-077", "TC-ASYNC-078")
def test_d_two_recovery_replicas_while_runs_are_crashed_at_random(cluster: Cluster):
    gateway = Gateway(cluster, user="dave")
    body = {**TRAIN_BODY, "epochs": 150, "checkpoint_interval": 10}
    tasks = [gateway.submit("train", {**body, "symbol": s}) for s in D_SYMBOLS]
    assert None not in tasks, gateway.answers
    rng = random.Random(20261207)
    crashed: dict[str, str] = {}  # run -> host whose run process was killed
    deadline = time.monotonic() + 240
    while len(crashed) < len(tasks) and time.monotonic() < deadline:
        with prefect(cluster) as client:
            runs = [client.read_flow_run(uuid.UUID(t)) for t in tasks if t not in crashed]
        running = [r for r in runs if r.state and r.state.is_running() and r.infrastructure_pid]
        if running:
            run = rng.choice(running)
            host, pid = str(run.infrastructure_pid).split(":")
            time.sleep(rng.uniform(0, 2))  # at a random moment of its run
            try:
                os.kill(int(pid), signal.SIGKILL)
                crashed[str(run.id)] = host
            except ProcessLookupError:
                pass  # it ended meanwhile: another run is picked
        time.sleep(0.3)
    assert len(crashed) == len(tasks), f"crashed {len(crashed)} of {len(tasks)} in 240 s"
    final = gateway.wait_final(tasks, timeout_s=300)
    assert {t: s["status"] for t, s in final.items() if s["status"] != "SUCCESS"} == {}
    facts = run_facts(cluster, tasks)
    # each run: the killed attempt and at most one more, never two at once; its work done
    # once. A kill that lands once the run's work is saved (its last second) is no crash to
    # re-run: the run ends Completed after one attempt (reconciled, or it had finished).
    running = {t: f["times_running"] for t, f in facts.items()}
    assert set(running.values()) <= {1, 2}, running
    rerun = [t for t in tasks if running[t] == 2]
    assert len(rerun) >= len(tasks) // 2, running  # most kills landed mid-training
    assert all(models_of_run(cluster, t) == 1 for t in tasks)
    letters = dead_letters(cluster, tasks)
    assert letters == 0
    acted = _recovery_actions(cluster, tasks)
    assert sum(acted.values()) == len(rerun), acted  # each crash re-queued once, by one replica
    hosts = {h: sum(1 for x in crashed.values() if x == h) for h in ("w1", "w2")}
    _figure("d: run processes killed -9 at random, per worker host", hosts)
    _figure("d: completed, each once", f"{len(tasks)} of {len(tasks)}")
    _figure("d: re-run once after the kill (the others were killed after their work)", len(rerun))
    _figure("d: re-queued by recovery replica", acted)
    _figure("d: dead letters", letters)


@pytest.mark.tc("TC-ASYNC-076", "TC-ASYNC-077")
def test_e_a_worker_host_cut_off_for_30_s_then_healed(cluster: Cluster):
    gateway = Gateway(cluster, user="erin")
    task = gateway.submit(
        "train", {**TRAIN_BODY, "symbol": E_SYMBOL, "epochs": 400, "checkpoint_interval": 10}
    )
    assert task is not None, gateway.answers

    def training() -> bool:
        job = training_job(cluster, task)
        return job is not None and len(job.get("epochs") or []) >= 1

    _wait(training, 180, "training under way", poll_s=0.1)  # cut mid-training
    host = run_facts(cluster, [task])[task]["host"]
    assert host in ("w1", "w2")
    db = cluster.lab.hosts["db"].address
    assert cluster.lab.reaches(host, db, 27017)  # the store, from the worker host
    cluster.lab.cut(host, connected=False)
    cut_at = time.monotonic()
    seen: list[str] = []
    try:
        while time.monotonic() - cut_at < 30:  # the gateway answers throughout
            status = gateway.status(task)["status"]
            if not seen or seen[-1] != status:
                seen.append(status)
            time.sleep(1)
        assert not cluster.lab.reaches(host, db, 27017)  # really cut off
    finally:
        cluster.lab.cut(host, connected=True)
    final = gateway.wait_final([task], timeout_s=240)[task]
    healed_s = time.monotonic() - cut_at - 30
    seen.append(final["status"])
    history = state_history(cluster, task)
    assert final["status"] == "SUCCESS" and "FAILURE" not in seen, (seen, history)
    facts = run_facts(cluster, [task])[task]
    assert models_of_run(cluster, task) == 1  # its work done once
    job = training_job(cluster, task)
    assert job["status"] == "completed", job
    # still online once healed: the host's worker heartbeats again
    _wait(lambda: workers(cluster).get(f"botai-worker-{host}-4200") == "ONLINE", 120, "online")
    _figure("e: training attempts (Running states) across the partition", facts["times_running"])
    _figure("e: gateway statuses from the cut", seen)
    _figure("e: completed after the heal in", f"{healed_s:.1f} s ({_load()})")


@pytest.mark.tc("TC-ASYNC-005", "TC-ASYNC-085")
def test_f_jobs_cancelled_right_after_their_202_never_execute_on_any_host(cluster: Cluster):
    gateway = Gateway(cluster, user="frank")
    tasks: list[str] = []
    answers: list[tuple[int, str]] = []
    for k in range(50):
        task_id = gateway.backtest()
        assert task_id is not None, gateway.answers
        tasks.append(task_id)
        code, body = gateway.cancel(task_id)
        answers.append((code, body.get("state") or body.get("detail", "")))
        time.sleep(0.05 * (k % 4))  # cancels land before, during and after a worker's claim
    assert all(code == 202 for code, _ in answers), answers
    final = gateway.wait_final(tasks, timeout_s=120)
    assert {t: s["status"] for t, s in final.items() if s["status"] != "REVOKED"} == {}
    time.sleep(3)  # a run that slipped through would show Running by now
    facts = run_facts(cluster, tasks)
    ran = {t: f for t, f in facts.items() if f["times_running"]}
    assert ran == {}, ran
    assert {f["state"] for f in facts.values()} == {"Cancelled"}, facts
    claimed: dict[str, int] = {}
    for f in facts.values():
        if f["host"] != "?":
            claimed[f["host"]] = claimed.get(f["host"], 0) + 1
    _figure("f: cancelled right after the 202, executed", f"0 of {len(tasks)}")
    _figure("f: claimed by a worker host before the cancel landed", claimed)
    _figure("f: cancel answers", sorted({state for _, state in answers}))


@pytest.mark.tc("TC-ASYNC-076", "TC-ASYNC-078")
def test_g_servers_killed_while_trainings_hold_both_slots(cluster: Cluster):
    gateway = Gateway(cluster)
    spare = list(G_SYMBOLS)
    # 20 trainings queued at once; the first 6 long enough to hold both slots at the kills
    trainings = [gateway.train(spare.pop(0), epochs=6 if k < 6 else 2) for k in range(20)]
    assert None not in trainings, gateway.answers
    back_s = {}
    held_at_kill: dict[str, int] = {}
    for host, service in (
        ("api1", "prefect-api"),
        ("api2", "prefect-api"),
        ("svc", "prefect-services"),
    ):
        seen: list[tuple[int, int]] = []

        def slots_held(seen: list[tuple[int, int]] = seen, runs: list[str] = trainings) -> bool:
            seen.append((training_slots(cluster), unfinished(cluster, runs)))
            if seen[-1][1] < 3 and spare:  # keep both slots busy through every kill
                runs.extend(gateway.train(spare.pop(0), epochs=6) for _ in range(2))
                assert None not in runs, gateway.answers
            return seen[-1][0] == 2

        try:
            _wait(slots_held, 180, "training slots taken")
        except AssertionError as e:
            raise AssertionError(f"{e}; last (slots, unfinished trainings): {seen[-3:]}") from None
        held = held_at_kill[f"{host} {service}"] = seen[-1][0]
        old = cluster.service_pid(host, service)
        os.kill(old, signal.SIGKILL)
        killed_at = time.monotonic()
        # the host's supervisor starts it again (the API: once it answers its health check)
        if service == "prefect-api":
            url = f"http://{cluster.lab.hosts[host].address}:4200/api"
            _wait(lambda url=url: api_health(url), 180, f"{host}'s API server back")
            time.sleep(3)  # HAProxy takes a server back after 2 good checks 1 s apart
        else:
            _wait(
                lambda h=host, o=old: cluster.service_pid(h, "prefect-services") != o,
                60,
                "services back",
            )
        back_s[f"{host} {service}"] = round(time.monotonic() - killed_at, 1)
        _figure(f"g: {host} {service} killed -9 with training slots held", held)
    final = gateway.wait_final(trainings, timeout_s=420)
    assert {t: s["status"] for t, s in final.items() if s["status"] != "SUCCESS"} == {}
    facts = run_facts(cluster, trainings)
    assert [f["times_running"] for f in facts.values()] == [1] * len(trainings)
    freed_s = _wait(lambda: training_slots(cluster) == 0, 60, "both training slots free")
    # the slot events of the runs: those sent while a server died can be lost (the event
    # stream is best effort); a slot without its release event counts as held to the run's end
    time.sleep(5)
    slots = slot_intervals(cluster, trainings)
    intervals = [
        (start, end or facts[t]["ended_at"]) for t, held in slots.items() for start, end in held
    ]
    assert max_overlap(intervals) <= 2
    missing = sum(1 for h in slots.values() for _, end in h if end is None)
    missing += sum(1 for h in slots.values() if not h)
    _figure("g: slot events lost while servers died (acquired or released)", missing)
    _figure("g: back after kill -9 (s)", back_s)
    _figure("g: trainings completed once", f"{len(trainings)} of {len(trainings)}")
    assert all(held == 2 for held in held_at_kill.values()), held_at_kill
    _figure("g: slots free after the last training", f"{freed_s:.1f} s ({_load()})")
