"""One pymongo client per process per URI: stores share it, close() leaves it open."""

from __future__ import annotations

import pytest

from blocks.mongodb import MongoDBBlock
from integrations.store import Store, connect, shared_client


@pytest.mark.tc("TC-ASYNC-086")
def test_stores_of_one_uri_share_one_client(mongo_uri: str, mongo_db_name: str) -> None:
    block = MongoDBBlock(uri=mongo_uri, database=mongo_db_name)
    a, b = block.get_store(), block.get_store(retry_s=5)
    assert a.client is b.client is shared_client(mongo_uri)
    assert block.get_store(timeout_ms=1000).client is not a.client  # other timeouts: own client
    a.close()  # a shared client stays open for the other stores of the process
    assert b.ping() >= 0
    a.client.close()  # someone closed it anyway: the next store gets a fresh one
    c = block.get_store()
    assert c.client is not a.client and c.ping() >= 0


@pytest.mark.tc("TC-ASYNC-086")
def test_a_private_client_is_closed_by_its_store(mongo_uri: str) -> None:
    store = Store(connect(mongo_uri), "private")
    assert store.ping() >= 0
    store.close()
    assert store.client._closed  # noqa: SLF001 - pymongo has no public "closed" flag
