"""What a trained model's signals earn after fees on real BTC hours it never saw
(run: ``.venv/bin/python bench/bench_economics.py [--seeds 1 2 3] [--epochs 100]``).

Real Coinbase BTC/USD hours (``../shared/data``), split at 2019-04-01 as in docs/ml.md: each
model is trained with train-model's defaults (lstm, the 365 days before the split, lookback 24,
horizon 1 h, 100 epochs, batch 64, lr 1e-3, 32 units, best validation epoch kept) and then
predicts every hour from 2019-04-01 to the end of the file (~4,785 unseen hours). Its signals
(long when P(up) > 0.5, flat otherwise) go through our own engine with the default 0.1 % fee
per side, beside buy-and-hold and logistic regression fitted on the same training split
(``ml.economics``: every figure with its circular block-bootstrap SE). The deploy rule's two
tests are applied as train-model applies them (``ml.deploy_rule``). ``--epochs`` and
``--seeds`` shrink the run (about 60-120 s per seed on 2 unloaded cores at 100 epochs).
"""

from __future__ import annotations

import argparse
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

from bench.bench_training import load_btc_hours  # noqa: E402

SPLIT = pd.Timestamp("2019-04-01", tz="UTC")


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f} on {os.cpu_count()} cores"


def run_seed(candles: pd.DataFrame, seed: int, epochs: int, model_type: str) -> None:
    from core.schemas.training import TrainModelParams
    from ml.candidate import economic_held_out
    from ml.checkpoints import CheckpointStore
    from ml.deploy_rule import Holdout, apply_rule, economic_test, score_holdout
    from ml.economics import EconomicsConfig
    from ml.features import inference_windows, make_labels, prepare_dataset
    from ml.metrics import baseline_probabilities
    from ml.training import TrainConfig, train

    d = TrainModelParams(model_type=model_type)  # train-model's defaults
    cut = int(np.searchsorted(candles.index, SPLIT))
    train_bars = candles.iloc[max(0, cut - d.days_of_data * 24) : cut]
    ds = prepare_dataset(train_bars, lookback=d.lookback, horizon_bars=d.horizon_bars)
    config = TrainConfig(
        model_type,
        epochs=epochs,
        batch_size=d.batch_size,
        learning_rate=d.learning_rate,
        units=d.units,
        seed=seed,
        checkpoint_every_s=None,
    )
    tmp = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    out = train(
        ds,
        config,
        checkpoints=CheckpointStore(tmp, model_type, "BTCUSD", "1h", os.urandom(32)),
        run_id=f"bench-{seed}",
    )
    trained_s = time.perf_counter() - t0
    labels = make_labels(candles["close"].to_numpy(np.float64), d.horizon_bars)
    positions = np.arange(cut, len(candles))
    positions = positions[np.isfinite(labels[positions])]
    windows, ends = inference_windows(candles, out.spec)
    row = {int(e): i for i, e in enumerate(ends)}
    x = windows[[row[int(p)] for p in positions]]
    p_model = out.model.predict(x, batch_size=512, verbose=0).reshape(-1)
    base = baseline_probabilities(ds.x_train, ds.y_train, x)
    index = candles.index
    holdout = Holdout(
        cut,
        positions,
        labels[positions],
        index[positions[0]].to_pydatetime(),
        index[positions[-1]].to_pydatetime(),
    )
    t1 = time.perf_counter()
    ev = economic_held_out(
        candles, holdout, p_model, base["logistic_regression"], None, EconomicsConfig()
    )
    eval_s = time.perf_counter() - t1
    decision = apply_rule(score_holdout(p_model, holdout, base, None), economic_test(ev), "both")
    print(
        f"\n{model_type} seed {seed}: {epochs} epochs (best {out.best_epoch}) trained in "
        f"{trained_s:.0f} s, evaluated in {eval_s:.2f} s ({_load()}); {ev.bars:,} unseen hours "
        f"{ev.start:%Y-%m-%d} .. {ev.end:%Y-%m-%d}, fee {ev.fee_bps:g} bps per fill, blocks of "
        f"{ev.block_bars} h, {ev.bootstrap_samples} resamples"
    )
    print(f"  held-out accuracy {decision.candidate_accuracy:.3f}; " + ", ".join(
        f"{c.name} {c.accuracy:.3f}" for c in decision.comparisons
    ))  # fmt: skip
    for s in ev.strategies:
        f = s.total_return_pct, s.sharpe_ratio, s.max_drawdown_pct, s.turnover_trades
        print(
            f"  {s.name:20s} return {f[0].value:+7.1f}% ± {f[0].standard_error:5.1f}  "
            f"Sharpe {f[1].value:+5.2f} ± {f[1].standard_error:4.2f}  max drawdown "
            f"{f[2].value:6.1f}% ± {f[2].standard_error:4.1f}  trades {f[3].value:4.0f} ± "
            f"{f[3].standard_error:4.1f}  before costs {s.return_before_costs_pct:+7.1f}%"
        )
    for c in ev.comparisons:
        print(
            f"  model - {c.name}: {c.difference_pct:+.1f} points, paired SE "
            f"{c.standard_error:.1f}: {'beaten' if c.beaten else 'not beaten'}"
        )
    print(f"  decision ({decision.decided_by}): {'deployed' if decision.deployed else 'candidate'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=100, help="train-model's default: 100")
    parser.add_argument("--model-type", default="lstm")
    args = parser.parse_args()
    from core.settings import load_settings

    candles = load_btc_hours(load_settings().data_dir)
    print(f"real BTC/USD 1h: {len(candles):,} bars, split at {SPLIT:%Y-%m-%d} ({_load()})")
    for seed in args.seeds:
        run_seed(candles, seed, args.epochs, args.model_type)


if __name__ == "__main__":
    main()
