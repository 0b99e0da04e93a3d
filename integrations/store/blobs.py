"""Shared files (registered models, training checkpoints) in MongoDB GridFS.

Every host reads and writes the same files through the store, so a model registered on one
host loads on any other and a training resumed elsewhere finds the checkpoint the first host
wrote. Files live in the GridFS bucket :data:`BUCKET` (collections ``blobs.files`` and
``blobs.chunks``); each carries the SHA-256 of its bytes in its metadata so a reader can tell a
damaged or modified copy from a good one. The bytes are whatever the caller gives: model and
checkpoint files are sealed (AES-256-GCM) before they get here.

A name holds one file: writing a name again uploads a new version, then removes the older
ones; a reader always gets the newest complete upload (GridFS writes a file's document after
its chunks, so a half-finished upload is invisible).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from gridfs import GridFSBucket
from gridfs.errors import NoFile
from pymongo.errors import OperationFailure

from integrations.store.base import Repository
from integrations.store.schema import C

#: GridFS bucket of the shared files (its files collection is ``C.BLOB_FILES``).
BUCKET = C.BLOB_FILES.split(".")[0]


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of ``data`` as 64 hex characters."""
    return hashlib.sha256(data).hexdigest()


class Blobs(Repository):
    """Named files in GridFS, every call through the store's error boundary."""

    def _bucket(self) -> GridFSBucket:
        return GridFSBucket(self.db, bucket_name=BUCKET)

    def put(self, name: str, data: bytes, metadata: Mapping[str, Any] | None = None) -> str:
        """Store ``data`` as ``name`` (a new version; older versions of the name are removed).

        Args:
            metadata: extra fields kept beside the file; a ``group`` lists the file in
                :meth:`listing`.

        Returns:
            the SHA-256 of ``data`` (also kept in the file's metadata).

        Raises:
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
            StoreError: MongoDB refused the write.
        """
        digest = sha256_hex(data)
        meta = {**(metadata or {}), "sha256": digest, "length": len(data)}
        new_id = self.call(
            f"storing file {name}",
            lambda: self._bucket().upload_from_stream(name, data, metadata=meta),
        )
        for old in self._versions(name):
            if old["_id"] != new_id:
                self.call(f"removing an old version of {name}", lambda i=old["_id"]: _drop(self, i))
        return digest

    def _versions(self, name: str) -> list[dict[str, Any]]:
        """The ``blobs.files`` documents of ``name``, newest upload first."""
        return self.call(
            f"listing versions of {name}",
            lambda: list(self.col(C.BLOB_FILES).find({"filename": name}).sort("uploadDate", -1)),
        )

    def info(self, name: str) -> dict[str, Any] | None:
        """``{name, sha256, length, uploaded_at, metadata}`` of the newest version of
        ``name``, or None when no such file is stored."""
        versions = self._versions(name)
        return _describe(versions[0]) if versions else None

    def get(self, name: str) -> tuple[bytes, dict[str, Any]] | None:
        """The bytes of the newest version of ``name`` and its :meth:`info`, or None when no
        such file is stored.

        Raises:
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
        """

        def read() -> tuple[bytes, dict[str, Any]] | None:
            try:
                stream = self._bucket().open_download_stream_by_name(name)
            except NoFile:
                return None
            with stream:
                body = stream.read()
                doc = {
                    "filename": stream.filename,
                    "length": stream.length,
                    "uploadDate": stream.upload_date,
                    "metadata": stream.metadata,
                }
            return body, _describe(doc)

        return self.call(f"reading file {name}", read)

    def listing(self, group: str) -> list[dict[str, Any]]:
        """:meth:`info` of every stored file put with ``metadata={"group": group}`` (the
        newest version of each name), oldest upload first.

        Files are listed by an equality on their metadata: nx-27017 answers only equalities
        on a GridFS bucket (no ranges, no ``$regex``). The bucket holds one document per file
        (a few per model key and training run), so the scan stays small.
        """
        docs = self.call(
            f"listing files of {group}",
            lambda: list(
                self.col(C.BLOB_FILES).find({"metadata.group": group}).sort("uploadDate", 1)
            ),
        )
        newest: dict[str, dict[str, Any]] = {}
        for doc in docs:  # a later upload of a name replaces the earlier one
            newest[doc["filename"]] = _describe(doc)
        return list(newest.values())

    def delete(self, name: str) -> int:
        """Remove every version of ``name``. Returns how many were removed."""
        versions = self._versions(name)
        for doc in versions:
            self.call(f"removing file {name}", lambda i=doc["_id"]: _drop(self, i))
        return len(versions)


def _drop(blobs: Blobs, file_id: Any) -> None:
    """Delete one GridFS file; one already gone is fine: a concurrent delete, or this very
    delete retried after the server did it but its answer was lost (a cut link). pymongo
    raises ``NoFile`` for a file that is gone; nx-27017 answers "File with id ... not found"."""
    try:
        blobs._bucket().delete(file_id)
    except NoFile:
        return
    except OperationFailure as e:
        if not _is_gone(e, file_id):
            raise


def _is_gone(error: OperationFailure, file_id: Any) -> bool:
    """True when ``error`` is the server's answer that the file ``file_id`` does not exist."""
    message = str((error.details or {}).get("errmsg") or error)
    return f"{file_id} not found" in message


def _describe(doc: Mapping[str, Any]) -> dict[str, Any]:
    meta = dict(doc.get("metadata") or {})
    uploaded = doc.get("uploadDate")
    return {
        "name": doc.get("filename"),
        "sha256": meta.get("sha256"),
        "length": int(doc.get("length", 0)),
        "uploaded_at": uploaded if isinstance(uploaded, datetime) else None,
        "metadata": meta,
    }
