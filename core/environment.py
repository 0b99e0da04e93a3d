"""Where the platform runs: the checkout, its state folder, the variables settings read.

:func:`find_state_dir` is the default of ``BOTAI_STATE_DIR``; :func:`environment_key` is what
:func:`core.settings.load_settings` caches a :class:`~core.settings.Settings` by.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import AliasChoices
from pydantic.fields import FieldInfo

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Name of the state folder inside a checkout (the default of ``BOTAI_STATE_DIR``).
STATE_DIR_NAME = ".state"

#: Prefix of the platform's own environment variables.
ENV_PREFIX = "BOTAI_"


def is_checkout(folder: Path) -> bool:
    """True when ``folder`` is the root of a checkout of this project."""
    return (folder / "prefect.yaml").is_file() and (folder / "deployments" / "cli.py").is_file()


def find_state_dir(start: Path | None = None) -> Path:
    """The state folder a command started in ``start`` (default: the current folder) uses
    when ``BOTAI_STATE_DIR`` is unset: ``.state`` of the nearest folder, ``start`` or one
    above it, that is a checkout of this project or already holds a stack's state folder
    (``.state/prefect``); else ``.state`` at the root of the checkout this code runs from.

    So ``botai status`` finds the stack from the repo root and from any folder below it.
    Returns the absolute path (it may not exist yet).
    """
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if is_checkout(folder) or (folder / STATE_DIR_NAME / "prefect").is_dir():
            return folder / STATE_DIR_NAME
    return REPO_ROOT / STATE_DIR_NAME


def alias_names(fields: Mapping[str, FieldInfo]) -> frozenset[str]:
    """Variable names of ``fields`` read from outside the ``BOTAI_`` prefix (``MONGODB_URI``...),
    upper-cased. Returns them as a frozenset."""
    names: set[str] = set()
    for field in fields.values():
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
        names.update(c.upper() for c in choices if isinstance(c, str))
    return frozenset(names)


def environment_key(names: frozenset[str]) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The working folder (a default may depend on it) and the environment variables settings
    read: every ``BOTAI_*`` one and ``names`` (names upper-cased, sorted). Returns the pair."""
    variables = sorted(
        (k.upper(), v)
        for k, v in os.environ.items()
        if k.upper().startswith(ENV_PREFIX) or k.upper() in names
    )
    return os.getcwd(), tuple(variables)
