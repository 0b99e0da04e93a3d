"""Fixtures of the backtest tests: the real BTC hours, read from ../shared/data."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from integrations.store import Store
from tests.backtest.helpers import SIX_MONTHS, read_cryptodatadownload


@pytest.fixture(scope="session")
def btc_hours(shared_data_dir: Path) -> pd.DataFrame:
    """All 20,111 real BTCUSD hourly candles (2017-07 to 2019-10), oldest first."""
    return read_cryptodatadownload(shared_data_dir / "Coinbase_BTCUSD_1h.csv")


@pytest.fixture(scope="session")
def btc_six_months(btc_hours: pd.DataFrame) -> pd.DataFrame:
    """The six months [2019-03-22, 2019-09-22) of real BTCUSD hours (4,416 bars)."""
    start = datetime.combine(SIX_MONTHS[0], datetime.min.time(), tzinfo=UTC)
    end = datetime.combine(SIX_MONTHS[1], datetime.min.time(), tzinfo=UTC)
    return btc_hours.loc[start : end - timedelta(hours=1)]


@pytest.fixture
def btc_store(mongo_block: Store, btc_six_months: pd.DataFrame) -> Store:
    """The "mongodb" block's fresh store holding the six months of real hours as BTCUSD 1h."""
    mongo_block.upsert_candles("BTCUSD", "1h", btc_six_months, source="csv:Coinbase_BTCUSD_1h.csv")
    return mongo_block


@pytest.fixture(scope="session")
def dask_address() -> Iterator[str]:
    """One local 2-process Dask cluster shared by the optimisation flow tests.

    Starting a cluster (and importing the task code in its workers) is most of an
    optimisation flow's time in tests; production flows start their own or use DASK_ADDRESS.
    """
    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    yield cluster.scheduler_address
    cluster.close()
