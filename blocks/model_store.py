"""Model store block: folder of saved models and the AES-256 key (secret) that encrypts them."""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import ClassVar

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr, field_validator

from blocks._common import BlockEnv, no_placeholder
from core.exceptions import ConfigurationError

KEY_BYTES = 32


def generate_model_key() -> str:
    """Return a fresh random AES-256 key as base64 text (32 random bytes)."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def decode_model_key(text: str) -> bytes:
    """Decode a base64 AES-256 key.

    Returns the 32 key bytes.

    Raises:
        ValueError: not base64, or not 32 bytes (the message never shows the key).
    """
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            "MODEL_STORE_KEY must be base64 of 32 random bytes "
            "(generate one: python -c 'import base64,os;print(base64.b64encode(os.urandom(32)).decode())')"
        ) from None
    if len(raw) != KEY_BYTES:
        raise ValueError(f"MODEL_STORE_KEY must decode to {KEY_BYTES} bytes, got {len(raw)}")
    return raw


class ModelStoreBlock(BlockEnv, Block):
    """Where trained models are kept, encrypted with AES-256."""

    _block_type_name = "BotAI Model Store"
    _block_type_slug = "botai-model-store"
    _description = "Folder of saved models and the AES-256 key (secret, base64 of 32 bytes)."

    model_config = ConfigDict(hide_input_in_errors=True)  # inputs may be secrets

    document_name: ClassVar[str] = "model-store"
    env_fields: ClassVar[dict[str, str]] = {
        "directory": "MODEL_STORE_DIR",
        "key": "MODEL_STORE_KEY",
    }
    required_env: ClassVar[tuple[str, ...]] = ()

    directory: str = Field(description="Folder holding model files.")
    key: SecretStr = Field(description="AES-256 key, base64 of 32 bytes.")

    @field_validator("key")
    @classmethod
    def _check_key(cls, v: SecretStr) -> SecretStr:
        no_placeholder(v, "MODEL_STORE_KEY")
        decode_model_key(v.get_secret_value())
        return v

    def get_key(self) -> bytes:
        """Return the 32 key bytes.

        Raises:
            ConfigurationError: the stored key is not base64 of 32 bytes.
        """
        try:
            return decode_model_key(self.key.get_secret_value())
        except ValueError as e:
            raise ConfigurationError(str(e)) from None
