"""Parameters and results of the ingest-market-data flow and of the demo-data loader.

Shared by the flow signature (the Prefect UI renders a form and rejects bad input), the
HTTP gateway and the pure market-data layer (``integrations/market_data``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.echo import echo
from core.market import TIMEFRAMES, bar_length, check_symbol
from core.paths import check_data_path
from core.settings import load_settings

Timeframe = Literal["5m", "15m", "1h", "4h", "1d"]
Source = Literal["binance", "csv", "synthetic"]

#: Reasons a candle row is rejected by the quality checks.
RejectReason = Literal[
    "bad_timestamp",
    "nan_or_inf",
    "non_positive_price",
    "high_below_low",
    "open_close_outside_range",
    "negative_volume",
    "duplicate_bar",
    "malformed_row",
]


class RejectedRow(BaseModel):
    """One example of a rejected row: when, why and what it held (prices as read)."""

    reason: RejectReason
    open_time: datetime | None = None
    values: dict[str, Any] = Field(default_factory=dict)


class Gap(BaseModel):
    """A run of missing bars between two stored bars (``after`` and ``before`` exclusive)."""

    after: datetime
    before: datetime
    missing_bars: int


class QualityReport(BaseModel):
    """What the quality checks saw: rows in, rows kept, rejections by reason, gaps."""

    rows_in: int = Field(description="Rows read from the source.")
    rows_kept: int = Field(description="Rows that passed every check.")
    rejected: dict[str, int] = Field(
        default_factory=dict, description="Rejected rows per reason (one reason per row)."
    )
    examples: list[RejectedRow] = Field(
        default_factory=list, description="The first few rejected rows of each reason."
    )
    duplicates: int = Field(default=0, description="Rows dropped as repeats of a kept bar time.")
    gaps: int = Field(default=0, description="Runs of missing bars among the kept rows.")
    missing_bars: int = Field(default=0, description="Bars missing inside the kept range.")
    gap_examples: list[Gap] = Field(default_factory=list, description="The first few gaps.")
    first: datetime | None = None
    last: datetime | None = None

    @property
    def rows_rejected(self) -> int:
        """Total rejected rows."""
        return sum(self.rejected.values())

    def merge(self, other: QualityReport, max_examples: int = 20) -> QualityReport:
        """Return the sum of two reports (e.g. parse-time and check-time rejections)."""
        rejected = dict(self.rejected)
        for k, v in other.rejected.items():
            rejected[k] = rejected.get(k, 0) + v
        return QualityReport(
            rows_in=max(self.rows_in, other.rows_in),
            rows_kept=other.rows_kept,
            rejected=rejected,
            examples=(self.examples + other.examples)[:max_examples],
            duplicates=self.duplicates + other.duplicates,
            gaps=other.gaps,
            missing_bars=other.missing_bars,
            gap_examples=other.gap_examples,
            first=other.first,
            last=other.last,
        )


class IngestParameters(BaseModel):
    """What to ingest: a source, symbols, a timeframe and a time range."""

    model_config = ConfigDict(extra="forbid")

    source: Source = Field(default="binance", description="binance, csv or synthetic.")
    symbols: list[str] = Field(
        default_factory=lambda: ["BTCUSDT"],
        description="Symbols such as BTCUSDT. For csv: the name to store the file under "
        "(default: the symbol column of a CryptoDataDownload file).",
    )
    timeframe: Timeframe = Field(default="1h", description="Bar length of the source data.")
    days: int | None = Field(
        default=30, ge=1, le=3650, description="Days back from now (ignored when start is set)."
    )
    start: datetime | None = Field(default=None, description="Range start (UTC, inclusive).")
    end: datetime | None = Field(default=None, description="Range end (UTC, exclusive); now.")
    csv_path: str | None = Field(
        default=None,
        description="CSV file to import (source csv); it must lie in a data folder "
        "(BOTAI_DATA_DIRS; default the shared data folder and <state_dir>/data).",
    )
    seed: int = Field(default=42, description="Random seed of the synthetic generator.")
    resample_to: list[Timeframe] = Field(
        default_factory=list, description="Coarser timeframes (4h, 1d) to derive and store too."
    )

    @field_validator("symbols")
    @classmethod
    def _check_symbols(cls, v: list[str]) -> list[str]:
        for s in v:
            check_symbol(s)
        if len(set(v)) != len(v):
            raise ValueError("symbols must not repeat")
        return v

    @field_validator("csv_path")
    @classmethod
    def _confine_csv_path(cls, v: str | None) -> str | None:
        """The file must lie in a configured data folder; returns its resolved path."""
        if v is None:
            return v
        return str(check_data_path(v, load_settings().allowed_data_dirs, "file"))

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            return v.replace(tzinfo=UTC)
        return v

    @model_validator(mode="after")
    def _check_combination(self) -> IngestParameters:
        if self.source == "csv" and not self.csv_path:
            raise ValueError("csv_path is required when source is csv")
        if self.source != "csv" and not self.symbols:
            raise ValueError("symbols must name at least one symbol, e.g. ['BTCUSDT']")
        if self.source == "csv" and len(self.symbols) > 1:
            raise ValueError("a csv file holds one symbol: give at most one in symbols")
        if self.start is None and self.days is None and self.source != "csv":
            raise ValueError("give days or start")
        if self.start and self.end and self.start >= self.end:
            raise ValueError("start must be before end")
        for tf in self.resample_to:
            if tf not in ("4h", "1d"):
                raise ValueError(f"resample_to supports 4h and 1d (got {echo(tf)})")
            if bar_length(tf) <= bar_length(self.timeframe):
                raise ValueError(
                    f"resample_to {tf} must be coarser than timeframe {self.timeframe}"
                )
        return self

    def time_range(self, now: datetime | None = None) -> tuple[datetime | None, datetime | None]:
        """Return (start, end) in UTC; (None, None) for a csv import without bounds."""
        now = now or datetime.now(UTC)
        if self.source == "csv" and self.start is None:
            return None, self.end
        end = self.end or now
        start = self.start or end - self.days * (bar_length("1d"))  # type: ignore[operator]
        return start, end


class SymbolIngestResult(BaseModel):
    """Outcome for one (symbol, timeframe) written to the store."""

    symbol: str
    timeframe: str
    source: str = Field(description="binance, csv:<file> or synthetic.")
    inserted: int
    updated: int
    unchanged: int
    rejected: int
    quality: QualityReport


class IngestResult(BaseModel):
    """Result of one ingest-market-data run."""

    source: Source
    results: list[SymbolIngestResult]

    @property
    def total_inserted(self) -> int:
        return sum(r.inserted for r in self.results)


class DemoDataReport(BaseModel):
    """What the run command loaded as demo data, and from where."""

    source: Literal["binance", "synthetic"] = Field(description="Where the demo symbols came from.")
    reason: str = Field(description="Why that source: Binance reachable or not.")
    symbols: list[str]
    timeframe: str
    days: int
    results: list[SymbolIngestResult]
    real_csv: SymbolIngestResult | None = Field(
        default=None, description="The real Coinbase BTCUSD 1h file, when it was found."
    )

    def summary(self) -> str:
        """One line per stored series, e.g. 'BTCUSDT 1h: 2160 bars from synthetic'."""
        lines = [f"demo data from {self.source} ({self.reason})"]
        for r in [*self.results, *([self.real_csv] if self.real_csv else [])]:
            lines.append(
                f"  {r.symbol} {r.timeframe}: {r.quality.rows_kept} bars from {r.source} "
                f"(+{r.inserted} new, {r.rejected} rejected)"
            )
        return "\n".join(lines)


__all__ = [
    "TIMEFRAMES",
    "DemoDataReport",
    "Gap",
    "IngestParameters",
    "IngestResult",
    "QualityReport",
    "RejectedRow",
    "SymbolIngestResult",
]
