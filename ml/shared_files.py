"""Files every host shares (registered models, training checkpoints): kept in the store, with
a local folder that is only a cache.

:meth:`SharedFiles.put` writes a file to the local cache atomically (so a full disk fails
before anything is stored, naming the folder) and then to the store (``store.blobs``, MongoDB
GridFS), which records the SHA-256 of its bytes. :meth:`SharedFiles.fetch` returns a local
copy of a stored file: the cached one when its content hash matches the store's, else a fresh
download, checked against that hash before it is cached. A host whose cache is empty (another
machine, a new state folder) therefore reads exactly what the writing host stored, and a copy
modified in the store or in a cache is never used.

The files handed to this module are already sealed (AES-256-GCM, :mod:`ml.encryption`); no
plaintext weights are ever cached or stored.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Protocol

from core.exceptions import ConfigurationError, NotFoundError
from ml.files import atomic_write_bytes

log = logging.getLogger(__name__)


class BlobStore(Protocol):
    """What :class:`SharedFiles` needs of the store (``integrations.store.blobs.Blobs``)."""

    def put(self, name: str, data: bytes, metadata: dict[str, Any] | None = None) -> str: ...

    def info(self, name: str) -> dict[str, Any] | None: ...

    def get(self, name: str) -> tuple[bytes, dict[str, Any]] | None: ...

    def listing(self, group: str) -> list[dict[str, Any]]: ...

    def delete(self, name: str) -> int: ...


def _check_name(name: str) -> str:
    """``name`` when it is a plain file name.

    Raises:
        ConfigurationError: a path (``/``, ``..``) or an empty name.
    """
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ConfigurationError(
            f"shared file names are plain file names, got {name!r}; pass only the file's name"
        )
    return name


class SharedFiles:
    """Files in the store, cached under ``cache_dir``.

    Args:
        blobs: the store's file repository (``store.blobs``).
        cache_dir: the local cache folder (created on first write).
    """

    def __init__(self, blobs: BlobStore, cache_dir: Path) -> None:
        self.blobs = blobs
        self.cache_dir = Path(cache_dir)

    def __repr__(self) -> str:
        return f"SharedFiles(cache_dir={str(self.cache_dir)!r})"

    def cache_path(self, name: str) -> Path:
        """Where ``name`` is cached on this host."""
        return self.cache_dir / _check_name(name)

    def put(self, name: str, data: bytes, metadata: dict[str, Any] | None = None) -> Path:
        """Cache ``data`` as ``name``, then store it for every host.

        Returns:
            the cached copy's path.

        Raises:
            ml.files.DiskFullError: no room in the cache folder (nothing was stored).
            StoreUnavailableError, StoreError: the store did not take the file (the cached
                copy stays; putting again is safe).
        """
        path = atomic_write_bytes(self.cache_path(name), data)
        self.blobs.put(name, data, metadata)
        return path

    def exists(self, name: str) -> bool:
        """True when the store holds ``name``."""
        return self.blobs.info(_check_name(name)) is not None

    def listing(self, group: str) -> list[dict[str, Any]]:
        """The stored files put with ``metadata={"group": group}`` (name, sha256, length,
        uploaded_at, metadata), oldest first."""
        return self.blobs.listing(group)

    def fetch(self, name: str) -> Path:
        """A local copy of the stored file ``name``: the cache when it holds the stored
        content, else downloaded, checked and cached.

        Returns:
            the cached copy's path.

        Raises:
            NotFoundError: the store holds no file ``name``.
            ConfigurationError: the stored bytes do not match the checksum stored with them
                (the copy in the store was modified or damaged).
            StoreUnavailableError: the store did not answer.
        """
        path = self.cache_path(name)
        info = self.blobs.info(name)
        if info is None:
            raise NotFoundError(
                f"shared file {name} is not in the store: it was never stored or was deleted"
            )
        if path.exists() and _sha256_file(path) == info["sha256"]:
            return path
        got = self.blobs.get(name)
        if got is None:  # deleted between the two reads
            raise NotFoundError(f"shared file {name} was deleted from the store while read")
        data, meta = got
        if hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise ConfigurationError(
                f"shared file {name} in the store does not match its checksum: the stored copy "
                "was modified or damaged; register or train it again"
            )
        log.debug("fetched %s (%d bytes) from the store into the cache", name, len(data))
        return atomic_write_bytes(path, data)

    def get(self, name: str) -> bytes:
        """The bytes of the stored file ``name`` (see :meth:`fetch` for what it raises)."""
        return self.fetch(name).read_bytes()

    def delete(self, name: str) -> None:
        """Remove ``name`` from the store and from this host's cache."""
        self.blobs.delete(_check_name(name))
        self.cache_path(name).unlink(missing_ok=True)


def _sha256_file(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
