"""Field types shared by the flows' parameter models, each with the spec's message."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

from core.echo import echo
from core.market import check_symbol

MODEL_TYPES = ("lstm", "gru", "transformer")


def _model_type(v: str) -> str:
    if v not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of: {', '.join(MODEL_TYPES)} (got {echo(v)})")
    return v


#: A well-formed trading symbol ("Invalid trading symbol ..." otherwise; InvalidInputError is a ValueError).
TradingSymbol = Annotated[str, AfterValidator(check_symbol)]
#: lstm, gru or transformer ("model_type must be one of: lstm, gru, transformer").
ModelType = Annotated[str, AfterValidator(_model_type)]
