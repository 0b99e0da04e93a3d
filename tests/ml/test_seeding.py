"""A seeded training builds and shuffles the same way whatever else draws random numbers in
its process (pymongo's monitor threads draw from Python's ``random`` all the time)."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest

from ml.epoch_loop import EpochLoop
from ml.models import build_model, seed_this_thread


def _weights_after_seeding(model_type: str, draws_meanwhile: int) -> list[np.ndarray]:
    seed_this_thread(7)
    other = threading.Thread(target=lambda: [random.random() for _ in range(draws_meanwhile)])
    other.start()
    other.join()
    return build_model(model_type, 12, 5, units=8, seed=7).get_weights()


@pytest.mark.tc("TC-ASYNC-001")
@pytest.mark.parametrize("model_type", ["lstm", "gru", "transformer"])
def test_the_same_seed_builds_the_same_network_while_other_threads_draw(model_type):
    quiet = _weights_after_seeding(model_type, 0)
    busy = _weights_after_seeding(model_type, 3)
    assert len(quiet) == len(busy)
    for a, b in zip(quiet, busy, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.tc("TC-ASYNC-001")
def test_each_epoch_shuffles_from_the_seed_and_the_epoch_alone():
    class Config:
        seed = 3

    loop = EpochLoop.__new__(EpochLoop)
    loop.config = Config()
    orders = []
    for disturb in (False, True):
        order = []
        for epoch in (0, 1):
            if disturb:  # another thread drew during the previous epoch
                other = threading.Thread(target=lambda: np.random.random(5))
                other.start()
                other.join()
            loop.on_epoch_begin(epoch)
            order.append(np.random.permutation(10).tolist())
        orders.append(order)
    assert orders[0] == orders[1] and orders[0][0] != orders[0][1]
