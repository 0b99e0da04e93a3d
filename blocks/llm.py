"""OpenAI-compatible LLM block: API key (secret), base URL, model and token prices."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr, field_validator

from blocks._common import BlockEnv, no_placeholder

if TYPE_CHECKING:
    import openai


class LLMBlock(BlockEnv, Block):
    """An OpenAI-compatible chat API and what its tokens cost."""

    _block_type_name = "BotAI LLM"
    _block_type_slug = "botai-llm"
    _description = "OpenAI-compatible LLM endpoint: API key (secret), base URL, model, prices."

    model_config = ConfigDict(hide_input_in_errors=True)  # inputs may be secrets

    document_name: ClassVar[str] = "llm"
    env_fields: ClassVar[dict[str, str]] = {
        "api_key": "LLM_API_KEY",
        "base_url": "LLM_BASE_URL",
        "model": "LLM_MODEL",
        "input_usd_per_1m": "LLM_INPUT_USD_PER_1M",
        "output_usd_per_1m": "LLM_OUTPUT_USD_PER_1M",
        "timeout_s": "LLM_TIMEOUT_S",
    }
    required_env: ClassVar[tuple[str, ...]] = ("LLM_API_KEY",)

    api_key: SecretStr = Field(description="API key sent as a bearer token.")
    base_url: str = Field(default="https://api.openai.com/v1", description="API base URL.")
    model: str = Field(default="gpt-4o-mini", description="Model name.")
    input_usd_per_1m: float = Field(default=0.15, ge=0, description="USD per 1M input tokens.")
    output_usd_per_1m: float = Field(default=0.60, ge=0, description="USD per 1M output tokens.")
    timeout_s: float = Field(default=60.0, gt=0, description="Request timeout in seconds.")

    @field_validator("api_key")
    @classmethod
    def _check_key(cls, v: SecretStr) -> SecretStr:
        return no_placeholder(v, "LLM_API_KEY")  # type: ignore[return-value]

    def get_client(self) -> openai.OpenAI:
        """Return an ``openai.OpenAI`` client for this endpoint (no network I/O yet)."""
        import openai

        return openai.OpenAI(
            api_key=self.api_key.get_secret_value(), base_url=self.base_url, timeout=self.timeout_s
        )
