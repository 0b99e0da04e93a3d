"""Load credential blocks by name, with errors that say what to set.

Flows and tasks call :func:`load_block` / :func:`load_store`; nothing else reads credentials.
"""

from __future__ import annotations

import logging
from typing import TypeVar

import httpx
from prefect.blocks.core import Block
from prefect.exceptions import PrefectHTTPStatusError

from core.exceptions import ConfigurationError, ServiceUnavailableError
from core.settings import Settings, load_settings
from integrations.store import Retention, Store

log = logging.getLogger(__name__)

B = TypeVar("B", bound=Block)

BOOTSTRAP_COMMAND = "botai bootstrap"

_indexed: set[tuple[str, str]] = set()  # (redacted URI, database) whose indexes exist


def _variables_hint(block_cls: type[Block]) -> str:
    required = getattr(block_cls, "required_env", ())
    fields = getattr(block_cls, "env_fields", {})
    names = list(required) or list(fields.values())
    return ", ".join(names) if names else "(none)"


def load_block(block_cls: type[B], name: str | None = None) -> B:
    """Load the block document ``name`` (default: the class's ``document_name``).

    Returns the block, secrets still wrapped.

    Raises:
        ConfigurationError: no such document, or it no longer validates; the message names
            the block (type/name), the environment variable(s) to set and ``botai bootstrap``.
        ServiceUnavailableError: the Prefect API did not answer.
    """
    doc = name or getattr(block_cls, "document_name", None)
    if not doc:
        raise ConfigurationError(f"{block_cls.__name__}: a block document name is required")
    ref = f"{block_cls.get_block_type_slug()}/{doc}"
    try:
        return block_cls.load(doc, _sync=True)
    except ValueError as e:
        if "Unable to find block" not in str(e):
            raise ConfigurationError(f"Block {ref!r} is invalid: {type(e).__name__}") from None
        raise ConfigurationError(
            f"Block {ref!r} ({block_cls.__name__}) does not exist: set "
            f"{_variables_hint(block_cls)} in the environment (see .env.example) and run "
            f"`{BOOTSTRAP_COMMAND}`"
        ) from None
    except RuntimeError as e:  # saved document fails validation against the class
        raise ConfigurationError(
            f"Block {ref!r} ({block_cls.__name__}) no longer validates: set "
            f"{_variables_hint(block_cls)} and run `{BOOTSTRAP_COMMAND}` again"
        ) from e
    except PrefectHTTPStatusError as e:
        raise ServiceUnavailableError(
            f"Prefect API answered {e.response.status_code} while loading block {ref!r}"
        ) from e
    except (httpx.HTTPError, OSError) as e:
        raise ServiceUnavailableError(f"Prefect API unreachable while loading {ref!r}") from e


def load_store(
    name: str | None = None,
    *,
    ensure_indexes: bool = True,
    retry_s: float | None = None,
    timeout_ms: int | None = None,
    socket_timeout_ms: int | None = None,
    settings: Settings | None = None,
) -> Store:
    """Return the :class:`Store` of the ``mongodb`` block (indexes created once per process).

    Every call of one process shares one pymongo client per URI and timeouts.

    Args:
        retry_s: retry budget of each idempotent store call (default: ``store_retry_s``,
            60 s, so a job rides out a store restart; the gateway passes a few seconds).
        timeout_ms: server-selection and connect timeout (default: ``store_timeout_ms``).
        socket_timeout_ms: how long one operation may wait (default: the client's, >= 30 s).
        settings: where the defaults and the retention come from (default: the environment).

    Raises:
        ConfigurationError: the block is missing (names MONGODB_URI and ``botai bootstrap``),
            or the retention settings name a collection that never expires.
        ServiceUnavailableError: the Prefect API or MongoDB did not answer.
    """
    from blocks.mongodb import MongoDBBlock

    settings = settings or load_settings()
    try:
        retention = Retention(settings.retention_days, settings.retention_overrides)
    except ValueError as e:
        raise ConfigurationError(f"BOTAI_RETENTION_OVERRIDES: {e}") from None
    block = load_block(MongoDBBlock, name)
    store = block.get_store(
        timeout_ms=timeout_ms or settings.store_timeout_ms,
        retry_s=settings.store_retry_s if retry_s is None else retry_s,
        retention=retention,
        socket_timeout_ms=socket_timeout_ms,
    )
    key = (block.display_uri(), block.database)
    if ensure_indexes and key not in _indexed:
        store.ensure_indexes()
        _indexed.add(key)
    return store
