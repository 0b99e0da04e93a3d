"""MongoDB storage: the one package that owns collection names, their indexes and accessors.

The code speaks only pymongo, so the embedded nx-27017 store and a real MongoDB (or Atlas)
are interchangeable by URI. Datetimes are stored as BSON dates in UTC and read back
timezone-aware (clients are opened with ``tz_aware=True``).

Layout:

* :mod:`~integrations.store.schema`: collection names (:class:`C`), :data:`INDEXES`, retention.
* :mod:`~integrations.store.boundary`: the one error boundary (pymongo errors converted once,
  temporary ones retried within a budget) and the clients (:func:`connect`, :func:`shared_client`).
* one repository per domain: :mod:`.market`, :mod:`.models`, :mod:`.jobs`, :mod:`.monitoring`,
  :mod:`.improvement`, :mod:`.usage`, :mod:`.dead_letters`, :mod:`.blobs` (GridFS files).
* :mod:`.candles` (the candle document schema and its frames) and :mod:`.tails` (the derived
  ``candle_tails`` that serve batched candle reads), used by :mod:`.market`.
* :mod:`~integrations.store.facade`: :class:`Store`, which holds them.
"""

from integrations.store.boundary import (
    Boundary,
    DuplicateKeyStoreError,
    close_shared_clients,
    connect,
    is_temporary,
    shared_client,
)
from integrations.store.candles import CANDLE_FIELDS, FRAME_COLUMNS
from integrations.store.facade import Store
from integrations.store.market import UpsertReport
from integrations.store.schema import EXPIRING, INDEXES, C, Retention

__all__ = [
    "CANDLE_FIELDS",
    "EXPIRING",
    "FRAME_COLUMNS",
    "INDEXES",
    "Boundary",
    "C",
    "DuplicateKeyStoreError",
    "Retention",
    "Store",
    "UpsertReport",
    "close_shared_clients",
    "connect",
    "is_temporary",
    "shared_client",
]
