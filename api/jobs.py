"""The jobs the gateway can start: URL name -> deployment, parameter model, who may run it.

The parameter models are the flows' own (``core.schemas``), so HTTP, the Prefect UI and the
CLI reject the same bad input with the same messages before anything is queued.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from api import prechecks, runtime
from core.schemas.analysis import BulkAnalysisParams, PredictPriceParams
from core.schemas.backtest import BacktestParameters, OptimizeParameters
from core.schemas.market_data import IngestParameters
from core.schemas.self_improvement import (
    AdaptiveRetrainParams,
    StrategyDisableParams,
    StrategyEnableParams,
)
from core.schemas.training import TrainModelParams
from integrations.store import C, Store
from tasks.training import assert_no_active_training


def _no_active_training(params: Any) -> None:
    """train: 409 while the same model_type+symbol+timeframe is queued or running (read
    with the gateway's shared Prefect client)."""
    with runtime.prefect_client() as client:
        assert_no_active_training(params.model_type, params.symbol, params.timeframe, client=client)


@dataclass(frozen=True)
class Job:
    """One job the gateway exposes as ``POST /api/tasks/{name}``.

    Attributes:
        deployment: ``flow-name/deployment-name`` in prefect.yaml.
        params: the flow's parameter model (the flow's only parameter is ``params``).
        admin_only: regular users get 403 "Admin privileges required".
        who_field: parameter set to the caller's user id (overrides the body), or None.
        result_collection: where the flow saves its result by ``task_id``, or None.
        quota_noun: word in the 429 message ("Max 10 trainings per day exceeded").
        precheck: Prefect check that raises before any quota is used or run created (train:
            a duplicate queued or running), or None.
        data_check: store check that raises before any quota is used or run created when
            the job cannot run on the stored data (api.prechecks), or None.
    """

    name: str
    deployment: str
    params: type[BaseModel]
    admin_only: bool
    summary: str
    who_field: str | None = None
    result_collection: str | None = None
    quota_noun: str = "runs"
    precheck: Callable[[Any], None] | None = None
    data_check: Callable[[Any, Store], None] | None = None


JOBS: dict[str, Job] = {
    j.name: j
    for j in (
        Job(
            "train",
            "train-model/train-model",
            TrainModelParams,
            admin_only=True,
            summary="Train an LSTM/GRU/Transformer model (admin; daily quota).",
            who_field="requested_by",
            result_collection=C.TRAINING_JOBS,
            quota_noun="trainings",
            precheck=_no_active_training,
            data_check=prechecks.training_data,
        ),
        Job(
            "backtest",
            "backtest-strategy/backtest-strategy",
            BacktestParameters,
            admin_only=False,
            summary="Backtest one strategy on stored candles.",
            result_collection=C.BACKTEST_RESULTS,
            quota_noun="backtests",
            data_check=prechecks.range_data,
        ),
        Job(
            "optimize",
            "optimize-strategy/optimize-strategy",
            OptimizeParameters,
            admin_only=False,
            summary="Grid, genetic or walk-forward optimisation of a strategy.",
            result_collection=C.OPTIMIZATION_RESULTS,
            quota_noun="optimisations",
            data_check=prechecks.range_data,
        ),
        Job(
            "predict",
            "predict-price/predict-price",
            PredictPriceParams,
            admin_only=False,
            summary="Predict prices over the next hours with the deployed model (or the "
            "version model_version names).",
            quota_noun="predictions",
            data_check=prechecks.prediction_data,
        ),
        Job(
            "bulk-analysis",
            "bulk-analysis/bulk-analysis",
            BulkAnalysisParams,
            admin_only=False,
            summary="Analyse many symbols in parallel.",
            quota_noun="bulk analyses",
            data_check=prechecks.bulk_model_version,
        ),
        Job(
            "ingest",
            "ingest-market-data/ingest-market-data",
            IngestParameters,
            admin_only=True,
            summary="Ingest candles from Binance, a CSV file or the generator (admin).",
            quota_noun="ingests",
        ),
        Job(
            "retrain",
            "adaptive-retrain/adaptive-retrain",
            AdaptiveRetrainParams,
            admin_only=True,
            summary="Retrain and deploy only models that beat the deployed one (admin).",
            who_field="requested_by",
            quota_noun="retrains",
        ),
        Job(
            "strategy-disable",
            "emergency-strategy-disable/emergency-strategy-disable",
            StrategyDisableParams,
            admin_only=True,
            summary="Disable failing strategies now (admin).",
            who_field="by",
            quota_noun="strategy disables",
        ),
        Job(
            "strategy-enable",
            "strategy-enable/strategy-enable",
            StrategyEnableParams,
            admin_only=True,
            summary="Re-enable a reviewed strategy (admin; the body names the reviewer).",
            quota_noun="strategy enables",
        ),
    )
}
