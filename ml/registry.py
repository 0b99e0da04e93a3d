"""Model registry: encrypted model files plus one record per model in the ``models`` collection.

The files are kept in the store (MongoDB GridFS, :mod:`ml.shared_files`), so a model registered
on one host loads on every other; the model folder of a host is only a cache. A record's
``file_path`` is the file's name in the store, never a path of one host. Files are named ``{type}_{symbol}_{tf}_{YYYYmmdd_HHMMSS}.keras`` but are NOT readable Keras
zips: the Keras archive is built in memory and written encrypted with AES-256-GCM::

    b"BOTAIGCM1" | 12-byte nonce | ciphertext+tag   (associated data: the file name)

(see :mod:`ml.encryption`; training checkpoints are sealed the same way).

:meth:`ModelRegistry.load` decrypts into memory and builds the network from a ``BytesIO``;
no plaintext model ever touches the disk. The key (32 bytes) comes from the model-store block.

Lifecycle: ``register`` -> candidate (version = previous + 1, unique per key); ``deploy`` ->
deployed: one atomic replace of the key's pointer in ``deployed_models`` (the previously
deployed model of the same type+symbol+timeframe is retired, never deleted, and named in
the new one's ``replaced_model_id``: where a rollback goes back to); ``archive`` ->
archived. Operators promote, roll back and archive with an audit trail through
:mod:`ml.registry_ops`.
"""

from __future__ import annotations

import functools
import io
import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ml.models  # noqa: F401  (registers custom layers for deserialisation)
from core.exceptions import ConfigurationError, InvalidInputError, NotFoundError
from integrations.store import DuplicateKeyStoreError, Store
from integrations.store.models import model_key
from ml.encryption import decrypt_bytes, encrypt_bytes
from ml.metrics import selection_accuracy
from ml.predictor import LoadedModel, SharedForward
from ml.records import ModelRecord
from ml.shared_files import SharedFiles

log = logging.getLogger(__name__)


def model_to_bytes(model: Any) -> bytes:
    """Serialise a Keras model to ``.keras`` zip bytes in memory."""
    from keras.src.saving import saving_lib

    buf = io.BytesIO()
    saving_lib.save_model(model, buf)
    return buf.getvalue()


#: Registered name of the stand-in initializer used while a saved model is rebuilt.
LOADED_LATER = "botai>LoadedLater"


@functools.cache
def _loaded_later_initializer() -> Any:
    """The stand-in initializer class, registered with Keras on first use: numpy zeros, so
    creating a variable compiles nothing (its values come from the file right after)."""
    import keras
    import numpy as np

    @keras.saving.register_keras_serializable(package="botai", name="LoadedLater")
    class LoadedLater(keras.initializers.Initializer):
        """Zeros from numpy: a placeholder the saved weights overwrite at once."""

        def __call__(self, shape: Any, dtype: Any = None) -> Any:
            return np.zeros(shape, dtype=keras.backend.standardize_dtype(dtype or "float32"))

    return LoadedLater


def _without_initializers(config: Any) -> Any:
    """``config`` with every built-in initializer replaced by the stand-in."""
    if isinstance(config, dict):
        if config.get("module") == "keras.initializers" and "class_name" in config:
            return {
                "module": None,
                "class_name": "LoadedLater",
                "config": {},
                "registered_name": LOADED_LATER,
            }
        return {k: _without_initializers(v) for k, v in config.items()}
    if isinstance(config, list):
        return [_without_initializers(v) for v in config]
    return config


def model_from_bytes(data: bytes) -> Any:
    """Build a Keras model from ``.keras`` zip bytes held in memory, for inference or as
    initial weights (not compiled: no optimizer state is built; ``compile()`` before fitting).

    The layers' initializers are not run: on JAX each one is a program to lower and compile
    in a fresh process (a small GRU's random and orthogonal initializers took 0.34 s of a
    0.37 s load in a forked predict-price run), and the saved weights replace their values
    anyway. They are swapped for a numpy-zeros stand-in in the archive's config, so the
    loaded model's ``get_config()`` names that stand-in: use the model for predictions and
    ``get_weights()``, never as the template of a new model to train from scratch.

    Raises:
        ValueError: the archive does not hold a Keras model whose weights fit its config.
    """
    import json
    import zipfile

    from keras.src.saving import saving_lib

    _loaded_later_initializer()
    source = zipfile.ZipFile(io.BytesIO(data))
    rebuilt = io.BytesIO()
    with zipfile.ZipFile(rebuilt, "w", compression=zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            body = source.read(info.filename)
            if info.filename == "config.json":
                body = json.dumps(_without_initializers(json.loads(body))).encode()
            target.writestr(info.filename, body)
    rebuilt.seek(0)
    return saving_lib.load_model(rebuilt, compile=False)


class ModelRegistry:
    """Registered models: encrypted files in the store and records in ``models``.

    Args:
        store: the platform store.
        model_dir: this host's cache of the encrypted model files (created when missing).
        key: 32-byte AES-256 key (``ModelStoreBlock.get_key()``).

    Raises:
        ConfigurationError: the key is not 32 bytes.
    """

    def __init__(self, store: Store, model_dir: Path, key: bytes) -> None:
        if not isinstance(key, bytes | bytearray) or len(key) != 32:
            raise ConfigurationError("model-store key must be 32 bytes (AES-256), base64-encoded")
        self.store = store
        self.model_dir = Path(model_dir)
        self._key = bytes(key)
        self.files = SharedFiles(store.blobs, self.model_dir)

    def __repr__(self) -> str:
        return f"ModelRegistry(model_dir={str(self.model_dir)!r})"

    # ------------------------------------------------------------ write
    def register(
        self,
        model: Any,
        *,
        model_type: str,
        symbol: str,
        timeframe: str,
        metrics: dict[str, Any],
        feature_spec: dict[str, Any],
        horizon_bars: int,
        created_by: str,
        training_task_id: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> ModelRecord:
        """Encrypt ``model``, store the file for every host and record it as a candidate.

        Returns:
            the new record (status ``candidate``, version = previous max + 1; ``file_path``
            is the file's name in the store).

        Raises:
            ml.files.DiskFullError: no room in the cache folder (nothing stored or recorded).
            StoreUnavailableError: the store did not take the file or the record.
        """
        now = datetime.now(UTC).replace(microsecond=0)
        stem = f"{model_type}_{symbol}_{timeframe}_{now:%Y%m%d_%H%M%S}"
        name, n = f"{stem}.keras", 1
        while self.files.exists(name):  # two models of one key in the same second
            name, n = f"{stem}_{n}.keras", n + 1
        blob = encrypt_bytes(model_to_bytes(model), self._key, name.encode())
        self.files.put(name, blob, {"group": "models", "model_type": model_type})
        record = ModelRecord(
            model_id=uuid.uuid4().hex,
            model_type=model_type,
            symbol=symbol,
            timeframe=timeframe,
            version=0,
            file_path=name,
            metrics=metrics,
            status="candidate",
            created_by=created_by,
            created_at=now,
            feature_spec=feature_spec,
            horizon_bars=int(horizon_bars),
            training_task_id=training_task_id,
            extra=extra or {},
        )
        self._insert_next_version(record)
        log.info("registered %s v%d as candidate (%s)", name, record.version, record.model_id)
        return record

    def _insert_next_version(self, record: ModelRecord, attempts: int = 5) -> None:
        """Insert ``record`` as the next version of its key; versions are unique per key, so a
        concurrent registration of the same key makes us take the version after it."""
        for attempt in range(attempts):
            record.version = self.store.models.model_next_version(
                record.model_type, record.symbol, record.timeframe
            )
            try:
                self.store.model_insert(record.to_doc())
                return
            except DuplicateKeyStoreError:
                if attempt == attempts - 1:
                    raise

    def deploy(self, model_id: str, by: str) -> ModelRecord:
        """Make ``model_id`` the deployed model of its type+symbol+timeframe.

        The switch is one atomic write: the key's pointer in ``deployed_models`` is replaced
        (``replace_one(upsert=True)``), so the key never has two or zero deployed models.
        The ``status`` fields then follow: the model becomes ``deployed`` and every other
        model of the key still marked ``deployed`` is retired (it may be deployed again).

        Returns:
            the updated record (status ``deployed`` unless a concurrent deploy of the same
            key came after it).

        Raises:
            NotFoundError: unknown model id.
            InvalidInputError: the model is archived.
            StoreUnavailableError: the store did not answer (the pointer is unchanged or
                already switched; deploying again completes the status fields).
        """
        record = self.get(model_id)
        if record.status == "archived":
            raise InvalidInputError(f"model {model_id} is archived; register a new model instead")
        now = datetime.now(UTC)
        current = self.store.models.deploy_pointers(model_key(record.to_doc()))
        if current and current[0]["model_id"] != model_id:
            record.replaced_model_id = current[0]["model_id"]
        self.store.models.deploy_pointer_set(record.to_doc(), by, now)
        self._set_status(record, "deployed", by, now)
        deployed = self.reconcile_status(record.model_type, record.symbol, record.timeframe, by)
        if deployed is not None and deployed.model_id == model_id:
            return deployed
        return self.get(model_id)  # a concurrent deploy of the same key won

    def reconcile_status(
        self, model_type: str, symbol: str, timeframe: str, by: str
    ) -> ModelRecord | None:
        """Make the ``status`` fields of a key follow its deployed pointer: the pointed model
        ``deployed``, every other model still marked ``deployed`` retired.

        Returns:
            the deployed record of the key, or None when nothing is deployed.
        """
        now = datetime.now(UTC)
        key = {"model_type": model_type, "symbol": symbol, "timeframe": timeframe}
        pointers = self.store.models.deploy_pointers(key)
        target = pointers[0]["model_id"] if pointers else None
        deployed = None
        for doc in self.store.models_find({**key, "status": "deployed"}):
            if doc["model_id"] != target:
                self._set_status(ModelRecord.from_doc(doc), "retired", by, now)
            else:
                deployed = ModelRecord.from_doc(doc)
        if target is not None and deployed is None:
            deployed = self._set_status(self.get(target), "deployed", by, now)
        return deployed

    def archive(self, model_id: str, by: str) -> ModelRecord:
        """Archive ``model_id`` (kept, never deleted). Archiving the deployed model of a key
        leaves that key with no deployed model. Returns the updated record.

        Raises:
            NotFoundError: unknown model id.
        """
        record = self.get(model_id)
        self.store.models.deploy_pointer_clear(record.to_doc())
        return self._set_status(record, "archived", by, datetime.now(UTC))

    def _set_status(self, record: ModelRecord, status: str, by: str, now: datetime) -> ModelRecord:
        record.status = status
        if status == "deployed":
            record.deployed_at, record.deployed_by = now, by
        elif status == "archived":
            record.archived_at, record.archived_by = now, by
        elif status == "retired":
            record.retired_at, record.retired_by = now, by
        self.store.model_replace(record.to_doc())
        log.info("model %s -> %s by %s", record.model_id, status, by)
        return record

    # ------------------------------------------------------------ read
    def get(self, model_id: str) -> ModelRecord:
        """Return the record of ``model_id``.

        Raises:
            NotFoundError: unknown model id.
        """
        doc = self.store.model_get(model_id)
        if doc is None:
            raise NotFoundError(f"model {model_id} not found in the registry")
        return ModelRecord.from_doc(doc)

    def deployed(
        self, symbol: str, timeframe: str, model_type: str | None = None
    ) -> ModelRecord | None:
        """The deployed model for ``symbol``/``timeframe``, read from the deployed pointers.

        Returns:
            with ``model_type``: that type's deployed model; without: the deployed model with
            the best held-out accuracy (``ml.metrics.selection_accuracy``) across types. None when nothing is deployed.
        """
        docs = self.store.deployed_model_docs(
            symbol=symbol, timeframe=timeframe, model_type=model_type
        )
        if not docs:
            return None
        best = max(docs, key=lambda d: selection_accuracy(d.get("metrics")))
        return ModelRecord.from_doc(best)

    def history(
        self, symbol: str | None = None, model_type: str | None = None
    ) -> list[ModelRecord]:
        """Every record (optionally of one symbol/type), newest first."""
        query: dict[str, Any] = {}
        if symbol is not None:
            query["symbol"] = symbol
        if model_type is not None:
            query["model_type"] = model_type
        docs = self.store.models_find(query, sort=[("created_at", -1), ("version", -1)])
        return [ModelRecord.from_doc(d) for d in docs]

    def load(self, record: ModelRecord, forward: SharedForward | None = None) -> LoadedModel:
        """Fetch the model file (this host's cache or the store), decrypt it in memory and
        build the network.

        Args:
            forward: a shared compiled forward pass for many models of one architecture
                (bulk-analysis); None predicts with the model's own ``predict``.

        Returns:
            a :class:`ml.predictor.LoadedModel`.

        Raises:
            NotFoundError: the file is in neither the store nor (for records written before
                files were stored) at its old local path.
            ConfigurationError: wrong key, or a file modified in the store or on disk.
        """
        name = Path(record.file_path).name
        plain = decrypt_bytes(self._sealed_file(record, name), self._key, name.encode())
        return LoadedModel(record=record, model=model_from_bytes(plain), forward=forward)

    def _sealed_file(self, record: ModelRecord, name: str) -> bytes:
        """The sealed bytes of ``record``'s file. A record written before files were stored
        holds an absolute local path: its file is read there once and stored for every host.

        Raises:
            NotFoundError: the file is nowhere to be found.
        """
        try:
            return self.files.get(name)
        except NotFoundError:
            old = Path(record.file_path)
            if not old.is_absolute() or not old.exists():
                raise NotFoundError(
                    f"model file of {record.model_id} ({name}) is not in the store; "
                    "register the model again"
                ) from None
        blob = old.read_bytes()
        self.files.put(name, blob, {"group": "models", "model_type": record.model_type})
        log.info("stored the local model file %s of %s for every host", name, record.model_id)
        return blob
