"""The pictures on the run pages, as a user sees them in the Prefect UI in headless Chromium.

The stack's own Prefect server (``deployments.services.start_prefect_server``: the real UI
and its API behind the stack's auth string) on a free port and the session's nx-27017 store;
one backtest, one grid optimisation with a holdout and one bulk analysis of 50 symbols run
against it (in this process, on generated candles). For each run the test logs in through the
UI's login form as a user would, opens the run's page, its Artifacts tab, and every markdown
artifact listed there, and checks that every picture was decoded by the browser
(``naturalWidth`` > 0) at the size of the PNG the run published. Screenshots of each artifact
page and picture are saved under the test's tmp folder.

Chromium is the OS package (/usr/bin/chromium, driven by the ``playwright`` package); no
browser is downloaded. Without it the test is skipped, saying so.
"""

from __future__ import annotations

import base64
import io
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from core.settings import Settings
from deployments import secrets, services
from integrations.embedded_mongo import free_port

pytestmark = pytest.mark.tc("TC-ASYNC-074", "TC-ASYNC-067", "TC-ASYNC-011")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RANGE = (date(2026, 9, 1), date(2026, 11, 1))
SYMBOLS = [f"{a}{b}USDT" for a in "ABCDEFGH" for b in "KLMNOPQ"][:50]
IMAGE_RE = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)\)")


@dataclass
class Runs:
    """The stack's settings and auth string, and the flow run id of each job."""

    settings: Settings
    auth: str
    run_ids: dict[str, str]

    @property
    def ui_url(self) -> str:
        return self.settings.prefect_ui_url


def _png_size(data: str) -> tuple[int, int]:
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(data))).size


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, mongo_uri: str) -> Iterator[Runs]:
    """The stack's Prefect server with one run of each job; stopped at the end."""
    from prefect.task_runners import ThreadPoolTaskRunner

    from blocks.mongodb import MongoDBBlock
    from core.schemas.analysis import BulkAnalysisParams
    from core.schemas.backtest import BacktestParameters, OptimizeParameters
    from deployments.up import prefect_api
    from flows.backtest_strategy import backtest_strategy
    from flows.bulk_analysis import bulk_analysis
    from flows.optimize_strategy import optimize_strategy
    from integrations.market_data.synthetic import generate_candles, synthetic_range
    from integrations.store import Store, connect

    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install the OS package chromium to check run pages")
    settings = Settings(
        state_dir=tmp_path_factory.mktemp("pages") / "state",
        prefect_port=free_port(),
        mongodb_port=free_port(),
    )
    env = services.prefect_env(
        settings, {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    )
    database = f"pages_{uuid.uuid4().hex[:8]}"
    client = connect(mongo_uri)
    store = Store(client, database)
    store.ensure_indexes()
    start = datetime.combine(RANGE[0], datetime.min.time(), tzinfo=UTC)
    end = datetime.combine(RANGE[1], datetime.min.time(), tzinfo=UTC)
    store.upsert_candles(
        "BTCUSDT", "1h", synthetic_range("BTCUSDT", "1h", start, end), source="synthetic"
    )
    for s in SYMBOLS:
        store.upsert_candles(s, "1h", generate_candles(s, "1h", start, 300), source="synthetic")
    try:
        services.start_prefect_server(settings, env)
        with prefect_api(settings):
            MongoDBBlock(uri=mongo_uri, database=database).save("mongodb", overwrite=True)
            window = {"symbol": "BTCUSDT", "start_date": RANGE[0], "end_date": RANGE[1]}
            backtest = backtest_strategy(BacktestParameters(**window))
            # 24 sets (< one Dask batch) are evaluated in the flow's process: no cluster needed
            optimize = optimize_strategy.with_options(
                task_runner=ThreadPoolTaskRunner(max_workers=2)
            )(OptimizeParameters(**window, parameter_variations=24, holdout_pct=25))
            bulk = bulk_analysis(BulkAnalysisParams(symbols=[*SYMBOLS, "INVALID1"]))
        yield Runs(
            settings,
            secrets.prefect_auth_string(settings),
            {"backtest": backtest.task_id, "optimize": optimize.task_id, "bulk": bulk.task_id},
        )
    finally:
        services.stop_all(settings, timeout_s=10)
        client.drop_database(database)
        client.close()


@pytest.fixture(scope="module")
def page(runs: Runs) -> Iterator[object]:
    """A Chromium page logged in to the UI through its login form, as a user does."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1400, "height": 1000})
            pg.set_default_timeout(60_000)
            pg.goto(f"{runs.ui_url}/login")
            pg.get_by_placeholder("admin:pass").fill(runs.auth)
            pg.get_by_role("button", name="Login").click()
            pg.wait_for_url(re.compile(r"/dashboard"))
            yield pg
        finally:
            browser.close()


def _artifact_pictures(page, runs: Runs, job: str, shots: Path) -> dict[str, list[dict]]:
    """Open ``job``'s run page, its Artifacts tab, and each markdown artifact listed there.

    Returns:
        per artifact key: each <img> of the artifact with its natural size and its PNG's
        size as published (decoded from the artifact's markdown through the API).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterId

    from deployments.up import prefect_api

    page.goto(f"{runs.ui_url}/runs/flow-run/{runs.run_ids[job]}")
    page.get_by_text("Artifacts", exact=True).click()  # the run page's Artifacts tab
    cards = page.locator("a[href^='/artifacts/artifact/']", has_text="markdown")
    cards.first.wait_for()
    links = [cards.nth(i).get_attribute("href") for i in range(cards.count())]
    found: dict[str, list[dict]] = {}
    for link in links:
        artifact_id = link.rsplit("/", 1)[-1]
        with prefect_api(runs.settings), get_client(sync_client=True) as client:
            (artifact,) = client.read_artifacts(
                artifact_filter=ArtifactFilter(id=ArtifactFilterId(any_=[uuid.UUID(artifact_id)]))
            )
        published = [_png_size(m) for m in IMAGE_RE.findall(artifact.data or "")]
        page.goto(f"{runs.ui_url}{link}")
        page.locator(".markdown-renderer").first.wait_for()
        images = page.locator(".markdown-renderer img")
        if published:
            images.nth(len(published) - 1).wait_for()
        page.wait_for_function(
            "n => [...document.querySelectorAll('.markdown-renderer img')]"
            ".filter(i => i.complete).length >= n",
            arg=len(published),
        )
        seen = []
        for i in range(images.count()):
            img = images.nth(i)
            img.scroll_into_view_if_needed()
            seen.append(
                {
                    "natural": tuple(img.evaluate("e => [e.naturalWidth, e.naturalHeight]")),
                    "published": published[i] if i < len(published) else None,
                }
            )
            img.screenshot(path=str(shots / f"{job}-{artifact.key}-{i}.png"))
            page.screenshot(path=str(shots / f"{job}-{artifact.key}-page-{i}.png"))
        found[artifact.key] = seen
    return found


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        ("backtest", {"backtest-rsi-btcusdt-1h": 1}),  # trades, equity and drawdown
        ("optimize", {"optimize-grid-rsi-btcusdt": 2}),  # heatmap, best set's chart
        ("bulk", {"bulk-analysis-signal-map-1h": 1, "bulk-analysis-result": 0}),
    ],
)
def test_run_page_pictures_load_in_chromium(
    runs: Runs, page, job: str, expected: dict[str, int], tmp_path: Path
) -> None:
    found = _artifact_pictures(page, runs, job, tmp_path)
    assert {k: len(v) for k, v in found.items()} == expected, found
    for key, images in found.items():
        for img in images:
            width, height = img["natural"]
            assert width > 0 and height > 0, f"{key}: a picture did not load"
            assert img["natural"] == img["published"], key  # decoded whole, as published
    assert list(tmp_path.glob("*.png"))
