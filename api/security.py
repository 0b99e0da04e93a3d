"""JWT verification (and issuing, for operators and tests) with PyJWT.

A token is HS256-signed by the bot's main service with the shared ``BOTAI_API_JWT_SECRET``.
Claims: ``sub`` (the user id, required), ``exp`` (required), ``role`` (``admin`` for admins;
anything else or absent is a regular user), ``aud`` when ``BOTAI_API_JWT_AUDIENCE`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

from api.settings import ApiSettings


class AuthenticationError(Exception):
    """The request carries no valid token (HTTP 401). The message says what is wrong."""


@dataclass(frozen=True)
class Principal:
    """Who sent a request."""

    user: str
    is_admin: bool


def decode_token(token: str, settings: ApiSettings) -> Principal:
    """Verify ``token``'s signature, expiry and claims.

    Returns:
        the :class:`Principal`.

    Raises:
        AuthenticationError: bad signature, expired, malformed, or without ``sub``/``exp``.
    """
    try:
        claims = jwt.decode(
            token,
            settings.jwt_secret.get_secret_value(),
            algorithms=[settings.jwt_algorithm],
            audience=settings.jwt_audience,
            options={"require": ["exp", "sub"], "verify_aud": settings.jwt_audience is not None},
        )
    except jwt.ExpiredSignatureError as e:
        raise AuthenticationError("token expired: get a new one") from e
    except jwt.InvalidTokenError as e:
        raise AuthenticationError(f"invalid token: {e}") from e
    user = str(claims["sub"]).strip()
    if not user:
        raise AuthenticationError("invalid token: empty 'sub' claim")
    return Principal(user=user, is_admin=claims.get("role") == settings.admin_role)


def issue_token(
    settings: ApiSettings, user: str, *, admin: bool = False, ttl: timedelta = timedelta(hours=1)
) -> str:
    """Sign a token for ``user`` valid for ``ttl`` (operators' CLI and tests).

    Returns:
        the encoded JWT.
    """
    now = datetime.now(UTC)
    claims: dict[str, object] = {
        "sub": user,
        "role": settings.admin_role if admin else "user",
        "iat": now,
        "exp": now + ttl,
    }
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    return jwt.encode(claims, settings.jwt_secret.get_secret_value(), settings.jwt_algorithm)
