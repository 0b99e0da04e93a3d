"""bulk-analysis benchmark (run: ``.venv/bin/python bench/bench_bulk_analysis.py [n_symbols]``).

``n_symbols`` (default 100) synthetic symbols of 300 hourly candles in an embedded
nx-27017 store, 10 % of them with a deployed (small GRU) model. Measured in one run:

* **sequential** (the anchor): every symbol analysed one after the other in a fresh
  process, no Prefect (``tasks.analysis.run_analysis_batch``; Keras import included);
* **flow**: the ``bulk-analysis`` flow end to end as deployed (no DASK_ADDRESS: one batched
  read, analysis in the flow's process), run twice; the second run is what a warm
  worker's forked run sees (Keras already imported);
* **crossover**: the analysis step alone after one batched read, in-process vs on a
  long-lived 2-process Dask cluster (started once, warmed by one call), 10 to 3x
  ``n_symbols`` symbols: the first size
  at which Dask is faster is printed (none: Dask never pays up to that size).

Prints every figure with the machine's load beside it, the ratio sequential / flow, and
checks the requirement of 100 symbols in < 5 s.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def load() -> str:
    """The 1-minute load average, formatted."""
    return f"load {os.getloadavg()[0]:.1f}"


def main(n_symbols: int = 100) -> None:
    from prefect.testing.utilities import prefect_test_harness

    from blocks.model_store import ModelStoreBlock, generate_model_key
    from blocks.mongodb import MongoDBBlock
    from core.schemas.analysis import BulkAnalysisParams
    from integrations.embedded_mongo import start_embedded_mongo
    from integrations.store import Store, connect

    tmp = Path(tempfile.mkdtemp())
    os.environ["BOTAI_STATE_DIR"] = str(tmp / "state")
    os.environ.pop("DASK_ADDRESS", None)
    n_store = 3 * n_symbols
    symbols = [f"S{i:03d}USDT" for i in range(n_store)]
    n_models = max(1, n_symbols // 10)
    start = datetime(2026, 9, 1, tzinfo=UTC)
    mongo = start_embedded_mongo(tmp / "mongo")
    try:
        store = Store(connect(mongo.uri), "bench")
        store.ensure_indexes()
        seed_candles(store, symbols, start)
        key = generate_model_key()
        model_dir = tmp / "models"
        model_dir.mkdir()
        block = ModelStoreBlock(directory=str(model_dir), key=key)
        models = deploy_models(store, model_dir, block.get_key(), symbols[:n_models])
        mongo_block = MongoDBBlock(uri=mongo.uri, database="bench")
        assert len(models) == n_models

        seq_s, seq_signals = sequential_in_fresh_process(
            mongo.uri, symbols[:n_symbols], model_dir, key
        )
        seq_load = load()
        with prefect_test_harness(server_startup_timeout=180):
            mongo_block.save("mongodb", overwrite=True)
            block.save("model-store", overwrite=True)
            from flows.bulk_analysis import bulk_analysis

            flow_s = []
            for _ in range(2):
                t0 = time.perf_counter()
                result = bulk_analysis(BulkAnalysisParams(symbols=symbols[:n_symbols]))
                flow_s.append((time.perf_counter() - t0, load()))
        rows = crossover(store, mongo_block, model_dir, block.get_key(), models, symbols, n_symbols)
    finally:
        mongo.stop()
    from_model = sum(r.source == "model" for r in result.results)
    same = seq_signals == {r.symbol: r.signal for r in result.results}
    best = min(s for s, _ in flow_s)
    print(
        f"bulk-analysis, {n_symbols} symbols x 300 bars ({from_model} with a model), "
        f"{os.cpu_count()} CPUs:\n"
        f"  sequential (fresh process, no Prefect; Keras import included) {seq_s:.2f} s ({seq_load})\n"
        f"  flow, first run in this process (Keras imported by it) {flow_s[0][0]:.2f} s "
        f"({flow_s[0][1]})\n"
        f"  flow, second run (Keras already imported, as in a warm worker's fork) "
        f"{flow_s[1][0]:.2f} s ({flow_s[1][1]}); flow-reported {result.elapsed_s:.2f} s, "
        f"{result.batches} batch(es), no Dask\n"
        f"  ratio sequential / flow {seq_s / best:.2f}x (> 1: the flow is faster); same signals: "
        f"{same}; requirement {n_symbols} symbols < 5 s: {'met' if best < 5 else 'NOT met'}"
    )
    print("  analysis step after one batched read (s): in-process vs long-lived Dask (2 procs)")
    cross = None
    for n, read_s, local_s, dask_s, ld in rows:
        print(
            f"    {n:4d} symbols: read {read_s:.2f} | in-process {local_s:.2f} | Dask {dask_s:.2f}"
            f" | Dask/in-process {dask_s / local_s:.2f}x ({ld})"
        )
        if cross is None and dask_s < local_s:
            cross = n
    print(
        f"  crossover: Dask starts to pay at {cross} symbols"
        if cross
        else f"  crossover: none up to {rows[-1][0]} symbols - Dask never pays here, so the flow"
        " analyses in its own process (ml.analysis.DASK_MIN_SYMBOLS)"
    )


def seed_candles(store, symbols: list[str], start: datetime, *, tails: bool = True) -> None:  # noqa: ANN001
    """300 synthetic hours per symbol in one bulk insert (upserting symbol by symbol costs
    O(collection) each on nx-27017: 400 symbols took over 10 minutes), then the candle tails
    built by the write path's own rebuild (``tails=False``: none, as after a writer that
    bypasses the platform)."""
    from core.market import bar_length
    from integrations.market_data.synthetic import generate_candles
    from integrations.store import C
    from integrations.store.candles import frame_to_docs

    for i in range(0, len(symbols), 20):  # 6,000 documents per insert
        docs = []
        for s in symbols[i : i + 20]:
            frame = generate_candles(s, "1h", start, 300)
            docs += frame_to_docs(s, "1h", frame, bar_length("1h"), "synthetic")
        store.col(C.MARKET_DATA).insert_many(docs, ordered=False)
    if tails:
        states = store.market.rebuild_candle_tails(symbols, "1h")
        assert set(states.values()) == {"valid"}, states


def crossover(store, mongo_block, model_dir, key, models, symbols, n_symbols):  # noqa: ANN001
    """Time the analysis step in-process and on a long-lived Dask cluster per size.

    Returns:
        rows (n, read_s, in_process_s, dask_s, load).
    """
    from distributed import LocalCluster
    from pydantic import SecretBytes

    from ml.analysis import batch_symbols
    from tasks.analysis import analyze_frames, analyze_on_dask

    docs = {d["symbol"]: d for d in store.models_find({"status": "deployed", "timeframe": "1h"})}
    secret = SecretBytes(key)
    sizes = sorted(
        {n for n in (10, 50, n_symbols, 2 * n_symbols, 3 * n_symbols) if n <= len(symbols)}
    )
    rows = []
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        address = cluster.scheduler_address
        warm = symbols[:4]
        frames = store.load_candles_many(warm, "1h", last_n=300)
        analyze_on_dask(
            address, [warm[:2], warm[2:]], frames, mongo_block, docs, str(model_dir), secret
        )
        for n in sizes:
            names = symbols[:n]
            names = [s for s in names if s in docs] + [s for s in names if s not in docs]
            t0 = time.perf_counter()
            frames = store.load_candles_many(names, "1h", last_n=300)
            read_s = time.perf_counter() - t0
            own = {s: docs[s] for s in names if s in docs}
            t0 = time.perf_counter()
            analyze_frames(names, frames, store, own, str(model_dir), secret)
            local_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            analyze_on_dask(
                address,
                batch_symbols(names, 2, 50),
                frames,
                mongo_block,
                own,
                str(model_dir),
                secret,
            )
            dask_s = time.perf_counter() - t0
            rows.append((n, read_s, local_s, dask_s, load()))
    return rows


_SEQUENTIAL = """
import json, os, sys, time
t0 = time.perf_counter()
sys.path.insert(0, os.environ["REPO"])
from pydantic import SecretBytes
from blocks.mongodb import MongoDBBlock
from tasks.analysis import run_analysis_batch
mongo = MongoDBBlock(uri=os.environ["MONGO_URI"], database="bench")
store = mongo.get_store()
symbols = json.loads(os.environ["SYMBOLS"])
docs = {d["symbol"]: d for d in store.models_find({"status": "deployed", "timeframe": "1h"})}
out = run_analysis_batch(symbols, "1h", 300, mongo, docs, os.environ["MODEL_DIR"],
                         SecretBytes(bytes.fromhex(os.environ["MODEL_KEY"])))
print(json.dumps({"s": time.perf_counter() - t0,
                  "signals": {o.symbol: o.signal for o in out if hasattr(o, "signal")}}))
"""


def sequential_in_fresh_process(
    uri: str, symbols: list[str], model_dir: Path, key: object
) -> tuple[float, dict[str, str]]:
    """Analyse every symbol one after the other in a new Python process (cold, as the
    flow's Dask workers are). Returns (seconds from start of imports, {symbol: signal})."""
    import json
    import subprocess

    from blocks.model_store import ModelStoreBlock

    raw = ModelStoreBlock(directory=str(model_dir), key=key).get_key()
    env = {
        **os.environ,
        "REPO": str(REPO),
        "MONGO_URI": uri,
        "SYMBOLS": json.dumps(symbols),
        "MODEL_DIR": str(model_dir),
        "MODEL_KEY": raw.hex(),
    }
    proc = subprocess.run(
        [sys.executable, "-c", _SEQUENTIAL], env=env, capture_output=True, text=True, check=True
    )
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return float(data["s"]), data["signals"]


def deploy_models(store, model_dir: Path, key: bytes, symbols: list[str]) -> dict[str, str]:  # noqa: ANN001
    """Deploy one small GRU (2 epochs on its own synthetic history) per symbol.

    Returns:
        ``{symbol: model_id}``.
    """
    from bench.models import deploy_small_gru
    from integrations.market_data.synthetic import generate_candles

    return {
        s: deploy_small_gru(
            store,
            model_dir,
            key,
            s,
            generate_candles(s, "1h", datetime(2026, 5, 1, tzinfo=UTC), 1500, seed=1),
            lookback=12,
            units=8,
        )
        for s in symbols
    }


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
