"""SMTP block: server, security mode, login (password secret), sender and recipients."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr, field_validator

from blocks._common import BlockEnv, no_placeholder

if TYPE_CHECKING:
    from integrations.notifications import EmailSender

#: Default port of each security mode.
DEFAULT_SMTP_PORTS = {"starttls": 587, "ssl": 465, "none": 25}


class SMTPBlock(BlockEnv, Block):
    """An SMTP server that sends the platform's e-mail."""

    _block_type_name = "BotAI SMTP"
    _block_type_slug = "botai-smtp"
    _description = "SMTP e-mail: host, port, STARTTLS/SSL, login (password secret), recipients."

    model_config = ConfigDict(hide_input_in_errors=True)  # inputs may be secrets

    document_name: ClassVar[str] = "smtp"
    env_fields: ClassVar[dict[str, str]] = {
        "host": "SMTP_HOST",
        "port": "SMTP_PORT",
        "security": "SMTP_SECURITY",
        "username": "SMTP_USERNAME",
        "password": "SMTP_PASSWORD",
        "sender": "SMTP_SENDER",
        "recipients": "SMTP_RECIPIENTS",
    }
    required_env: ClassVar[tuple[str, ...]] = ("SMTP_HOST", "SMTP_SENDER", "SMTP_RECIPIENTS")

    host: str = Field(description="SMTP server host name.")
    port: int = Field(default=587, ge=1, le=65535, description="SMTP port.")
    security: Literal["starttls", "ssl", "none"] = Field(
        default="starttls", description="starttls (587), ssl (465) or none (25, local only)."
    )
    username: str | None = Field(default=None, description="Login user; None: no login.")
    password: SecretStr | None = Field(default=None, description="Login password.")
    sender: str = Field(description="From address.")
    recipients: list[str] = Field(min_length=1, description="To addresses.")

    @field_validator("password")
    @classmethod
    def _check_password(cls, v: SecretStr | None) -> SecretStr | None:
        return no_placeholder(v, "SMTP_PASSWORD")

    @field_validator("sender")
    @classmethod
    def _check_sender(cls, v: str) -> str:
        if "@" not in v:
            raise ValueError("SMTP_SENDER must be an e-mail address")
        return v

    @field_validator("recipients")
    @classmethod
    def _check_recipients(cls, v: list[str]) -> list[str]:
        bad = [r for r in v if "@" not in r]
        if bad:
            raise ValueError(f"SMTP_RECIPIENTS holds entries that are not e-mail addresses: {bad}")
        return v

    def get_client(self) -> EmailSender:
        """Return an ``integrations.notifications.EmailSender`` for this server."""
        from integrations.notifications import EmailSender

        return EmailSender(
            host=self.host,
            port=self.port,
            security=self.security,
            username=self.username,
            password=self.password.get_secret_value() if self.password else None,
            sender=self.sender,
            recipients=list(self.recipients),
        )
