"""Training benchmarks (run: ``.venv/bin/python bench/bench_training.py [overhead|real|all]``).

* ``overhead``: the ``train-model`` flow (Prefect run on a temporary server, MongoDB, progress
  artifact, per-epoch job records, checkpoints, baselines, encrypted registration) against a
  bare ``model.fit`` of the same model on the same data and epochs, measured in one run.
  Prints the ratio.
* ``real``: accuracy on the real Coinbase BTC/USD hours in ``../shared/data`` for each model
  type, beside the majority-class and logistic-regression baselines on the same held-out
  split (no tuning on the validation split: fixed hyper-parameters below).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from integrations.market_data.csv_source import read_candles_csv  # noqa: E402


def load_btc_hours(data_dir: Path) -> pd.DataFrame:
    """The hourly CSV as a candle frame, oldest first (UTC index ``open_time``)."""
    frame = read_candles_csv(data_dir / "Coinbase_BTCUSD_1h.csv").frame.sort_index()
    frame["trades_count"] = 0
    return frame


def bench_real(days: int = 365, epochs: int = 20) -> None:
    from core.settings import load_settings
    from ml.checkpoints import CheckpointStore
    from ml.features import prepare_dataset
    from ml.training import TrainConfig, train

    candles = load_btc_hours(load_settings().data_dir).iloc[-days * 24 :]
    ds = prepare_dataset(candles, lookback=24, horizon_bars=1, validation_split=0.2)
    print(
        f"real BTC/USD 1h: {len(candles)} bars {candles.index[0]} .. {candles.index[-1]}; "
        f"train {len(ds.y_train)} val {len(ds.y_val)} (val from {ds.t_val[0]})"
    )
    tmp = Path(tempfile.mkdtemp())
    for model_type in ("lstm", "gru", "transformer"):
        cfg = TrainConfig(model_type, epochs=epochs, batch_size=64, learning_rate=1e-3, units=32)
        t0 = time.perf_counter()
        out = train(
            ds,
            cfg,
            checkpoints=CheckpointStore(tmp, model_type, "BTCUSD", "1h", os.urandom(32)),
            run_id="b",
        )
        m, b = out.val_metrics, out.baselines
        print(
            f"  {model_type:11s} val_accuracy {m['accuracy']:.4f} f1 {m['f1']:.3f} "
            f"best_epoch {out.best_epoch} | majority {b['majority_class']['accuracy']:.4f} "
            f"logreg {b['logistic_regression']['accuracy']:.4f} | {time.perf_counter() - t0:.1f} s"
        )


def bench_overhead(epochs: int = 10) -> None:
    from prefect.testing.utilities import prefect_test_harness

    from blocks.model_store import ModelStoreBlock, generate_model_key
    from blocks.mongodb import MongoDBBlock
    from core.schemas.training import TrainModelParams
    from integrations.embedded_mongo import start_embedded_mongo
    from integrations.store import Store, connect
    from ml.features import prepare_dataset
    from ml.models import build_model

    tmp = Path(tempfile.mkdtemp())
    os.environ["BOTAI_STATE_DIR"] = str(tmp / "state")
    os.environ["BOTAI_MIN_FREE_DISK_GB"] = "0.1"
    candles = load_btc_hours(REPO.parent / "shared" / "data").iloc[-90 * 24 :]
    params = TrainModelParams(
        model_type="lstm", symbol="BTCUSDT", days_of_data=90, epochs=epochs, batch_size=64
    )
    mongo = start_embedded_mongo(tmp / "mongo")
    try:
        store = Store(connect(mongo.uri), "bench")
        store.ensure_indexes()
        store.upsert_candles("BTCUSDT", "1h", candles, source="csv:Coinbase_BTCUSD_1h.csv")
        # bare: the same network, data and epochs with model.fit alone (compiled once first)
        ds = prepare_dataset(candles, lookback=params.lookback, validation_split=0.2)
        warm = build_model("lstm", params.lookback, ds.spec.n_features, units=params.units)
        warm.fit(ds.x_train, ds.y_train, epochs=1, batch_size=64, verbose=0)
        t0 = time.perf_counter()
        model = build_model("lstm", params.lookback, ds.spec.n_features, units=params.units)
        model.fit(
            ds.x_train,
            ds.y_train,
            epochs=epochs,
            batch_size=64,
            validation_data=(ds.x_val, ds.y_val),
            verbose=0,
        )
        bare_s = time.perf_counter() - t0
        with prefect_test_harness(server_startup_timeout=120):
            MongoDBBlock(uri=mongo.uri, database="bench").save("mongodb", overwrite=True)
            ModelStoreBlock(directory=str(tmp / "models"), key=generate_model_key()).save(
                "model-store", overwrite=True
            )
            from flows.train_model import train_model

            t0 = time.perf_counter()
            result = train_model(params)
            flow_s = time.perf_counter() - t0
    finally:
        mongo.stop()
    print(
        f"overhead: lstm, {len(ds.y_train)} train samples, {epochs} epochs: bare model.fit "
        f"{bare_s:.2f} s, train-model flow {flow_s:.2f} s, ratio {flow_s / bare_s:.2f}x "
        f"(flow val_accuracy {result.training_results.val_accuracy:.3f})"
    )


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    np.random.seed(0)
    if what in ("real", "all"):
        bench_real()
    if what in ("overhead", "all"):
        bench_overhead()
