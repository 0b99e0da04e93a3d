"""Masking of secrets wherever configuration is shown to people (CLI, logs, API answers).

Two jobs:

* :func:`redact_uri` / :func:`redact_mapping` hide credentials before a value is displayed.
* :func:`check_not_placeholder` rejects placeholder secrets copied from ``.env.example``
  (``changeme``, ``your-api-key``, ``xxx``...) with a message naming the variable to set.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretBytes, SecretStr

MASK = "***"

#: Key fragments that mark a value as secret in a mapping shown to users.
SECRET_KEY_PARTS = ("password", "passwd", "secret", "token", "api_key", "apikey", "key", "webhook")

_PLACEHOLDER_RE = re.compile(
    r"^(?:"
    r"change[-_ ]?me.*|"
    r"<.*>|"
    r"\$\{.*\}|"
    r"x{3,}|"
    r"\*+|"
    r"your[-_ ].*|"
    r"replace[-_ ]?me.*|"
    r"placeholder|todo|tbd|fixme|"
    r"sk-(?:x+|\.+|your.*|\*+)"
    r")$",
    re.IGNORECASE,
)


def is_placeholder(value: str) -> bool:
    """True when ``value`` looks like a placeholder rather than a real secret.

    Examples of placeholders: ``changeme``, ``CHANGE_ME``, ``your-api-key``, ``xxx``,
    ``<token>``, ``${SECRET}``, ``sk-xxxx``. An empty string is not a placeholder (it means unset).
    """
    v = value.strip()
    return bool(v) and bool(_PLACEHOLDER_RE.match(v))


def check_not_placeholder(value: str | None, variable: str) -> str | None:
    """Return ``value`` unchanged unless it is a placeholder secret.

    Raises:
        ValueError: naming ``variable`` and saying to set a real value or unset it.
            (A ``ValueError`` so pydantic validators turn it into a validation error.)
    """
    if value is not None and is_placeholder(value):
        raise ValueError(
            f"{variable} holds a placeholder value, not a real secret: set it to the real "
            f"value or leave it unset"
        )
    return value


def redact_uri(uri: str) -> str:
    """Mask the password of a URI (``mongodb://user:***@host/db``) and secret query values.

    Returns the URI unchanged when it holds no credentials.
    """
    try:
        parts = urlsplit(uri)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{hosts}" if sep else f"{MASK}@{hosts}"
    query = parts.query
    if query:
        pairs = []
        for pair in query.split("&"):
            name, eq, val = pair.partition("=")
            pairs.append(f"{name}={MASK}" if eq and _is_secret_key(name) else pair)
        query = "&".join(pairs)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _is_secret_key(key: str) -> bool:
    k = key.lower().replace("-", "_")
    return any(p in k for p in SECRET_KEY_PARTS)


def redact_value(key: str, value: Any) -> Any:
    """Return ``value`` fit for display under ``key``: secrets masked, URIs stripped of passwords."""
    if isinstance(value, SecretStr | SecretBytes):
        return MASK if value.get_secret_value() else ""
    if isinstance(value, Mapping):
        return redact_mapping(value)
    if isinstance(value, list | tuple):
        return [redact_value(key, v) for v in value]
    if isinstance(value, str):
        if _is_secret_key(key) and value:
            return MASK
        if "://" in value:
            return redact_uri(value)
    return value


def redact_mapping(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``mapping`` with every secret masked (recursively).

    A value is masked when it is a ``SecretStr``/``SecretBytes`` or its key names a secret
    (password, token, key, secret, webhook); URIs keep everything but their password.
    """
    return {str(k): redact_value(str(k), v) for k, v in mapping.items()}
