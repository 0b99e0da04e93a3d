"""How commands of another terminal reach the stack's gateway as its operator.

When the gateway starts (``botai-api serve``, which ``botai up`` runs), it writes into the
state folder:

* ``<state_dir>/run/gateway.json``: ``{"url": "http://127.0.0.1:8000/api"}``;
* ``<state_dir>/secrets/gateway-admin-token`` (0600, like the Prefect auth string beside it):
  an admin token for ``operator:<the account that started the stack>``, valid 30 days and
  signed anew at every start. Changes made with it are audited under that name.

``botai models`` reads both; ``BOTAI_API_URL`` and ``BOTAI_API_TOKEN`` (a person's own admin
token, ``botai-api token --user ID --admin``) take precedence. Nothing prints the token.
"""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

from api.security import issue_token
from api.settings import ApiSettings
from core.exceptions import ConfigurationError

TOKEN_TTL = timedelta(days=30)


def access_record_path(state_dir: Path) -> Path:
    """``<state_dir>/run/gateway.json``: where the stack's gateway listens."""
    return Path(state_dir) / "run" / "gateway.json"


def admin_token_path(state_dir: Path) -> Path:
    """``<state_dir>/secrets/gateway-admin-token``: the stack operator's admin token."""
    return Path(state_dir) / "secrets" / "gateway-admin-token"


def operator_name() -> str:
    """``operator:<login>``: whom the kept token names (the account running the stack)."""
    try:
        login = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        login = str(os.getuid())
    return f"operator:{login}"


def gateway_url(settings: ApiSettings) -> str:
    """The URL local commands use: a gateway listening on every interface is reached on
    127.0.0.1."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.port}/api"


def write_gateway_access(state_dir: Path, settings: ApiSettings) -> list[Path]:
    """Write the gateway's URL and a fresh operator admin token (0600) into the state folder.

    Returns:
        the two files written.
    """
    record = access_record_path(state_dir)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"url": gateway_url(settings)}) + "\n")
    token_file = admin_token_path(state_dir)
    token_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = issue_token(settings, operator_name(), admin=True, ttl=TOKEN_TTL)
    tmp = token_file.with_name(f".{token_file.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(tmp, token_file)
    return [record, token_file]


def read_gateway_access(state_dir: Path, environ: Mapping[str, str]) -> tuple[str, str]:
    """The gateway URL and the admin token a command sends.

    Returns:
        (``BOTAI_API_URL`` or the recorded URL, ``BOTAI_API_TOKEN`` or the kept token).

    Raises:
        ConfigurationError: no URL or no token is known (the message says how to get one).
    """
    url = environ.get("BOTAI_API_URL")
    if not url:
        try:
            url = json.loads(access_record_path(state_dir).read_text())["url"]
        except (OSError, ValueError, KeyError, TypeError):
            raise ConfigurationError(
                f"no gateway recorded in {state_dir}: start the stack with `botai up` and "
                "BOTAI_API_JWT_SECRET set (in .env), or set BOTAI_API_URL to a gateway"
            ) from None
    token = environ.get("BOTAI_API_TOKEN")
    if not token:
        try:
            token = admin_token_path(state_dir).read_text().strip()
        except OSError:
            raise ConfigurationError(
                f"no operator token in {admin_token_path(state_dir)}: restart the stack "
                "(`botai up`), or set BOTAI_API_TOKEN to an admin token "
                "(`botai-api token --user YOUR_NAME --admin`)"
            ) from None
    return str(url).rstrip("/"), token
