"""One terminal or many: what ``botai up`` leaves in the state folder so that commands in
another terminal find the running stack without exporting anything.

* ``<state_dir>/prefect/profiles.toml`` (0600): a Prefect profile ``botai``, active, with the
  stack's API URL, its API auth string and ``PREFECT_HOME`` (the state folder's, never
  ``~/.prefect``). Any Prefect client pointed at this file talks to the stack.
* ``<project>/prefect.toml`` (0600, git-ignored, no secret), only when the state folder is
  ``<project>/.state`` (the default: the repo root): ``profiles_path`` = that file. A plain
  ``prefect`` command started in the project folder reads ``prefect.toml`` from its current
  folder (and only from there: ``prefect.settings.sources._get_profiles_path`` in Prefect
  3.9 looks at ``PREFECT_PROFILES_PATH``, then ``./.env``, ``./prefect.toml``,
  ``./pyproject.toml``, then ``PREFECT_HOME``), so ``prefect deployment run ...`` works in
  the repo root as it is; ``botai prefect ...`` does the same from any folder of the repo.
* ``<state_dir>/run/stack.json``: the stack's host, ports, database and work pool, which
  ``botai status``, ``botai down`` and the other commands use when no ``BOTAI_*`` variable
  of their own says otherwise (the state folder itself is found from the current folder:
  :func:`core.environment.find_state_dir`).

The auth string is written to the profile only; messages name the files, never the string.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.environment import STATE_DIR_NAME
from core.settings import Settings
from deployments import secrets

#: Name of the Prefect profile ``botai up`` writes.
PROFILE_NAME = "botai"

#: Settings the stack records for the commands of other terminals, with the variables that
#: override a recorded value (an exported variable always wins).
RECORDED: dict[str, tuple[str, ...]] = {
    "host": ("BOTAI_HOST",),
    "prefect_port": ("BOTAI_PREFECT_PORT",),
    "mongodb_port": ("BOTAI_MONGODB_PORT",),
    "mongodb_database": ("MONGODB_DATABASE", "BOTAI_MONGODB_DATABASE"),
    "work_pool": ("BOTAI_WORK_POOL",),
}


def profiles_path(settings: Settings) -> Path:
    """``<state_dir>/prefect/profiles.toml``: the stack's Prefect profile."""
    return settings.prefect_home / "profiles.toml"


def project_toml_path(settings: Settings) -> Path | None:
    """``<project>/prefect.toml`` when the state folder is ``<project>/.state``, else None
    (a state folder elsewhere has no project folder to put it in)."""
    state = settings.state_dir.resolve()
    return state.parent / "prefect.toml" if state.name == STATE_DIR_NAME else None


def stack_record_path(settings: Settings) -> Path:
    """``<state_dir>/run/stack.json``: host, ports, database and pool of the stack."""
    return settings.state_dir / "run" / "stack.json"


def _toml_str(value: str) -> str:
    """``value`` as a TOML basic string (JSON's escapes are valid TOML)."""
    return json.dumps(value, ensure_ascii=True)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the first byte (a new file renamed
    over the old one, so a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    path.chmod(0o600)


def write_profile(settings: Settings) -> list[Path]:
    """Write the stack's Prefect profile, the project's ``prefect.toml`` pointing at it
    (see :func:`project_toml_path`) and the stack record. Call it once the server's auth
    string exists.

    Returns the files written.

    Raises:
        ConfigurationError: the state folder's auth string file is not valid.
    """
    profile = profiles_path(settings)
    values = {
        "PREFECT_API_URL": settings.prefect_api_url,
        "PREFECT_API_AUTH_STRING": secrets.prefect_auth_string(settings),
        "PREFECT_HOME": str(settings.prefect_home.resolve()),
    }
    lines = [
        "# Written by `botai up` on every start: the stack's Prefect API and its auth string.",
        "# Secret (mode 0600): never copy it into the repository.",
        f"active = {_toml_str(PROFILE_NAME)}",
        "",
        f"[profiles.{PROFILE_NAME}]",
        *(f"{k} = {_toml_str(v)}" for k, v in values.items()),
    ]
    _write_private(profile, "\n".join(lines) + "\n")
    written = [profile]
    project = project_toml_path(settings)
    if project is not None:
        _write_private(
            project,
            "# Written by `botai up` (git-ignored, no secret): plain `prefect` commands started\n"
            "# in this folder use the stack's profile in the state folder.\n"
            f"profiles_path = {_toml_str(str(profile.resolve()))}\n",
        )
        written.append(project)
    record = {name: getattr(settings, name) for name in RECORDED}
    stack = stack_record_path(settings)
    stack.parent.mkdir(parents=True, exist_ok=True)
    stack.write_text(json.dumps(record, indent=1) + "\n")
    written.append(stack)
    return written


def read_stack_record(settings: Settings) -> dict[str, Any]:
    """The stack record of ``settings.state_dir`` ({} when none or unreadable)."""
    try:
        data = json.loads(stack_record_path(settings).read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if k in RECORDED} if isinstance(data, dict) else {}


def with_stack_record(settings: Settings, environ: Mapping[str, str]) -> Settings:
    """``settings`` with the host, ports, database and pool the state folder's stack was
    started with (:func:`write_profile`), except those ``environ`` sets itself.

    Returns a new :class:`Settings` (``settings`` itself when nothing was recorded).
    """
    recorded = read_stack_record(settings)
    updates = {
        name: value
        for name, value in recorded.items()
        if not any(environ.get(var) for var in RECORDED[name])
    }
    if not updates:
        return settings
    return settings.model_copy(update=updates)


def prefect_command_env(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of ``botai prefect ...``: ``environ`` with ``PREFECT_PROFILES_PATH``
    set to the stack's profile (when it exists and no variable chose another)."""
    env = dict(environ)
    profile = profiles_path(settings)
    if profile.is_file() and not env.get("PREFECT_PROFILES_PATH"):
        env["PREFECT_PROFILES_PATH"] = str(profile)
    return env


def login_hint(settings: Settings) -> str:
    """How to sign in to the UI: where the auth string lives, never the string itself."""
    path = secrets.auth_string_path(settings)
    return (
        "sign in: a new browser shows 'Authentication failed.' and a Login form; enter the "
        f"whole line of {path} ({secrets.AUTH_USER}:<password>, shown by `cat {path}`)"
    )


def other_terminal_lines(settings: Settings) -> list[str]:
    """Lines of the ready message: how commands in another terminal reach the stack."""
    project = project_toml_path(settings)
    prefect_file = profiles_path(settings)
    if project is not None:
        where = f"in {project.parent} or a folder below it"
        lines = [
            f"Try next (in another terminal, {where}; nothing to export):",
            f"  # plain `prefect` in {project.parent} reads {project.name}, which points at the",
            f"  # stack's Prefect profile {prefect_file}; `botai prefect ...` works below it too",
        ]
    else:
        lines = [
            "Try next (in another terminal):",
            f"  export BOTAI_STATE_DIR={settings.state_dir}",
            f"  export PREFECT_PROFILES_PATH={prefect_file}  # the stack's Prefect profile",
        ]
    return lines
