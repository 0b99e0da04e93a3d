"""Bootstrap of the credential blocks: environment variables -> Prefect block documents.

``bootstrap_blocks(settings, environ)`` registers every block type and creates or updates
(overwrites) one document per block from the variables listed in ``.env.example``. A block
whose required variables are absent is skipped; MongoDB (embedded URI from ``Settings`` by
default) and the model store (key generated once into a 0600 file in the state folder when
``MODEL_STORE_KEY`` is unset) are always created. Every value is validated before anything
is saved, so a bad variable writes nothing.

``describe_blocks()`` shows the documents with every secret masked (for ``botai status``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect.blocks.core import Block
from pydantic import ValidationError

from blocks import ALL_BLOCKS, ModelStoreBlock, MongoDBBlock, SMTPBlock
from blocks.loader import load_block
from blocks.model_store import generate_model_key
from blocks.smtp import DEFAULT_SMTP_PORTS
from core.exceptions import ConfigurationError
from core.settings import Settings

log = logging.getLogger(__name__)

MODEL_KEY_FILE = "model_store.key"


def model_key_path(settings: Settings) -> Path:
    """The file holding the generated model-store key (``<state_dir>/model_store.key``)."""
    return settings.state_dir / MODEL_KEY_FILE


def ensure_model_key_file(settings: Settings) -> str:
    """Return the model-store key kept in the state folder, generating it on first use.

    The file is created with mode 0600 (and put back to 0600 if it was widened).

    Raises:
        ConfigurationError: the file exists but does not hold base64 of 32 bytes.
    """
    path = model_key_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(generate_model_key() + "\n")
        log.info("generated a new model-store key in %s", path)
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    key = path.read_text().strip()
    try:
        ModelStoreBlock(directory=".", key=key)
    except ValidationError:
        raise ConfigurationError(
            f"{path} does not hold a valid model-store key (base64 of 32 bytes): delete it to "
            "generate a new one, or set MODEL_STORE_KEY"
        ) from None
    return key


def _env(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def _number(environ: Mapping[str, str], name: str) -> float | None:
    raw = _env(environ, name)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number (got {raw!r})") from None


def _block_values(
    block_cls: type[Block], settings: Settings, environ: Mapping[str, str]
) -> dict[str, Any] | None:
    """Field values of ``block_cls`` from the environment; None when a required one is absent."""
    missing = [v for v in block_cls.required_env if _env(environ, v) is None]  # type: ignore[attr-defined]
    if missing:
        log.info(
            "block %s not created: set %s",
            block_cls.document_name,  # type: ignore[attr-defined]
            ", ".join(missing),
        )
        return None
    values: dict[str, Any] = {}
    for field, var in block_cls.env_fields.items():  # type: ignore[attr-defined]
        annotation = str(block_cls.model_fields[field].annotation)
        if "float" in annotation or "int" in annotation:
            number = _number(environ, var)
            if number is not None:
                values[field] = int(number) if "int" in annotation else number
        elif "list" in annotation:
            raw = _env(environ, var)
            if raw is not None:
                values[field] = [r.strip() for r in re.split(r"[,;]", raw) if r.strip()]
        else:
            raw = _env(environ, var)
            if raw is not None:
                values[field] = raw
    if block_cls is MongoDBBlock:
        values.setdefault("uri", settings.effective_mongodb_uri)
        values.setdefault("database", settings.mongodb_database)
    elif block_cls is ModelStoreBlock:
        values.setdefault("directory", str(settings.model_dir))
        if "key" not in values:
            values["key"] = ensure_model_key_file(settings)
    elif block_cls is SMTPBlock:
        security = values.get("security", "starttls")
        values.setdefault("port", DEFAULT_SMTP_PORTS.get(security, 587))
    return values


def _build(block_cls: type[Block], values: dict[str, Any]) -> Block:
    try:
        return block_cls(**values)
    except ValidationError as e:
        env = block_cls.env_fields  # type: ignore[attr-defined]
        problems = "; ".join(
            f"{env.get(str(err['loc'][0]), err['loc'][0]) if err['loc'] else ''}: {err['msg']}"
            for err in e.errors()
        )
        raise ConfigurationError(
            f"cannot create block {block_cls.document_name!r}: {problems}"  # type: ignore[attr-defined]
        ) from None


def register_block_types() -> list[str]:
    """Register every block type and schema with the Prefect API. Returns their slugs."""
    for block_cls in ALL_BLOCKS:
        block_cls.register_type_and_schema(_sync=True)
    return [b.get_block_type_slug() for b in ALL_BLOCKS]


def bootstrap_blocks(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    """Create or update the block documents from ``environ``.

    Args:
        settings: non-secret settings (embedded MongoDB URI, state folder, model folder).
        environ: the environment, e.g. ``os.environ`` (a plain mapping in tests).

    Returns:
        the documents created or updated, as ``<block-type-slug>/<name>``
        (e.g. ``botai-mongodb/mongodb``), in bootstrap order.

    Raises:
        ConfigurationError: a variable is invalid or a placeholder (nothing saved then).
    """
    built: list[Block] = []
    for block_cls in ALL_BLOCKS:
        values = _block_values(block_cls, settings, environ)
        if values is not None:
            built.append(_build(block_cls, values))
    register_block_types()
    saved = []
    for block in built:
        name = type(block).document_name  # type: ignore[attr-defined]
        block.save(name, overwrite=True, _sync=True)
        saved.append(f"{block.get_block_type_slug()}/{name}")
    log.info("block documents created or updated: %s", ", ".join(saved))
    return saved


def describe_blocks() -> list[dict[str, Any]]:
    """Every block document as shown to users: secrets masked, missing ones with what to set.

    Returns one dict per block type: ``block`` (slug/name), ``present``, and either
    ``fields`` (masked values) or ``set`` (the variables that create it).
    """
    out: list[dict[str, Any]] = []
    for block_cls in ALL_BLOCKS:
        ref = f"{block_cls.get_block_type_slug()}/{block_cls.document_name}"
        try:
            block = load_block(block_cls)
        except ConfigurationError:
            needed = block_cls.required_env or tuple(block_cls.env_fields.values())
            out.append({"block": ref, "present": False, "set": list(needed)})
            continue
        fields = block.describe()
        if isinstance(block, MongoDBBlock):
            fields["uri"] = block.display_uri()
        out.append({"block": ref, "present": True, "fields": fields})
    return out
