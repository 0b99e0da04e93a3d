"""Training checkpoints: sealed ``.npz`` files a killed or stopped training resumes from.

Checkpoints are ``{model}_{symbol}_{run_id}_epoch_{n}.npz``, kept in the store (MongoDB GridFS
through :mod:`ml.shared_files`) when the store is given, so a training resumed on another host
continues from the checkpoint the first host wrote; the checkpoint folder is then only this
host's cache. Without a store (the training loop on its own) they live in the folder. Sealed
with AES-256-GCM under the model-store key like registered models. They hold the weights, the
optimiser state, the epoch, the history, the best weights so far and the feature spec (scaler),
so a resumed run continues exactly where the checkpoint left off (:func:`restore_optimizer`).
The newest :data:`KEEP_PER_RUN` of a run are kept. Writes are atomic (:mod:`ml.files`).
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from core.exceptions import ConfigurationError, NotFoundError, TrainingError
from ml.encryption import decrypt_bytes, encrypt_bytes
from ml.files import atomic_write_bytes
from ml.shared_files import SharedFiles

log = logging.getLogger(__name__)

#: Checkpoints kept per run (older ones of the same run are deleted after a save).
KEEP_PER_RUN = 3


@dataclass
class Checkpoint:
    """A checkpoint: its (cached) path, whose name is its name in the store, and the
    completed epoch it holds."""

    path: Path
    epoch: int
    meta: dict[str, Any]


class CheckpointStore:
    """Checkpoints of one model_type+symbol+timeframe under ``directory``, sealed with ``key``.

    A checkpoint holds the network's weights, so it is encrypted like a registered model
    (AES-256-GCM, the file name as associated data, :mod:`ml.encryption`); the ``.npz``
    archive exists only in memory.

    Args:
        files: the shared files of the store: checkpoints are stored there for every host
            and ``directory`` is only a cache. None keeps them in ``directory`` alone.

    Raises:
        ConfigurationError: ``key`` is not 32 bytes.
    """

    def __init__(
        self,
        directory: Path,
        model_type: str,
        symbol: str,
        timeframe: str,
        key: bytes,
        files: SharedFiles | None = None,
    ) -> None:
        if len(key) != 32:
            raise ConfigurationError(
                f"checkpoint key must be 32 bytes (AES-256), got {len(key)}; "
                "use the model-store block's key"
            )
        self.directory = Path(directory)
        self.model_type, self.symbol, self.timeframe = model_type, symbol, timeframe
        self._key = key
        self.files = SharedFiles(files.blobs, self.directory) if files is not None else None

    def __repr__(self) -> str:  # the key never appears in logs or tracebacks
        return (
            f"CheckpointStore({str(self.directory)!r}, {self.model_type!r}, "
            f"{self.symbol!r}, {self.timeframe!r}, key=***)"
        )

    @property
    def _group(self) -> str:
        """What the store lists this type+symbol's checkpoints by."""
        return f"checkpoints:{self.model_type}_{self.symbol}"

    def path(self, run_id: str, epoch: int) -> Path:
        """``{model}_{symbol}_{run_id}_epoch_{n}.npz``."""
        return self.directory / f"{self.model_type}_{self.symbol}_{run_id}_epoch_{epoch}.npz"

    def save(
        self,
        run_id: str,
        epoch: int,
        weights: list[np.ndarray],
        optimizer_vars: list[np.ndarray],
        meta: dict[str, Any],
        best_weights: list[np.ndarray] | None = None,
    ) -> Path:
        """Write a sealed checkpoint atomically and durably, then delete this run's older
        checkpoints beyond the newest :data:`KEEP_PER_RUN`.

        Returns:
            its path.

        Raises:
            ml.files.DiskFullError: no room in the checkpoint folder (nothing partial is left).
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {f"w{i}": w for i, w in enumerate(weights)}
        arrays.update({f"o{i}": v for i, v in enumerate(optimizer_vars)})
        if best_weights is not None:
            arrays.update({f"b{i}": w for i, w in enumerate(best_weights)})
        full_meta = {
            **meta,
            "epoch": epoch,
            "run_id": run_id,
            "model_type": self.model_type,
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "n_weights": len(weights),
            "n_optimizer_vars": len(optimizer_vars),
            "has_best": best_weights is not None,
            "saved_at": time.time(),
        }
        arrays["meta"] = np.frombuffer(json.dumps(full_meta).encode(), dtype=np.uint8)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        path = self.path(run_id, epoch)
        sealed = encrypt_bytes(buf.getvalue(), self._key, path.name.encode())
        if self.files is None:
            atomic_write_bytes(path, sealed)
        else:  # cached here first (a full disk fails before anything is stored), then shared
            listed = {"group": self._group, "run_id": run_id, "epoch": epoch}
            self.files.put(path.name, sealed, {**listed, "timeframe": self.timeframe})
        log.info("checkpoint saved: %s", path.name)
        self._prune(run_id, keep=KEEP_PER_RUN)
        return path

    def _names(self, run_id: str | None) -> list[str]:
        """Names of the checkpoint files of ``run_id`` (None: of every run) of this
        type+symbol, in the store when there is one, else in the folder."""
        prefix = f"{self.model_type}_{self.symbol}_" + (f"{run_id}_epoch_" if run_id else "")
        if self.files is not None:
            listed = self.files.listing(self._group)  # other timeframes are not fetched
            names = [
                f["name"]
                for f in listed
                if f["name"].startswith(prefix)
                and f["metadata"].get("timeframe") in (None, self.timeframe)
            ]
        elif self.directory.exists():
            names = [p.name for p in self.directory.glob(f"{prefix}*.npz")]
        else:
            names = []
        return [n for n in names if n.endswith(".npz") and "_epoch_" in n]

    def _run_files(self, run_id: str) -> list[tuple[int, Path]]:
        """(epoch, path) of this run's checkpoint files, oldest epoch first."""
        out = []
        prefix = f"{self.model_type}_{self.symbol}_{run_id}_epoch_"
        for name in self._names(run_id):
            tail = name[len(prefix) : -len(".npz")]
            if tail.isdigit():
                out.append((int(tail), self.directory / name))
        return sorted(out)

    def _prune(self, run_id: str, keep: int) -> None:
        for _epoch, path in self._run_files(run_id)[:-keep]:
            try:
                if self.files is not None:
                    self.files.delete(path.name)
                else:
                    path.unlink()
            except OSError as e:  # pragma: no cover - a vanished or read-only file
                log.warning("could not delete old checkpoint %s: %s", path.name, e)

    def _open(self, path: Path) -> Any:
        """The decrypted ``.npz`` archive of ``path`` (``np.load`` of an in-memory buffer);
        with a store, the stored file of that name (this host's cached copy when it matches).

        Raises:
            ConfigurationError: not sealed, sealed with another key, modified or renamed.
            NotFoundError: the store holds no checkpoint of that name.
        """
        sealed = self.files.get(path.name) if self.files is not None else path.read_bytes()
        plain = decrypt_bytes(sealed, self._key, path.name.encode())
        return np.load(io.BytesIO(plain))

    def read_meta(self, path: Path) -> dict[str, Any]:
        """The JSON metadata of a checkpoint (see :meth:`_open` for what it raises)."""
        with self._open(path) as z:
            return json.loads(bytes(z["meta"]).decode())

    def load_arrays(
        self, path: Path
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """Return (weights, optimizer variables, best weights or []) of a checkpoint."""
        with self._open(path) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            w = [z[f"w{i}"] for i in range(meta["n_weights"])]
            o = [z[f"o{i}"] for i in range(meta["n_optimizer_vars"])]
            b = [z[f"b{i}"] for i in range(meta["n_weights"])] if meta["has_best"] else []
        return w, o, b

    def latest(self, run_id: str | None = None) -> Checkpoint | None:
        """The newest readable checkpoint (by save time) of this type+symbol+timeframe, or None.

        Args:
            run_id: only checkpoints written by this flow run (automatic resume of a re-run).
        """
        found: list[Checkpoint] = []
        for path in (self.directory / name for name in self._names(run_id)):
            try:
                meta = self.read_meta(path)
            except (OSError, ValueError, KeyError, ConfigurationError, NotFoundError) as e:
                log.warning("unreadable checkpoint %s skipped: %s", path.name, e)
                continue
            if meta.get("timeframe") == self.timeframe and run_id in (None, meta.get("run_id")):
                found.append(Checkpoint(path=path, epoch=int(meta["epoch"]), meta=meta))
        if not found:
            return None
        return max(found, key=lambda c: (c.meta.get("saved_at", 0.0), c.epoch))


def restore_optimizer(model: keras.Model, opt_vars: list[np.ndarray]) -> None:
    """Load saved optimiser variables into ``model.optimizer`` (building it when needed).

    Raises:
        TrainingError: the saved state does not fit this optimiser.
    """
    opt = model.optimizer
    if not opt.built:
        opt.build(model.trainable_variables)
    if len(opt.variables) != len(opt_vars):
        raise TrainingError(
            f"checkpoint optimiser state has {len(opt_vars)} variables, the model needs "
            f"{len(opt.variables)}: the checkpoint belongs to another architecture"
        )
    for var, value in zip(opt.variables, opt_vars, strict=True):
        var.assign(value)
