"""What every credential block shares: its document name and the environment variables behind it."""

from __future__ import annotations

from typing import ClassVar

from pydantic import SecretStr

from core.redact import check_not_placeholder, redact_mapping


class BlockEnv:
    """Mixin of class-level facts the bootstrap step and the loader need.

    Attributes:
        document_name: the block document every flow loads (e.g. ``"mongodb"``).
        env_fields: field name -> environment variable it is created from.
        required_env: variables without which the bootstrap step does not create the block.
    """

    document_name: ClassVar[str]
    env_fields: ClassVar[dict[str, str]]
    required_env: ClassVar[tuple[str, ...]]

    def describe(self) -> dict[str, object]:
        """Return the block's fields for display, every secret masked."""
        fields = type(self).model_fields  # type: ignore[attr-defined]
        return redact_mapping({name: getattr(self, name) for name in fields})


def no_placeholder(value: SecretStr | None, variable: str) -> SecretStr | None:
    """Validator helper: reject a placeholder secret, naming ``variable``.

    Raises:
        ValueError: the secret is a placeholder such as ``changeme`` or ``your-api-key``.
    """
    if value is not None:
        check_not_placeholder(value.get_secret_value(), variable)
    return value
