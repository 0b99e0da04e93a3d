"""Slack block: incoming-webhook URL (secret) and an optional channel override."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr, field_validator

from blocks._common import BlockEnv, no_placeholder

if TYPE_CHECKING:
    from integrations.notifications import SlackSender


class SlackBlock(BlockEnv, Block):
    """Where Slack notifications go."""

    _block_type_name = "BotAI Slack"
    _block_type_slug = "botai-slack"
    _description = "Slack incoming webhook (secret URL) and channel."

    model_config = ConfigDict(hide_input_in_errors=True)  # inputs may be secrets

    document_name: ClassVar[str] = "slack"
    env_fields: ClassVar[dict[str, str]] = {
        "webhook_url": "SLACK_WEBHOOK_URL",
        "channel": "SLACK_CHANNEL",
    }
    required_env: ClassVar[tuple[str, ...]] = ("SLACK_WEBHOOK_URL",)

    webhook_url: SecretStr = Field(description="https://hooks.slack.com/services/... URL.")
    channel: str | None = Field(default=None, description="Channel override, e.g. #alerts.")

    @field_validator("webhook_url")
    @classmethod
    def _check_url(cls, v: SecretStr) -> SecretStr:
        if not v.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("SLACK_WEBHOOK_URL must be an http(s) URL")
        return no_placeholder(v, "SLACK_WEBHOOK_URL")  # type: ignore[return-value]

    def get_client(self) -> SlackSender:
        """Return an ``integrations.notifications.SlackSender`` posting to this webhook."""
        from integrations.notifications import SlackSender

        return SlackSender(webhook_url=self.webhook_url.get_secret_value(), channel=self.channel)
