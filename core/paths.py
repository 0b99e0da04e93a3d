"""File paths given as input: confined to configured folders.

A path a user sends (``csv_path`` of an ingest) is resolved (``..`` collapsed, symbolic links
followed) and must then lie inside one of the allowed folders; otherwise the error names them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from core.echo import echo
from core.exceptions import InvalidInputError


def check_data_path(path: str | Path, allowed_dirs: Sequence[Path], what: str = "path") -> Path:
    """Returns ``path`` resolved (absolute, no ``..``, symbolic links followed).

    A relative path is taken relative to the current directory, as everywhere.

    Raises:
        InvalidInputError: the resolved path is not inside one of ``allowed_dirs`` (the message
            names them and the setting that configures them), or it is not a valid path.
    """
    raw = str(path)
    if not raw.strip() or "\x00" in raw:
        raise InvalidInputError(f"{what} {echo(raw)} is not a valid file path")
    resolved = Path(raw).expanduser().resolve()
    roots = [Path(d).expanduser().resolve() for d in allowed_dirs]
    if not any(resolved.is_relative_to(root) for root in roots):
        folders = ", ".join(str(r) for r in roots) or "none configured"
        raise InvalidInputError(
            f"{what} {echo(raw)} is outside the data folders: put the file in one of "
            f"{folders} (set BOTAI_DATA_DIRS to allow other folders)"
        )
    return resolved
