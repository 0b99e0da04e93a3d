"""Fixtures of the ML tests: generated candles with a known, learnable signal (the
generators live in ``tests.ml.helpers``)."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from tests.ml.helpers import make_candles

os.environ.setdefault("KERAS_BACKEND", "jax")


@pytest.fixture
def signal_candles() -> pd.DataFrame:
    """1,000 hourly bars with an AR(1) momentum signal."""
    return make_candles(1000)
