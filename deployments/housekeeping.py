"""Periodic clean-up of what the stack writes to disk (TC-ASYNC-093, TC-ASYNC-104).

The supervisor of ``botai up`` runs :func:`clean_up` every ``cleanup_interval_s``. Each step
of :data:`STEPS` deletes what is older than ``run_retention_days`` (7 by default, the same
horizon as Prefect's db-vacuum of finished flow runs, see ``services.prefect_env``):

* result files: Prefect's local result storage ``<state_dir>/prefect/storage``;
* chart files: the backtest equity charts ``<state_dir>/backtests/*.png``.

Models, checkpoints, keys and the databases are never touched here. A step is a function
``(settings, store) -> summary``; adding one (a store purge) is one entry in :data:`STEPS`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.settings import Settings

log = logging.getLogger(__name__)


def delete_older_than(folder: Path, pattern: str, max_age_s: float) -> tuple[int, int]:
    """Delete the files under ``folder`` matching ``pattern`` (recursive glob) whose last
    modification is older than ``max_age_s``; empty sub-folders left behind are removed.

    Returns (files deleted, bytes freed). A file that vanishes or cannot be deleted is
    skipped (logged).
    """
    if not folder.is_dir():
        return 0, 0
    cutoff = time.time() - max_age_s
    count = freed = 0
    for path in folder.rglob(pattern):
        try:
            st = path.stat()
            if not path.is_file() or st.st_mtime >= cutoff:
                continue
            path.unlink()
        except OSError as e:
            log.warning("clean-up: %s not deleted: %s", path, e.strerror)
            continue
        count += 1
        freed += st.st_size
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()  # only succeeds when empty
    return count, freed


def clean_result_files(settings: Settings, _store: Any = None) -> str:
    """Delete Prefect result files older than the horizon. Returns a summary."""
    n, size = delete_older_than(
        settings.prefect_home / "storage", "*", settings.run_retention_days * 86400
    )
    return f"result files: {n} deleted ({size / 1e6:.1f} MB)"


def clean_chart_files(settings: Settings, _store: Any = None) -> str:
    """Delete backtest chart PNGs older than the horizon. Returns a summary."""
    n, size = delete_older_than(
        settings.state_dir / "backtests", "*.png", settings.run_retention_days * 86400
    )
    return f"chart files: {n} deleted ({size / 1e6:.1f} MB)"


#: The clean-up steps, in order: (settings, store or None) -> one-line summary.
STEPS: list[Callable[[Settings, Any], str]] = [clean_result_files, clean_chart_files]


def clean_up(settings: Settings, store: Any = None) -> str:
    """Run every step of :data:`STEPS`; a failing step is reported, the others still run.

    Returns the summaries joined by ``; ``.
    """
    out = []
    for step in STEPS:
        try:
            out.append(step(settings, store))
        except Exception as e:
            out.append(f"{step.__name__} failed: {type(e).__name__}: {e}")
            log.warning("clean-up step %s failed: %s", step.__name__, e)
    summary = "; ".join(out)
    log.info("clean-up (older than %g days): %s", settings.run_retention_days, summary)
    return summary
