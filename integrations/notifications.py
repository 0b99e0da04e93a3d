"""Notifications: Slack (incoming webhook) and e-mail (SMTP), routed by level, de-duplicated.

* :class:`SlackSender` posts through ``slack_sdk.webhook.WebhookClient``.
* :class:`EmailSender` sends through ``smtplib`` (STARTTLS, SSL or plain).
* :class:`Notifier` routes: ``critical`` -> Slack and e-mail; ``warning`` and ``info`` -> Slack
  (``urgent=True`` adds e-mail at any level). An alert identical to one sent within
  ``cooldown_s`` (same level, title and message, or the same ``dedupe_key``) is suppressed;
  the state lives in the MongoDB ``alerts`` collection. A delivery failure is logged and
  recorded with the alert, never raised. Secrets (webhook URL, SMTP password) never appear
  in logs, results or exceptions.

Used by the monitoring flows and by issue 6 (LLM self-analysis, emergency strategy disable).
"""

from __future__ import annotations

import hashlib
import logging
import smtplib
import ssl
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import TYPE_CHECKING

from slack_sdk.webhook import WebhookClient

from core.exceptions import PeerRejectedError, ServiceUnavailableError
from core.schemas.monitoring import ChannelOutcome, Level, NotificationResult

if TYPE_CHECKING:
    from integrations.store import Store

log = logging.getLogger(__name__)

_EMOJI = {"info": "ℹ️", "warning": "⚠️", "critical": "🚨"}


class SlackSender:
    """Posts messages to one Slack incoming webhook.

    Args:
        webhook_url: the secret webhook URL (kept private: not in repr, logs or errors).
        channel: optional channel override (``#alerts``).
        timeout_s: HTTP timeout.
    """

    def __init__(self, webhook_url: str, channel: str | None = None, timeout_s: float = 10.0):
        self._url = webhook_url
        self.channel = channel
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"SlackSender(channel={self.channel!r}, webhook_url='***')"

    def send(self, level: Level, title: str, message: str) -> None:
        """Post one message. Returns None.

        Raises:
            ServiceUnavailableError: no answer, timeout or HTTP 5xx.
            PeerRejectedError: Slack answered 4xx (e.g. a revoked webhook).
        """
        text = f"{_EMOJI[level]} *{title}*\n{message}"
        body: dict = {"text": text}
        if self.channel:
            body["channel"] = self.channel
        # slack_sdk logs the full (secret) URL at DEBUG: give it a logger that never does.
        sdk_log = logging.getLogger(f"{__name__}.slack_sdk")
        sdk_log.setLevel(logging.WARNING)
        client = WebhookClient(
            self._url, timeout=max(1, int(round(self.timeout_s))), logger=sdk_log
        )
        try:
            resp = client.send_dict(body)
        except Exception as e:  # urllib errors, timeouts, DNS
            raise ServiceUnavailableError(
                f"Slack webhook unreachable: {type(e).__name__}"
            ) from None
        if resp.status_code >= 500:
            raise ServiceUnavailableError(f"Slack webhook answered HTTP {resp.status_code}")
        if resp.status_code >= 400:
            raise PeerRejectedError(
                f"Slack webhook rejected the message: HTTP {resp.status_code} {resp.body[:100]!r}"
            )


class EmailSender:
    """Sends plain-text e-mail through one SMTP server.

    Args:
        security: ``starttls`` (upgrade after connect), ``ssl`` (TLS from the start) or ``none``.
        username, password: login, or None for none (the password is never shown).
    """

    def __init__(
        self,
        host: str,
        port: int,
        security: str,
        username: str | None,
        password: str | None,
        sender: str,
        recipients: list[str],
        timeout_s: float = 10.0,
    ) -> None:
        if security not in ("starttls", "ssl", "none"):
            raise ValueError("security must be starttls, ssl or none")
        self.host, self.port, self.security = host, port, security
        self.username = username
        self._password = password
        self.sender = sender
        self.recipients = list(recipients)
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return (
            f"EmailSender(host={self.host!r}, port={self.port}, security={self.security!r}, "
            f"username={self.username!r}, password='***', recipients={self.recipients!r})"
        )

    def send(self, subject: str, body: str) -> None:
        """Send one message to every recipient. Returns None.

        Raises:
            ServiceUnavailableError: connection refused, timeout or SMTP 4xx.
            PeerRejectedError: login refused or SMTP 5xx (recipients/sender rejected).
        """
        msg = EmailMessage()
        msg["Subject"] = subject
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg.set_content(body)
        where = f"SMTP {self.host}:{self.port}"
        try:
            if self.security == "ssl":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    self.host,
                    self.port,
                    timeout=self.timeout_s,
                    context=ssl.create_default_context(),
                )
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
            with smtp:
                if self.security == "starttls":
                    smtp.starttls(context=ssl.create_default_context())
                if self.username:
                    smtp.login(self.username, self._password or "")
                smtp.send_message(msg)
        except smtplib.SMTPAuthenticationError as e:
            raise PeerRejectedError(f"{where} refused the login (code {e.smtp_code})") from None
        except smtplib.SMTPResponseException as e:
            cls = ServiceUnavailableError if 400 <= e.smtp_code < 500 else PeerRejectedError
            raise cls(f"{where} answered {e.smtp_code}") from None
        except smtplib.SMTPRecipientsRefused:
            raise PeerRejectedError(f"{where} refused every recipient") from None
        except (smtplib.SMTPException, OSError) as e:
            raise ServiceUnavailableError(f"{where} unreachable: {type(e).__name__}") from None


def fingerprint(level: str, title: str, message: str, dedupe_key: str | None = None) -> str:
    """Return the de-duplication key of an alert (sha256 of the key or level+title+message)."""
    raw = dedupe_key if dedupe_key is not None else f"{level}\x00{title}\x00{message}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


class Notifier:
    """Routes alerts to Slack/e-mail by level and suppresses repeats within a cool-down.

    Args:
        slack, email: the channels (None: not configured; a route to it is recorded as failed
            with reason "not configured").
        store: where alerts are recorded and the cool-down is checked (None: no de-duplication).
        cooldown_s: an identical alert within this many seconds is suppressed.
    """

    def __init__(
        self,
        slack: SlackSender | None,
        email: EmailSender | None,
        store: Store | None,
        cooldown_s: float,
    ) -> None:
        self.slack, self.email, self.store, self.cooldown_s = slack, email, store, cooldown_s

    @staticmethod
    def channels_for(level: Level, urgent: bool = False) -> list[str]:
        """Channels a ``level`` alert goes to: critical or urgent -> slack+email, else slack."""
        return ["slack", "email"] if level == "critical" or urgent else ["slack"]

    def notify(
        self,
        level: Level,
        title: str,
        message: str,
        *,
        urgent: bool = False,
        dedupe_key: str | None = None,
        channels: list[str] | None = None,
    ) -> NotificationResult:
        """Send one alert. Never raises for delivery problems.

        Args:
            urgent: also e-mail (whatever the level) and mark the subject URGENT.
            dedupe_key: what makes two alerts "identical" (default: level + title + message).
            channels: explicit channels (e.g. ``["slack", "email"]`` for a daily report),
                overriding the routing by level.

        Returns:
            channels attempted, delivered and failed (with reasons), and ``suppressed`` when an
            identical alert went out within the cool-down (then nothing is attempted).
        """
        if level not in _EMOJI:
            raise ValueError(f"level must be info, warning or critical, not {level!r}")
        fp = fingerprint(level, title, message, dedupe_key)
        now = datetime.now(UTC)
        result = NotificationResult(level=level, title=title)
        if self.store is not None and self.cooldown_s > 0:
            try:
                last = self.store.alert_last_sent(fp)
            except Exception as e:  # the store being down must not stop the alert
                log.warning("alert cool-down check skipped: %s", type(e).__name__)
                last = None
            if last is not None and (now - last).total_seconds() < self.cooldown_s:
                result.suppressed = True
                log.info("alert suppressed (cool-down %.0fs): %s", self.cooldown_s, title)
                self._record(fp, now, result, message, urgent)
                return result
        subject = f"[{level.upper()}{' URGENT' if urgent else ''}] {title}"
        for channel in channels or self.channels_for(level, urgent):
            result.attempted.append(channel)
            try:
                if channel == "slack":
                    if self.slack is None:
                        raise LookupError("not configured")
                    self.slack.send(level, subject if urgent else title, message)
                else:
                    if self.email is None:
                        raise LookupError("not configured")
                    self.email.send(subject, message)
            except Exception as e:
                reason = str(e) or type(e).__name__
                result.failed[channel] = reason
                result.outcomes.append(
                    ChannelOutcome(channel=channel, delivered=False, error=reason)
                )
                log.warning("alert %r not delivered by %s: %s", title, channel, reason)
            else:
                result.delivered.append(channel)
                result.outcomes.append(ChannelOutcome(channel=channel, delivered=True))
        self._record(fp, now, result, message, urgent)
        return result

    def _record(
        self, fp: str, now: datetime, result: NotificationResult, message: str, urgent: bool
    ) -> None:
        if self.store is None:
            return
        try:
            self.store.alert_record(
                {
                    "fingerprint": fp,
                    "created_at": now,
                    "level": result.level,
                    "title": result.title,
                    "message": message,
                    "urgent": urgent,
                    "suppressed": result.suppressed,
                    "attempted": result.attempted,
                    "delivered": result.delivered,
                    "failed": result.failed,
                    "sent": bool(result.delivered),
                }
            )
        except Exception as e:
            log.warning("alert not recorded in MongoDB: %s", type(e).__name__)
