"""The reliability tests' stack (``tests.reliability.stack``), started once per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.reliability.stack import Stack, running_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The whole stack (see ``tests.reliability.stack``); every process is stopped at the end."""
    with running_stack(tmp_path_factory.mktemp("rel") / "state") as stack:
        yield stack
