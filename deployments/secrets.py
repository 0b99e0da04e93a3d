"""The stack's own secrets, and which process gets which secret.

* The Prefect API auth string (``botai:<random>``): the server requires it on every API call
  but ``/health`` (``PREFECT_SERVER_API_AUTH_STRING``); the worker, the flow runs, the gateway,
  ``prefect deploy`` and the ``botai`` commands send it (``PREFECT_API_AUTH_STRING``).
* The server's encryption key (a Fernet key, ``PREFECT_SERVER_ENCRYPTION_KEY``): Prefect
  encrypts block documents (the SMTP password, the LLM key...) with it. Without it Prefect
  generates one and stores it in its own database, beside the data it protects.

Both are generated once per state folder into ``<state_dir>/secrets/`` (folder 0700, files
0600) and never logged or printed. A secret reaches only the environment of a process that
needs it: the embedded store gets none, the server alone the encryption key, the gateway alone
the JWT secret, and no child the block credentials the bootstrap step reads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from core.exceptions import ConfigurationError
from core.settings import Settings

log = logging.getLogger(__name__)

AUTH_USER = "botai"
ENCRYPTION_KEY_FILE = "prefect-encryption-key"

#: The gateway's JWT signing secret: only the gateway process gets it.
GATEWAY_SECRET = "BOTAI_API_JWT_SECRET"
#: Secrets of the Prefect API itself; added per process by :func:`client_env`/:func:`server_env`.
PREFECT_SECRETS = (
    "PREFECT_API_AUTH_STRING",
    "PREFECT_API_KEY",
    "PREFECT_SERVER_API_AUTH_STRING",
    "PREFECT_SERVER_ENCRYPTION_KEY",
    "ORION_ENCRYPTION_KEY",
)
#: What the embedded store inherits from the environment (nothing else: no secret can leak).
STORE_ENV_ALLOWED = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ", "USER")


def secrets_dir(settings: Settings) -> Path:
    """``<state_dir>/secrets``: the stack's generated secrets (mode 0700)."""
    return settings.state_dir / "secrets"


def _private_file(path: Path, make: str) -> str:
    """Returns the content of ``path``, created with ``make`` (mode 0600) when absent.

    A file or folder readable by others is put back to 0600/0700.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.parent.stat().st_mode & 0o077:
        path.parent.chmod(0o700)
    if not path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first: use theirs
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(make + "\n")
            log.info("generated %s", path)
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return path.read_text().strip()


def auth_string_path(settings: Settings) -> Path:
    """The file holding the Prefect API auth string."""
    return settings.prefect_auth_string_path


def prefect_auth_string(settings: Settings) -> str:
    """Returns the Prefect API auth string of this state folder, generated on first use.

    Raises:
        ConfigurationError: the file does not hold ``user:password``.
    """
    path = auth_string_path(settings)
    value = _private_file(path, f"{AUTH_USER}:{secrets.token_urlsafe(32)}")
    user, _, password = value.partition(":")
    if not user or len(password) < 16:
        raise ConfigurationError(
            f"{path} must hold 'user:password' with a password of 16+ characters: "
            "delete it to generate a new one (then restart the stack)"
        )
    return value


def existing_auth_string(settings: Settings) -> str | None:
    """Returns the auth string when this state folder has one, else None (nothing created)."""
    path = auth_string_path(settings)
    return prefect_auth_string(settings) if path.exists() else None


def client_env(settings: Settings) -> dict[str, str]:
    """Returns the variables a Prefect client needs to call the stack's API."""
    return {"PREFECT_API_AUTH_STRING": prefect_auth_string(settings)}


def _db_key(database_url: str, *, forget: bool = False) -> str | None:
    """Returns the Fernet key a Prefect database stores for itself, or None (no database yet,
    no key, or unreadable). ``forget``: delete it from the database instead (once adopted, it
    must not lie beside the data it protects)."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and not (url.database and Path(url.database).exists()):
        return None

    async def read() -> object:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                if forget:
                    await conn.execute(
                        sa.text("DELETE FROM configuration WHERE key = 'ENCRYPTION_KEY'")
                    )
                    return None
                row = (
                    await conn.execute(
                        sa.text("SELECT value FROM configuration WHERE key = 'ENCRYPTION_KEY'")
                    )
                ).first()
            return row[0] if row else None
        finally:
            await engine.dispose()

    try:  # in a thread of its own: the caller may run inside an event loop
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            value = pool.submit(asyncio.run, read()).result(timeout=30)
    except Exception as e:  # noqa: BLE001 - no table yet, driver missing, DB down: no key
        log.info("no encryption key read from the Prefect database (%s)", type(e).__name__)
        return None
    if isinstance(value, str):
        value = json.loads(value)
    return value.get("fernet_key") if isinstance(value, dict) else None


def server_encryption_key(settings: Settings, database_url: str) -> str:
    """Returns the Fernet key the Prefect server encrypts block documents with.

    Kept in ``<state_dir>/secrets/prefect-encryption-key``. When that file does not exist yet
    but the Prefect database (``database_url``) already holds blocks encrypted with a key of
    its own, that key is moved into the file (the blocks stay readable, and the database no
    longer holds its key); otherwise a new one is generated.

    Raises:
        ConfigurationError: the file does not hold a Fernet key.
    """
    from cryptography.fernet import Fernet

    path = secrets_dir(settings) / ENCRYPTION_KEY_FILE
    if path.exists():
        key = _private_file(path, "")
    else:
        adopted = _db_key(database_url)
        key = _private_file(path, adopted or Fernet.generate_key().decode())
        if adopted and key == adopted:
            _db_key(database_url, forget=True)
            log.info("moved the Prefect database's own encryption key to %s", path)
    try:
        Fernet(key.encode())
    except ValueError:
        raise ConfigurationError(
            f"{path} does not hold a Fernet key (32 url-safe base64-encoded bytes); "
            "restore it from a backup: block documents encrypted with it are unreadable without it"
        ) from None
    return key


def server_env(settings: Settings, database_url: str) -> dict[str, str]:
    """Returns the variables only the Prefect server gets: the auth string it requires (and
    sends to itself) and its encryption key."""
    auth = prefect_auth_string(settings)
    return {
        "PREFECT_SERVER_API_AUTH_STRING": auth,
        "PREFECT_API_AUTH_STRING": auth,
        "PREFECT_SERVER_ENCRYPTION_KEY": server_encryption_key(settings, database_url),
    }


def block_secret_variables() -> tuple[str, ...]:
    """Returns the environment variables the bootstrap step turns into secret block fields
    (``LLM_API_KEY``, ``SMTP_PASSWORD``, ``MONGODB_URI``...): read once by ``botai up``/
    ``botai bootstrap``, needed by no child (flows load the blocks)."""
    from blocks import ALL_BLOCKS

    names = []
    for cls in ALL_BLOCKS:
        for field, variable in cls.env_fields.items():
            if "SecretStr" in str(cls.model_fields[field].annotation):
                names.append(variable)
    return tuple(names)


def without_secrets(environ: Mapping[str, str]) -> dict[str, str]:
    """Returns ``environ`` without the gateway's JWT secret, the block credentials and the
    Prefect API secrets (those are added back per process)."""
    dropped = {GATEWAY_SECRET, "BOTAI_MONGODB_URI", *PREFECT_SECRETS, *block_secret_variables()}
    return {k: v for k, v in environ.items() if k not in dropped}


def store_env(environ: Mapping[str, str]) -> dict[str, str]:
    """Returns the environment of the embedded store: :data:`STORE_ENV_ALLOWED` only."""
    return {k: environ[k] for k in STORE_ENV_ALLOWED if k in environ}
