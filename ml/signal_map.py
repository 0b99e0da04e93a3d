"""The bulk-analysis signal map: one coloured tile per symbol, as a PNG (pure: no Prefect).

Tiles are grouped BUY, SELL, HOLD, then the symbols that failed, each group by confidence
(highest first), read left to right and top to bottom. A tile's colour is its signal (green
BUY, red SELL, grey HOLD, white failed), its shade the confidence (darker = stronger); it
shows the symbol and the confidence (a failed one its reason), in bold when the deployed
model gave the signal (else the indicators did). Symbols left out by ``min_confidence`` are
counted in the title, not drawn. 500 symbols make 20 rows of 25 tiles of 60 x 44 pixels.

Speed: 500 tiles are 1,000 short texts. Drawn with matplotlib that took 3 s on this machine
(glyph by glyph); so the map is laid out here (:func:`signal_map_layout`, the data the
tests check) and painted with Pillow (matplotlib's own dependency) in DejaVu Sans (the font
matplotlib ships): about a tenth of that (docs/ml.md).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Literal

from core.schemas.analysis import BulkAnalysisResult

if TYPE_CHECKING:
    from PIL import ImageFont

TileKind = Literal["BUY", "SELL", "HOLD", "FAILED"]
ORDER: tuple[TileKind, ...] = ("BUY", "SELL", "HOLD", "FAILED")
RGB = tuple[int, int, int]

#: Tile colour at confidence 0 and at confidence 1, per kind; failed tiles are white.
SHADES: dict[TileKind, tuple[RGB, RGB]] = {
    "BUY": ((219, 242, 219), (13, 115, 38)),
    "SELL": ((250, 222, 219), (166, 20, 20)),
    "HOLD": ((237, 237, 237), (140, 140, 140)),
    "FAILED": ((255, 255, 255), (255, 255, 255)),
}
TILE_W, TILE_H, GAP, MARGIN, HEADER = 60, 44, 2, 10, 58
MIN_WIDTH = 780
TEXT_SIZES = (11, 10, 9, 8, 7)


@dataclass(frozen=True)
class SignalTile:
    """One symbol on the map: its signal (or FAILED), confidence, and where it came from."""

    symbol: str
    kind: TileKind
    confidence: float | None
    from_model: bool
    note: str


@dataclass(frozen=True)
class PlacedTile:
    """A tile where it is drawn: box ``(x0, y0, x1, y1)`` in pixels, fill, text lines."""

    tile: SignalTile
    row: int
    col: int
    box: tuple[int, int, int, int]
    fill: RGB
    lines: tuple[str, ...]
    text_colour: RGB
    bold: bool


@dataclass(frozen=True)
class SignalMapLayout:
    """The whole map: its size in pixels, title, and every tile in drawing order."""

    width: int
    height: int
    rows: int
    cols: int
    title: str
    tiles: list[PlacedTile]


def signal_tiles(result: BulkAnalysisResult) -> list[SignalTile]:
    """The tiles of ``result`` in map order: BUY, SELL, HOLD (each by confidence, highest
    first, ties by symbol), then the failed symbols (note: their reason up to its first colon).

    Returns:
        one :class:`SignalTile` per result and per failed symbol.
    """
    ranked = sorted(result.results, key=lambda a: (ORDER.index(a.signal), -a.confidence, a.symbol))
    tiles = [
        SignalTile(a.symbol, a.signal, a.confidence, a.source == "model", f"{a.confidence:.2f}")
        for a in ranked
    ]
    tiles += [  # the reason's head ("invalid symbol: not upper-case..." -> "invalid symbol")
        SignalTile(f.symbol, "FAILED", None, False, f.reason.split(":", 1)[0])
        for f in result.failed_symbols
    ]
    return tiles


def grid_shape(n: int) -> tuple[int, int]:
    """Rows and columns for ``n`` tiles: 10 columns up to 40 tiles, else 16 (500 -> 32 x 16),
    so the map is under 1,000 pixels wide and the run page (about 850 pixels across on a
    1400-pixel screen) shrinks it little: tiles grow downwards, the page scrolls."""
    cols = 10 if n <= 40 else 16
    cols = max(1, min(cols, n))
    return max(1, math.ceil(n / cols)), cols


def tile_colour(tile: SignalTile) -> RGB:
    """The colour of ``tile``: its kind's shade at its confidence (0 -> light, 1 -> dark)."""
    low, high = SHADES[tile.kind]
    c = min(1.0, max(0.0, tile.confidence or 0.0))
    return tuple(round(lo + (hi - lo) * c) for lo, hi in zip(low, high, strict=True))  # type: ignore[return-value]


def _lines(tile: SignalTile) -> tuple[str, ...]:
    if tile.kind == "FAILED" and len(tile.note) > 10 and " " in tile.note:
        return (tile.symbol, *tile.note.split(" ", 1))  # "too little data" on two lines
    return (tile.symbol, tile.note)


def map_title(result: BulkAnalysisResult, tiles: list[SignalTile]) -> str:
    """The map's title: how many symbols, of which timeframe, and the count of each signal."""
    counts = {k: sum(t.kind == k for t in tiles) for k in ORDER}
    left_out = (
        f", {result.below_min_confidence} below min_confidence not shown"
        if result.below_min_confidence
        else ""
    )
    return (
        f"Signals of {result.total_symbols} symbols ({result.timeframe}): BUY {counts['BUY']}, "
        f"SELL {counts['SELL']}, HOLD {counts['HOLD']}, failed {counts['FAILED']}{left_out}"
    )


def signal_map_layout(result: BulkAnalysisResult) -> SignalMapLayout:
    """Where every tile of ``result`` goes, its colour and its text (see the module docstring).

    Returns:
        a :class:`SignalMapLayout`.
    """
    tiles = signal_tiles(result)
    rows, cols = grid_shape(len(tiles))
    placed = []
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        x0, y0 = MARGIN + c * TILE_W, HEADER + r * TILE_H
        fill = tile_colour(t)
        dark = t.kind in ("BUY", "SELL") and (t.confidence or 0.0) > 0.55
        text = (255, 255, 255) if dark else (115, 115, 115) if t.kind == "FAILED" else (0, 0, 0)
        box = (x0, y0, x0 + TILE_W - GAP, y0 + TILE_H - GAP)
        placed.append(PlacedTile(t, r, c, box, fill, _lines(t), text, t.from_model))
    width = max(MIN_WIDTH, 2 * MARGIN + cols * TILE_W)
    return SignalMapLayout(
        width, HEADER + rows * TILE_H + MARGIN, rows, cols, map_title(result, tiles), placed
    )


@cache
def _font(size: int, bold: bool) -> ImageFont.FreeTypeFont:
    """DejaVu Sans from matplotlib's data folder (no font search, same on every machine)."""
    from pathlib import Path

    import matplotlib
    from PIL import ImageFont

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)


def _fitting(text: str, bold: bool, width: int) -> ImageFont.FreeTypeFont:
    for size in TEXT_SIZES:
        font = _font(size, bold)
        if font.getlength(text) <= width:
            return font
    return _font(TEXT_SIZES[-1], bold)


def render_signal_map(result: BulkAnalysisResult) -> bytes:
    """The signal map of ``result`` as PNG bytes (layout: :func:`signal_map_layout`)."""
    from PIL import Image, ImageDraw

    layout = signal_map_layout(result)
    image = Image.new("RGB", (layout.width, layout.height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((MARGIN, 8), layout.title, font=_font(14, False), fill=(0, 0, 0))
    x = MARGIN
    for kind in ORDER:
        label = "failed" if kind == "FAILED" else kind
        draw.rectangle((x, 33, x + 14, 47), fill=SHADES[kind][1], outline=(150, 150, 150))
        draw.text((x + 19, 34), label, font=_font(11, False), fill=(0, 0, 0))
        x += 19 + int(_font(11, False).getlength(label)) + 14
    draw.text(
        (x + 6, 34),
        "darker = more confident; bold = the deployed model's signal, else the indicators'",
        font=_font(11, False),
        fill=(70, 70, 70),
    )
    for p in layout.tiles:
        draw.rectangle(
            p.box, fill=p.fill, outline=(190, 190, 190) if p.tile.kind == "FAILED" else None
        )
        cx = (p.box[0] + p.box[2]) / 2
        step = (p.box[3] - p.box[1]) / (len(p.lines) + 1)
        for k, line in enumerate(p.lines):
            font = _fitting(line, p.bold, TILE_W - GAP - 4)
            draw.text(
                (cx, p.box[1] + step * (k + 1)), line, font=font, fill=p.text_colour, anchor="mm"
            )
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()
