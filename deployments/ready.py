"""What ``botai up`` prints once the stack is ready: what runs, what to try next, and how a
newcomer gets a first forecast (train, list, promote, predict: commands to paste)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from core.settings import Settings
from deployments import profile, service_records, work_pool

if TYPE_CHECKING:
    from deployments.up import StackInfo


def ready_message(info: StackInfo, settings: Settings) -> str:
    """The text printed once the stack is ready: what runs and what to try next."""
    lines = [
        f"botai: ready in {info.seconds_to_ready:.1f} s",
        f"  Prefect UI:   {info.ui_url}",
        f"                {profile.login_hint(settings)}",
        f"  Prefect API:  {info.api_url}",
        f"  MongoDB:      {info.mongodb_uri} (database {settings.mongodb_database})",
        f"  work pool:    {settings.work_pool} (queues {', '.join(work_pool.WORK_QUEUES)}),"
        " one process worker",
        f"  state folder: {settings.state_dir}  (logs in {service_records.run_dir(settings)})",
        f"  blocks:       {', '.join(info.blocks) or 'none'}",
        (
            f"  HTTP gateway: {info.gateway_url} (OpenAPI docs at "
            f"{info.gateway_url.removesuffix('/api')}/docs; a token: botai-api token --user ID --admin)"
            if info.gateway_url
            else "  HTTP gateway: off (set BOTAI_API_JWT_SECRET to start it; docs/api.md)"
        ),
        *(f"  {line}" for line in info.demo_summary.splitlines()),
        f"  deployments ({len(info.deployments)}): {', '.join(info.deployments) or 'none'}",
        *profile.other_terminal_lines(settings),
    ]
    if "ingest-market-data/ingest-market-data" in info.deployments:
        lines.append(
            "  prefect deployment run ingest-market-data/ingest-market-data "
            """--param params='{"source": "synthetic", "symbols": ["ETHUSDT"], "days": 60}'"""
        )
    if "backtest-strategy/backtest-strategy" in info.deployments:
        today = datetime.now(UTC).date()
        lines.append(
            "  prefect deployment run backtest-strategy/backtest-strategy --param "
            """params='{"strategy_name": "macd", "symbol": "ETHUSDT", """
            f""""start_date": "{today - timedelta(days=60)}", "end_date": "{today}"}}'"""
        )
    lines += [
        "  botai status    # what runs",
        "  botai down      # stop everything (or Ctrl-C here)",
    ]
    return "\n".join(lines)


def first_forecast_message(info: StackInfo) -> str:
    """How to get a forecast from the first pipeline's model: wait for its training, list the
    versions, promote one (or name it), predict. Commands to paste, with the version the
    training registers (``info.first_model``)."""
    if info.first_model is None or "train-model/train-model" not in info.deployments:
        return "first forecast: train a model with train-model, then see docs/ml.md"
    model_type, symbol, timeframe, _ = info.first_model.split("-")
    key = f"--symbol {symbol} --timeframe {timeframe} --model-type {model_type}"
    run = "botai prefect deployment run"
    predict = f'{run} predict-price/predict-price --param params=\'{{"symbol": "{symbol}", '
    train = (
        f'{run} train-model/train-model --param params=\'{{"model_type": "{model_type}", '
        f'"symbol": "{symbol}", "timeframe": "{timeframe}", "days_of_data": 30, '
        '"epochs": 3}\''
    )
    lines = [
        f"first forecast ({model_type} {symbol} {timeframe}):",
        f"  1. train: the first pipeline trains {info.first_model} (about a minute); again: {train}",
        "     (a model stays a candidate unless it beats the baselines on held-out hours)",
    ]
    if info.gateway_url:
        lines += [
            f"  2. list its versions and figures: botai models list {key}",
            f'  3. promote one: botai models promote {info.first_model} --reason "first forecast"',
            f'  4. predict: {predict}"model_type": "{model_type}", "horizon_hours": 24}}\'',
        ]
    else:
        lines.append(
            "  2-3. listing and promoting (botai models) need the HTTP gateway: set "
            "BOTAI_API_JWT_SECRET in .env and start again"
        )
    lines.append(
        f'  or forecast with the candidate as it is: {predict}"model_version": '
        f'"{info.first_model}", "horizon_hours": 24}}\''
    )
    return "\n".join(lines)
