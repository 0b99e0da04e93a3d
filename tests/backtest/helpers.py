"""Helpers of the backtest tests (and of others reading the real BTC hours)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd

from integrations.market_data.csv_source import read_candles_csv

#: The six months the flow tests run on: [2019-03-22, 2019-09-22), 184 calendar days of hours
#: (the spec's 2024-05-22 to 2024-11-22 shifted into the real data).
SIX_MONTHS = (date(2019, 3, 22), date(2019, 9, 22))


def read_cryptodatadownload(path: Path) -> pd.DataFrame:
    """The CryptoDataDownload CSV at ``path`` through the product's reader, oldest first.

    Returns columns open, high, low, close, volume (base asset), quote_volume, indexed by
    UTC open time.
    """
    return read_candles_csv(path).frame.sort_index()
