"""Trading engine block: base URL of the bot's Rust engine HTTP API, bearer token (secret), timeout."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr, field_validator

from blocks._common import BlockEnv, no_placeholder

if TYPE_CHECKING:
    from integrations.trading_engine import TradingEngineClient


class TradingEngineBlock(BlockEnv, Block):
    """The trading engine's HTTP API."""

    _block_type_name = "BotAI Trading Engine"
    _block_type_slug = "botai-trading-engine"
    _description = "HTTP API of the trading engine: base URL, token (secret), timeout."

    model_config = ConfigDict(hide_input_in_errors=True)  # inputs may be secrets

    document_name: ClassVar[str] = "trading-engine"
    env_fields: ClassVar[dict[str, str]] = {
        "base_url": "TRADING_ENGINE_URL",
        "token": "TRADING_ENGINE_TOKEN",
        "timeout_s": "TRADING_ENGINE_TIMEOUT_S",
    }
    required_env: ClassVar[tuple[str, ...]] = ("TRADING_ENGINE_URL",)

    base_url: str = Field(description="e.g. http://127.0.0.1:8080")
    token: SecretStr | None = Field(default=None, description="Bearer token; None: no auth.")
    timeout_s: float = Field(default=10.0, gt=0, description="Request timeout in seconds.")

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("TRADING_ENGINE_URL must be an http(s) URL")
        return v.rstrip("/")

    @field_validator("token")
    @classmethod
    def _check_token(cls, v: SecretStr | None) -> SecretStr | None:
        return no_placeholder(v, "TRADING_ENGINE_TOKEN")

    def get_client(self) -> TradingEngineClient:
        """Return an ``integrations.trading_engine.TradingEngineClient`` for this API."""
        from integrations.trading_engine import TradingEngineClient

        return TradingEngineClient(
            base_url=self.base_url,
            token=self.token.get_secret_value() if self.token else None,
            timeout_s=self.timeout_s,
        )
