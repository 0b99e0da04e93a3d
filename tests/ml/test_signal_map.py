"""The bulk-analysis signal map: one tile per symbol, placed, coloured and labelled from the
result (the layout the picture is painted from is checked; no pixels compared)."""

from __future__ import annotations

import io
import itertools
from datetime import UTC, datetime

import numpy as np
import pytest

from core.schemas.analysis import BulkAnalysisResult, FailedSymbol, SymbolAnalysis
from ml.signal_map import (
    SHADES,
    TILE_H,
    TILE_W,
    grid_shape,
    render_signal_map,
    signal_map_layout,
    tile_colour,
)

NOW = datetime(2026, 12, 1, tzinfo=UTC)
SIGNALS = ("BUY", "SELL", "HOLD")


def _analysis(symbol: str, signal: str, confidence: float, model: bool = False) -> SymbolAnalysis:
    return SymbolAnalysis(
        symbol=symbol,
        signal=signal,
        confidence=confidence,
        price=1.0,
        timestamp=NOW,
        indicators={},
        source="model" if model else "indicators",
        model_id="m1" if model else None,
        up_probability=(1 + confidence) / 2 if model else None,
    )


def _result(analyses: list[SymbolAnalysis], failed: list[FailedSymbol] = ()) -> BulkAnalysisResult:
    """A result as ``ml.analysis.summarize`` sorts it (by confidence, highest first)."""
    ranked = sorted(analyses, key=lambda a: (-a.confidence, a.symbol))
    return BulkAnalysisResult(
        timeframe="1h",
        total_symbols=len(analyses) + len(failed),
        symbols_analyzed=len(analyses),
        failed_symbols=list(failed),
        results=ranked,
        batches=1,
        elapsed_s=0.1,
    )


def _png_size(png: bytes) -> tuple[int, int]:
    from PIL import Image

    assert png.startswith(b"\x89PNG")
    return Image.open(io.BytesIO(png)).size


@pytest.mark.tc("TC-ASYNC-011", "TC-ASYNC-012")
def test_tiles_are_grouped_by_signal_then_confidence_and_failures_come_last() -> None:
    result = _result(
        [
            _analysis("AAAUSDT", "HOLD", 0.05),
            _analysis("BBBUSDT", "BUY", 0.40),
            _analysis("CCCUSDT", "SELL", 0.90, model=True),
            _analysis("DDDUSDT", "BUY", 0.80, model=True),
            _analysis("EEEUSDT", "SELL", 0.20),
        ],
        [
            FailedSymbol(
                symbol="INVALID1",
                reason="invalid symbol: not upper-case BASE+QUOTE such as BTCUSDT",
            )
        ],
    )
    layout = signal_map_layout(result)
    assert (layout.rows, layout.cols) == grid_shape(6) == (1, 6)
    assert [(p.tile.symbol, p.tile.kind, p.lines) for p in layout.tiles] == [
        ("DDDUSDT", "BUY", ("DDDUSDT", "0.80")),
        ("BBBUSDT", "BUY", ("BBBUSDT", "0.40")),
        ("CCCUSDT", "SELL", ("CCCUSDT", "0.90")),
        ("EEEUSDT", "SELL", ("EEEUSDT", "0.20")),
        ("AAAUSDT", "HOLD", ("AAAUSDT", "0.05")),
        ("INVALID1", "FAILED", ("INVALID1", "invalid", "symbol")),
    ]
    # left to right in one row; each tile's fill is its signal's shade at its confidence
    assert [p.col for p in layout.tiles] == list(range(6))
    assert [p.box[0] for p in layout.tiles] == [10 + c * TILE_W for c in range(6)]
    lo, hi = SHADES["BUY"]
    assert layout.tiles[0].fill == tuple(
        round(a + (b - a) * 0.8) for a, b in zip(lo, hi, strict=True)
    )
    assert layout.tiles[5].fill == (255, 255, 255)
    assert [p.bold for p in layout.tiles] == [True, False, True, False, False, False]
    assert layout.tiles[0].text_colour == (255, 255, 255)  # white on a dark tile
    assert layout.tiles[1].text_colour == (0, 0, 0)
    assert "BUY 2, SELL 2, HOLD 1, failed 1" in layout.title and "6 symbols" in layout.title
    assert _png_size(render_signal_map(result)) == (layout.width, layout.height)


@pytest.mark.tc("TC-ASYNC-011")
def test_darker_tiles_mean_higher_confidence() -> None:
    result = _result([_analysis("AAAUSDT", "BUY", 0.2), _analysis("BBBUSDT", "BUY", 0.9)])
    strong, weak = (p.fill for p in signal_map_layout(result).tiles)
    assert sum(strong) < sum(weak)
    assert tile_colour(signal_map_layout(result).tiles[0].tile) == strong


@pytest.mark.tc("TC-ASYNC-011")
def test_five_hundred_symbols_fit_one_readable_map() -> None:
    rng = np.random.default_rng(5)
    analyses = [
        _analysis(f"S{i:03d}USDT", SIGNALS[i % 3], float(rng.uniform(0, 1)), model=i % 4 == 0)
        for i in range(500)
    ]
    result = _result(analyses)
    layout = signal_map_layout(result)
    assert (layout.rows, layout.cols) == (32, 16)
    assert {p.tile.symbol for p in layout.tiles} == {a.symbol for a in analyses}
    # every box lies inside the picture, none overlaps the next one
    assert {(p.row, p.col) for p in layout.tiles} == {(i // 16, i % 16) for i in range(500)}
    assert all(0 <= p.box[0] < p.box[2] <= layout.width for p in layout.tiles)
    assert all(0 <= p.box[1] < p.box[3] <= layout.height for p in layout.tiles)
    assert all(a.box[2] < b.box[0] for a, b in itertools.pairwise(layout.tiles) if a.row == b.row)
    # at most 16 tiles of 60 pixels across: under 1,000 pixels, little shrunk on a run page
    assert TILE_W >= 55 and TILE_H >= 40
    assert _png_size(render_signal_map(result)) == (layout.width, layout.height) == (980, 1476)


@pytest.mark.tc("TC-ASYNC-011")
def test_symbols_below_min_confidence_are_counted_not_drawn() -> None:
    result = _result([_analysis("AAAUSDT", "BUY", 0.9)])
    result.below_min_confidence = 3
    result.total_symbols = 4
    layout = signal_map_layout(result)
    assert len(layout.tiles) == 1
    assert "3 below min_confidence not shown" in layout.title
