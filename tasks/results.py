"""Every job's result where every caller can read it (TC-ASYNC-011 to 013, 098).

A flow ends with ``return save_task_result(result, store)``. That:

* writes one ``task_results`` document keyed by the flow run id (the gateway's task id):
  ``{task_id, flow_name, result_type, result, run_count, saved_at}``. It is a whole-document
  replace with upsert, so a re-run of the same flow run (crash recovery, ``prefect flow-run
  retry``) replaces the document and never adds a second one. ``GET /api/tasks/{id}``
  returns it;
* publishes an artifact on the run's page in the Prefect UI (key ``<flow-name>-result``):
  bulk-analysis as markdown tables sorted by confidence with the failed symbols and their
  reasons, predict-price as markdown with one row per forecast hour with its interval and
  confidence, any other job as a table artifact of its headline fields;
* returns ``result`` unchanged, so the flow's return value is what Prefect persists as the
  flow run's result for ``prefect`` CLI and flow-run API users (flow results are persisted
  as JSON: see ``deployments.services.prefect_env``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVar

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff
from pydantic import BaseModel

from core.exceptions import BotAIError
from core.schemas.analysis import BulkAnalysisResult, PredictPriceResult
from integrations.store import Store
from tasks.retry import retry_only_retryable

R = TypeVar("R")

#: Environment of the worker and its flow runs (``deployments.services.prefect_env`` sets the
#: same): a flow run's return value is persisted as JSON (readable with ``prefect`` and the
#: flow-run API), its tasks' values are not (they hold candles and models; nothing reads them).
RESULT_PERSISTENCE_ENV: dict[str, str] = {
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
    "PREFECT_TASKS_DEFAULT_PERSIST_RESULT": "false",
    "PREFECT_RESULTS_DEFAULT_SERIALIZER": "json",
}

#: Rows of a generic result table; longer lists are summarised by their length.
MAX_ROWS = 500


def save_task_result(result: R, store: Store | None = None, *, best_effort: bool = False) -> R:
    """Store ``result`` under this flow run's id and show it on the run's page.

    Call it once, at the end of a flow run (``return save_task_result(result, store)``).

    Args:
        result: the flow's return value (a pydantic model, a dict, or None).
        store: the flow's store; None loads the ``mongodb`` block.
        best_effort: log instead of raising when the store cannot take the result (the
            health check, whose job is to report a store that is down).

    Returns:
        ``result`` unchanged.

    Raises:
        StoreUnavailableError: the store did not answer after the task's retries.
        StoreError: the store refused the write.
    """
    task_id = str(flow_run.get_id())
    flow_name = flow_run.get_flow_name() or "flow"
    body = _jsonable(result)
    doc = {
        "task_id": task_id,
        "flow_name": flow_name,
        "result_type": type(result).__name__,
        "result": body,
        "run_count": int(flow_run.get_run_count() or 1),
        "saved_at": datetime.now(UTC),
    }
    try:
        if store is None:
            from blocks.loader import load_store

            store = load_store()
        # best effort: one attempt (a health check must not wait out a store that is down)
        if best_effort:
            write_task_result.fn(store, doc, retry=False)
        else:
            write_task_result(store, doc)
    except BotAIError as e:
        if not best_effort:
            raise
        get_run_logger().warning("result not stored: %s", e)
    key, description = f"{_slug(flow_name)}-result", f"Result of {flow_name} (task {task_id})"
    try:
        if isinstance(result, BulkAnalysisResult | PredictPriceResult):
            markdown = render_markdown(flow_name, task_id, result, body)
            create_markdown_artifact(markdown=markdown, key=key, description=description)
        else:  # a table, beside any markdown summary the flow publishes itself
            create_table_artifact(table=generic_rows(body), key=key, description=description)
    except Exception as e:  # noqa: BLE001 - the stored result is the record; the page is a view
        get_run_logger().warning("result artifact not published: %s", type(e).__name__)
    return result


@task(
    name="save-task-result",
    retries=3,
    retry_delay_seconds=exponential_backoff(2),
    retry_condition_fn=retry_only_retryable,
    cache_policy=NONE,
)
def write_task_result(store: Store, doc: dict[str, Any], *, retry: bool = True) -> None:
    """Replace (or insert) the ``task_results`` document of ``doc["task_id"]``.

    Args:
        retry: False makes one store attempt (see :meth:`Jobs.task_result_save`).

    Raises:
        StoreUnavailableError (retried): the store did not answer or dropped the connection.
        StoreError: the store refused the document.
    """
    store.jobs.task_result_save(doc, retry=retry)


def _jsonable(result: Any) -> Any:
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    if result is None or isinstance(result, dict | list | str | int | float | bool):
        from pydantic import TypeAdapter

        return TypeAdapter(Any).dump_python(result, mode="json")
    return {"value": str(result)}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-") or "flow"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    text = f"{value:.6g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(flow_name: str, task_id: str, result: Any, body: Any) -> str:
    """The artifact text of a result.

    Returns:
        markdown: a table per result kind (see the module docstring).
    """
    head = f"# {flow_name} result\n\nTask `{task_id}`\n\n"
    if isinstance(result, BulkAnalysisResult):
        return head + _bulk_markdown(result)
    if isinstance(result, PredictPriceResult):
        return head + _prediction_markdown(result)
    return head + _table(["field", "value"], [[r["field"], r["value"]] for r in generic_rows(body)])


def _bulk_markdown(r: BulkAnalysisResult) -> str:
    rows = [
        [i, a.symbol, a.signal, a.confidence, a.price, a.source, a.model_id or ""]
        for i, a in enumerate(sorted(r.results, key=lambda a: -a.confidence), start=1)
    ]
    text = (
        f"{r.symbols_analyzed} of {r.total_symbols} symbols analysed ({r.timeframe}), "
        f"{len(r.failed_symbols)} failed, {r.below_min_confidence} below min_confidence; "
        f"{r.elapsed_s:.1f} s.\n\n## Signals by confidence\n\n"
    )
    text += _table(
        ["#", "symbol", "signal", "confidence", "price", "source", "model"], rows[:MAX_ROWS]
    )
    if r.failed_symbols:
        text += "\n\n## Failed symbols\n\n" + _table(
            ["symbol", "reason"], [[f.symbol, f.reason] for f in r.failed_symbols[:MAX_ROWS]]
        )
    return text + "\n"


def _prediction_markdown(r: PredictPriceResult) -> str:
    level = f"{r.interval_level:.0%}"
    text = (
        f"{r.symbol} {r.model_type} (model `{r.model_id}`), origin {r.origin_time:%Y-%m-%d %H:%M} "
        f"UTC, last price {r.last_price:.6g}, probability of a rise {r.up_probability:.3f}"
    )
    after = r.coverage_after_training
    if after is not None:
        se = f" ± {after.standard_error:.1%}" if after.standard_error is not None else ""
        text += (
            f"; after the model's training window the {level} interval contained "
            f"{after.coverage:.1%}{se} of {after.pairs} (origin, hour) pairs"
        )
    else:
        text += (
            f"; coverage after the training window: not measured ({r.coverage_after_training_note})"
        )
    if r.recent_calibration_fit is not None:
        text += (
            f"; recent calibration fit (hours the model may have trained on, not a forecast "
            f"check): {r.recent_calibration_fit.coverage:.1%}"
        )
    text += f".\n\n## Forecast per hour ({level} interval)\n\n"
    rows = [
        [p.hour, f"{p.timestamp:%Y-%m-%d %H:%M}", p.predicted_price, p.lower, p.upper, p.confidence]
        for p in r.predictions
    ]
    return (
        text
        + _table(["hour", "time (UTC)", "predicted", "lower", "upper", "confidence"], rows)
        + "\n"
    )


def generic_rows(body: Any) -> list[dict[str, Any]]:
    """Rows ``{field, value}`` of a result's headline fields (nested fields one level deep as
    ``metrics.sharpe_ratio``; lists as their length)."""
    if not isinstance(body, dict):
        return [{"field": "value", "value": _cell(body)}]
    rows: list[dict[str, Any]] = []
    for key, value in body.items():
        if isinstance(value, dict):
            rows += [
                {"field": f"{key}.{sub}", "value": _cell(_summary(v))} for sub, v in value.items()
            ]
        else:
            rows.append({"field": key, "value": _cell(_summary(value))})
    return rows[:MAX_ROWS]


def _summary(value: Any) -> Any:
    if isinstance(value, list):
        return f"{len(value)} items"
    if isinstance(value, dict):
        return f"{len(value)} fields"
    return value
