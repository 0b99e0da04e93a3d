"""TrainModelParams: the spec's validation messages (TC-ASYNC-002)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.schemas.training import TrainModelParams

pytestmark = pytest.mark.tc("TC-ASYNC-002")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("model_type", "invalid_model", "model_type must be one of: lstm, gru, transformer"),
        ("symbol", "INVALID", "Invalid trading symbol"),
        ("epochs", 0, "epochs must be between 1-1000"),
        ("epochs", 1001, "epochs must be between 1-1000"),
        ("batch_size", 33, "batch_size must be power of 2 (32, 64, 128, 256)"),
        ("days_of_data", 3, "days_of_data must be >= 7"),
        ("learning_rate", -0.1, "learning_rate must be > 0"),
        ("validation_split", 0.6, "validation_split must be between 0.0 and 0.5"),
        ("timeframe", "1d", "timeframe must be one of: 5m, 15m, 1h, 4h"),
        ("mode", "retrain", "scratch"),
    ],
)
def test_invalid_parameter_is_rejected_with_spec_message(field, value, message):
    with pytest.raises(ValidationError) as info:
        TrainModelParams(**{field: value})
    assert message in str(info.value)


def test_defaults_and_valid_values():
    p = TrainModelParams(model_type="gru", symbol="ETHUSDT", batch_size=1024, epochs=1000)
    assert (p.checkpoint_interval, p.resume, p.mode) == (10, False, "scratch")
    assert p.training_key == "gru+ETHUSDT+1h"
    assert TrainModelParams(validation_split=0.5).validation_split == 0.5
