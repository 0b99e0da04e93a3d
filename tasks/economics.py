"""Prefect task publishing a model's economic evaluation (``ml.economics``) as an artifact:
the figures with their standard errors and the equity curves of the model against
buy-and-hold and logistic regression (PNG inline, also under ``<state_dir>/economics/``)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from backtest.charts import render_equity_comparison
from core.schemas.economics import EconomicEvaluation
from core.settings import Settings
from ml.economics import economics_markdown
from tasks.backtest import _png_markdown


@task(name="publish-economics-artifact", cache_policy=NONE)
def publish_economics_artifact(
    evaluation: EconomicEvaluation, key: str, task_id: str, settings: Settings, title: str
) -> str:
    """Markdown artifact ``key``: the evaluation's table and its equity-curve chart.

    Returns:
        the path of the PNG written under ``<state_dir>/economics/``.
    """
    m = evaluation.strategy("model").total_return_pct
    b = evaluation.strategy("buy_and_hold").total_return_pct
    png = render_equity_comparison(
        evaluation.equity_curves,
        f"{title}: model {m.value:+.1f}% vs buy & hold {b.value:+.1f}% after fees",
        evaluation.initial_capital,
    )
    folder = settings.state_dir / "economics"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{task_id}.png"
    path.write_bytes(png)
    create_markdown_artifact(
        economics_markdown(evaluation, title)
        + "\n## Equity after fees: model, buy-and-hold, logistic regression\n\n"
        + _png_markdown(png, "equity curves of the model, buy-and-hold and logistic regression")
        + f"\n\nChart file: `{path}`\n",
        key=key,
        description=f"{title}: what the model's signals earn after fees on held-out bars",
    )
    get_run_logger().info("economic evaluation chart written to %s (%d bytes)", path, len(png))
    return str(path)
