"""Notifications for flows: a :class:`Notifier` built from the slack/smtp blocks, and a task.

A missing block means the channel is not configured (logged once, recorded as a failed
channel with reason "not configured"); it never fails the flow.
"""

from __future__ import annotations

import logging

from prefect import task
from prefect.cache_policies import NONE

from core.exceptions import BotAIError
from core.schemas.monitoring import Level, NotificationResult
from core.settings import Settings, load_settings
from integrations.notifications import EmailSender, Notifier, SlackSender
from integrations.store import Store

log = logging.getLogger(__name__)


def load_senders() -> tuple[SlackSender | None, EmailSender | None]:
    """The Slack and e-mail senders of the "slack" and "smtp" blocks (None when not set up)."""
    from blocks.loader import load_block
    from blocks.slack import SlackBlock
    from blocks.smtp import SMTPBlock

    senders: list = []
    for cls in (SlackBlock, SMTPBlock):
        try:
            senders.append(load_block(cls).get_client())
        except BotAIError as e:
            log.warning("%s notifications off: %s", cls.__name__, e)
            senders.append(None)
    return senders[0], senders[1]


def build_notifier(store: Store | None, settings: Settings | None = None) -> Notifier:
    """A :class:`Notifier` over the configured channels, de-duplicating through ``store``.

    Returns the notifier (``settings.alert_cooldown_s`` cool-down).
    """
    settings = settings or load_settings()
    slack, email = load_senders()
    return Notifier(slack=slack, email=email, store=store, cooldown_s=settings.alert_cooldown_s)


@task(name="send-notification", cache_policy=NONE)
def send_notification(
    notifier: Notifier,
    level: Level,
    title: str,
    message: str,
    *,
    urgent: bool = False,
    dedupe_key: str | None = None,
    channels: list[str] | None = None,
) -> NotificationResult:
    """Send one alert through ``notifier``. Returns what was delivered; never raises on delivery."""
    return notifier.notify(
        level, title, message, urgent=urgent, dedupe_key=dedupe_key, channels=channels
    )
