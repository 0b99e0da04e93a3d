"""bulk-analysis benchmark (run: ``.venv/bin/python bench/bench_bulk_analysis.py [n_symbols]``).

100 symbols (default) of 300 synthetic hourly candles in an embedded nx-27017 store, 10 of
them with a deployed (small GRU) model. Measured in one run, both cold (fresh processes
import Keras when a batch holds a model):

* sequential: every symbol analysed one after the other in this process, no Prefect
  (``tasks.analysis.run_analysis_batch`` over the whole list);
* flow: the ``bulk-analysis`` flow on a temporary Prefect server with its Dask task runner
  (local cluster of 2 processes, started inside the run, coarse batches).

Prints both wall times and the ratio sequential / flow (> 1: the flow is faster), and
checks the requirement of 100 symbols in < 60 s.
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


def main(n_symbols: int = 100, n_models: int = 10) -> None:
    from prefect.testing.utilities import prefect_test_harness

    from blocks.model_store import ModelStoreBlock, generate_model_key
    from blocks.mongodb import MongoDBBlock
    from core.schemas.analysis import BulkAnalysisParams
    from integrations.embedded_mongo import start_embedded_mongo
    from integrations.market_data.synthetic import generate_candles
    from integrations.store import Store, connect

    tmp = Path(tempfile.mkdtemp())
    os.environ["BOTAI_STATE_DIR"] = str(tmp / "state")
    symbols = [f"S{i:03d}USDT" for i in range(n_symbols)]
    start = datetime(2026, 9, 1, tzinfo=UTC)
    mongo = start_embedded_mongo(tmp / "mongo")
    try:
        store = Store(connect(mongo.uri), "bench")
        store.ensure_indexes()
        for s in symbols:
            store.upsert_candles(s, "1h", generate_candles(s, "1h", start, 300), source="synthetic")
        key = generate_model_key()
        model_dir = tmp / "models"
        model_dir.mkdir()
        block = ModelStoreBlock(directory=str(model_dir), key=key)
        models = deploy_models(store, model_dir, block.get_key(), symbols[:n_models])
        mongo_block = MongoDBBlock(uri=mongo.uri, database="bench")
        assert len(models) == n_models

        seq_s, seq_signals = sequential_in_fresh_process(mongo.uri, symbols, model_dir, key)
        with prefect_test_harness(server_startup_timeout=120):
            mongo_block.save("mongodb", overwrite=True)
            block.save("model-store", overwrite=True)
            from flows.bulk_analysis import bulk_analysis

            t0 = time.perf_counter()
            result = bulk_analysis(BulkAnalysisParams(symbols=symbols))
            flow_s = time.perf_counter() - t0
    finally:
        mongo.stop()
    from_model = sum(r.source == "model" for r in result.results)
    same = seq_signals == {r.symbol: r.signal for r in result.results}
    print(
        f"bulk-analysis, {n_symbols} symbols x 300 bars ({from_model} with a model), "
        f"{result.batches} Dask batches:\n"
        f"  sequential (one fresh process, no Prefect; Keras import included) {seq_s:.2f} s\n"
        f"  bulk-analysis flow on Dask (cluster start included) {flow_s:.2f} s "
        f"(flow-reported {result.elapsed_s:.2f} s)\n"
        f"  ratio sequential / flow {seq_s / flow_s:.2f}x; same signals: {same}; "
        f"requirement {n_symbols} symbols < 60 s: {'met' if flow_s < 60 else 'NOT met'}"
    )


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
    from integrations.market_data.synthetic import generate_candles
    from ml.features import prepare_dataset
    from ml.models import build_model
    from ml.registry import ModelRegistry

    registry = ModelRegistry(store, model_dir, key)
    out = {}
    for s in symbols:
        candles = generate_candles(s, "1h", datetime(2026, 5, 1, tzinfo=UTC), 1500, seed=1)
        ds = prepare_dataset(candles, lookback=12, horizon_bars=1)
        model = build_model("gru", 12, ds.spec.n_features, units=8)
        model.fit(ds.x_train, ds.y_train, epochs=2, batch_size=128, verbose=0)
        p = model.predict(ds.x_val, verbose=0).reshape(-1)
        rec = registry.register(
            model,
            model_type="gru",
            symbol=s,
            timeframe="1h",
            metrics={"val_accuracy": float(((p > 0.5) == (ds.y_val > 0.5)).mean())},
            feature_spec=ds.spec.to_dict(),
            horizon_bars=1,
            created_by="bench",
        )
        out[s] = registry.deploy(rec.model_id, by="bench").model_id
    return out


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
