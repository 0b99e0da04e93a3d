"""MongoDB block: the store's URI (secret, it may hold a password) and database name."""

from __future__ import annotations

from typing import ClassVar

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr, field_validator

from blocks._common import BlockEnv, no_placeholder
from core.redact import check_not_placeholder, redact_uri
from integrations.store import Retention, Store, shared_client


class MongoDBBlock(BlockEnv, Block):
    """Where the platform's MongoDB (or the embedded nx-27017 store) lives."""

    _block_type_name = "BotAI MongoDB"
    _block_type_slug = "botai-mongodb"
    _description = "MongoDB URI (secret) and database of the bot-ai task platform."

    model_config = ConfigDict(hide_input_in_errors=True)  # inputs may be secrets

    document_name: ClassVar[str] = "mongodb"
    env_fields: ClassVar[dict[str, str]] = {
        "uri": "MONGODB_URI",
        "database": "MONGODB_DATABASE",
    }
    required_env: ClassVar[tuple[str, ...]] = ()

    uri: SecretStr = Field(description="mongodb:// or mongodb+srv:// URI; may contain a password.")
    database: str = Field(default="bot_ai", description="Database name.")

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, v: SecretStr) -> SecretStr:
        raw = v.get_secret_value()
        if not raw.startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("MONGODB_URI must start with mongodb:// or mongodb+srv://")
        if "@" in raw.split("://", 1)[1].split("/", 1)[0]:
            userinfo = raw.split("://", 1)[1].split("/", 1)[0].rpartition("@")[0]
            check_not_placeholder(userinfo.partition(":")[2] or None, "MONGODB_URI (password)")
        return no_placeholder(v, "MONGODB_URI")  # type: ignore[return-value]

    def display_uri(self) -> str:
        """The URI with its password masked (``mongodb://user:***@host``)."""
        return redact_uri(self.uri.get_secret_value())

    def get_store(
        self,
        *,
        timeout_ms: int = 5000,
        retry_s: float = 0.0,
        retention: Retention | None = None,
        socket_timeout_ms: int | None = None,
    ) -> Store:
        """Return a :class:`Store` on this block's database.

        Args:
            timeout_ms: server-selection and connect timeout.
            retry_s: retry budget of each idempotent store call on temporary errors.
            retention: what expires when (default: 7 days, health reports 30).
            socket_timeout_ms: how long one operation may wait for its answer.

        Returns:
            a store on the process's shared client for this URI and these timeouts
            (:func:`integrations.store.shared_client`); ``close()`` leaves it open.
        """
        client = shared_client(
            self.uri.get_secret_value(), timeout_ms=timeout_ms, socket_timeout_ms=socket_timeout_ms
        )
        return Store(
            client,
            self.database,
            retry_s=retry_s,
            retention=retention,
            uri_label=self.display_uri(),
        )
