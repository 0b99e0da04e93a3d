"""Gateway settings: environment (``BOTAI_API_*``) -> :class:`ApiSettings` -> the app.

The JWT secret is the one secret read here: the gateway verifies tokens signed by the bot's
main service with the same shared secret, so it must exist before the app starts. Settings
reject a missing, short or placeholder secret, and never show it (``SecretStr``).
"""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Values copied from examples that must never sign production tokens.
PLACEHOLDER_SECRETS = {"changethis", "change-me", "changeme", "secret", "your-secret-here"}
MIN_SECRET_CHARS = 32


class ApiSettings(BaseSettings):
    """Configuration of one gateway process."""

    model_config = SettingsConfigDict(
        env_prefix="BOTAI_API_", extra="ignore", env_ignore_empty=True
    )

    jwt_secret: SecretStr = Field(
        description="HS256 secret shared with the service that issues the users' tokens "
        f"(>= {MIN_SECRET_CHARS} characters).",
    )
    jwt_algorithm: str = Field(default="HS256", description="JWT signature algorithm.")
    jwt_audience: str | None = Field(
        default=None, description="Required 'aud' claim; unset accepts tokens without one."
    )
    admin_role: str = Field(default="admin", description="Value of the 'role' claim of admins.")
    host: str = Field(default="127.0.0.1", description="Interface the gateway listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port of the gateway.")
    trainings_per_day: int = Field(
        default=10, ge=0, description="train-model runs one user may start per UTC day."
    )
    tasks_per_day: int = Field(
        default=200, ge=0, description="Runs of each other job one user may start per UTC day."
    )
    prefect_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=120,
        description="Seconds the gateway waits for one Prefect API call before answering 503.",
    )
    prefect_retries: int = Field(
        default=2,
        ge=0,
        le=5,
        description="Retries of Prefect API calls answered 5xx or 429 (a busy server), 0.5 s "
        "then 1 s apart. A call that times out or cannot connect is not retried.",
    )
    store_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=120,
        description="Seconds the gateway waits for one store operation before answering 503.",
    )
    cancel_grace_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="A run cancelled after a worker claimed it, before its flow started, is "
        "set Cancelled once its process is gone, or after this many seconds.",
    )
    prefect_ui_url: str | None = Field(
        default=None, description="Prefect UI base URL, to link each task's run page."
    )

    @field_validator("jwt_secret")
    @classmethod
    def _reject_weak_secret(cls, v: SecretStr) -> SecretStr:
        raw = v.get_secret_value()
        if raw.strip().lower() in PLACEHOLDER_SECRETS:
            raise ValueError(
                "is a placeholder; set the secret your token issuer signs "
                "with (e.g. python -c 'import secrets; print(secrets.token_urlsafe(48))')"
            )
        if len(raw) < MIN_SECRET_CHARS:
            raise ValueError(f"must be at least {MIN_SECRET_CHARS} characters (got {len(raw)})")
        return v


def load_api_settings(**overrides: object) -> ApiSettings:
    """Read :class:`ApiSettings` from the environment (``overrides`` win).

    Returns:
        the settings.

    Raises:
        ConfigurationError: a value is missing or invalid; the message names each variable and
            the fix, and never contains the value (pydantic's own error would echo the secret).
    """
    from pydantic import ValidationError

    from core.exceptions import ConfigurationError

    try:
        return ApiSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as e:
        problems = []
        for err in e.errors(include_input=False, include_url=False):
            name = "BOTAI_API_" + "_".join(str(p) for p in err["loc"]).upper()
            msg = (
                "is required"
                if err["type"] == "missing"
                else err["msg"].removeprefix("Value error, ")
            )
            problems.append(f"{name}: {msg}")
        raise ConfigurationError("gateway settings invalid: " + "; ".join(problems)) from None
