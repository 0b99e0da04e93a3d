"""predict-price latency and interval calibration.

Run: ``.venv/bin/python bench/bench_prediction.py`` (latency) or
``.venv/bin/python bench/bench_prediction.py calibration`` (coverage of the 80 % interval on
real hours: calibration frozen at a date vs re-calibrated at every origin, with and without
the regime scale; standard errors from weekly blocks of origins; machine load printed).

Real Coinbase BTC/USD hours from ``../shared/data``: the newest 3,000 stored as BTCUSD 1h in
an embedded nx-27017 store; a small GRU trained (2 epochs) on the 6,000 hours before them and
deployed. Measured in one run:

* pure: ``ml.prediction.predict_prices`` on in-memory candles with the model already loaded
  (24 h and 168 h; median of 5 after one warm-up);
* flow: the ``predict-price`` flow on a temporary Prefect server (24 h), cold (first run:
  Keras compiles the model's predict) and warm (median of 3), against TC-ASYNC-013's < 10 s.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_training import load_btc_hours  # noqa: E402


def _median_s(fn, n: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    from prefect.testing.utilities import prefect_test_harness

    from blocks.model_store import ModelStoreBlock, generate_model_key
    from blocks.mongodb import MongoDBBlock
    from core.schemas.analysis import PredictPriceParams
    from core.settings import load_settings
    from integrations.embedded_mongo import start_embedded_mongo
    from integrations.store import Store, connect
    from ml.features import prepare_dataset
    from ml.models import build_model
    from ml.prediction import predict_prices
    from ml.registry import ModelRegistry

    tmp = Path(tempfile.mkdtemp())
    os.environ["BOTAI_STATE_DIR"] = str(tmp / "state")
    btc = load_btc_hours(load_settings().data_dir)
    recent, older = btc.iloc[-3000:], btc.iloc[-9000:-3000]
    mongo = start_embedded_mongo(tmp / "mongo")
    try:
        store = Store(connect(mongo.uri), "bench")
        store.ensure_indexes()
        store.upsert_candles("BTCUSD", "1h", recent, source="csv:Coinbase_BTCUSD_1h.csv")
        ds = prepare_dataset(older, lookback=24, horizon_bars=1)
        model = build_model("gru", 24, ds.spec.n_features, units=16)
        model.fit(ds.x_train, ds.y_train, epochs=2, batch_size=128, verbose=0)
        acc = float(((model.predict(ds.x_val, verbose=0).reshape(-1) > 0.5) == ds.y_val).mean())
        block = ModelStoreBlock(directory=str(tmp / "models"), key=generate_model_key())
        (tmp / "models").mkdir()
        registry = ModelRegistry(store, tmp / "models", block.get_key())
        rec = registry.register(
            model,
            model_type="gru",
            symbol="BTCUSD",
            timeframe="1h",
            metrics={"val_accuracy": acc},
            feature_spec=ds.spec.to_dict(),
            horizon_bars=1,
            created_by="bench",
        )
        registry.deploy(rec.model_id, by="bench")
        loaded = registry.load(rec)
        candles = store.load_candles("BTCUSD", "1h", last_n=3000)
        predict_prices(loaded, candles, 24)  # warm-up (jit)
        pure_24 = _median_s(lambda: predict_prices(loaded, candles, 24), 5)
        pure_168 = _median_s(lambda: predict_prices(loaded, candles, 168), 5)
        load_s = _median_s(lambda: registry.load(rec), 3)
        with prefect_test_harness(server_startup_timeout=120):
            MongoDBBlock(uri=mongo.uri, database="bench").save("mongodb", overwrite=True)
            block.save("model-store", overwrite=True)
            from flows.predict_price import predict_price

            params = PredictPriceParams(symbol="BTCUSD", model_type="gru", horizon_hours=24)
            t0 = time.perf_counter()
            result = predict_price(params)
            cold = time.perf_counter() - t0
            warm = _median_s(lambda: predict_price(params), 3)
    finally:
        mongo.stop()
    cov = result.recent_calibration_fit
    after = result.coverage_after_training
    print(
        f"predict-price on real BTC/USD hours (model val_accuracy {acc:.3f}):\n"
        f"  pure predict_prices (model in memory, 3,000 candles): 24 h {pure_24 * 1000:.0f} ms, "
        f"168 h {pure_168 * 1000:.0f} ms; registry.load (decrypt + build) {load_s * 1000:.0f} ms\n"
        f"  predict-price flow, 24 h: cold {cold:.2f} s, warm {warm:.2f} s "
        f"(TC-ASYNC-013 < 10 s: {'met' if max(cold, warm) < 10 else 'NOT met'}); "
        f"flow / pure (warm) {warm / pure_24:.1f}x\n"
        f"  recent calibration fit of the 80% interval on the last 720 h: "
        f"{cov.coverage if cov else float('nan'):.3f} {cov.coverage_by_hour if cov else ''}\n"
        f"  coverage after the model's training window: "
        f"{f'{after.coverage:.3f} +- {after.standard_error}' if after else 'n/a'} "
        f"({result.coverage_after_training_note})"
    )


def calibration() -> None:
    """Coverage of the 80 % interval on the real hours (see the module docstring)."""
    import numpy as np
    import pandas as pd

    from core.settings import load_settings
    from ml.forecast import ForecastConfig, interval_coverage

    btc = load_btc_hours(load_settings().data_dir)
    close = btc["close"].to_numpy(float)

    def at(day: str) -> int:
        return int(np.searchsorted(btc.index, pd.Timestamp(day, tz="UTC")))

    print(f"load average before: {os.getloadavg()}")
    hours = list(range(1, 25))
    periods = [("2018-01-01", "2018-07-01"), ("2018-07-01", "2019-01-01"), ("2019-04-01", None)]
    for rb in (0, 168, 336, 720):
        cfg = ForecastConfig(regime_bars=rb)
        for start, end in periods:
            a, b = at(start), (at(end) if end else len(close))
            r = interval_coverage(
                close, np.arange(a, b), hours, config=cfg, calibration_frozen_at=a
            )
            print(
                f"regime_bars {rb:3d}  frozen at {start}, hours 1-24 until {end or 'the end'}: "
                f"{r.coverage:.3f} +- {r.standard_error:.3f} ({r.pairs} pairs)"
            )
        t0 = at("2019-04-01")
        r = interval_coverage(close, np.arange(t0, len(close)), hours, config=cfg)
        print(
            f"regime_bars {rb:3d}  online, every origin from 2019-04-01, hours 1-24: "
            f"{r.coverage:.3f} +- {r.standard_error:.3f}"
        )
        r = interval_coverage(close, np.arange(t0, len(close), 7), [1, 6, 24, 72, 168], config=cfg)
        by_hour = " / ".join(f"{v:.3f}" for v in r.coverage_by_hour.values())
        print(
            f"regime_bars {rb:3d}  online, origins every 7 h, hours 1/6/24/72/168: "
            f"{r.coverage:.3f} +- {r.standard_error:.3f} ({by_hour})"
        )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    calibration() if sys.argv[1:] == ["calibration"] else main()
