"""Small flows run by the warm-worker tests and benches (deployed from this file)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from prefect import flow


@flow(name="warm-probe")
def warm_probe(sleep_s: float = 0.0, marker_dir: str = "") -> dict:
    """Sleep ``sleep_s`` seconds; when ``marker_dir`` is set write ``<flow run id>.pid``
    there (this process's pid) first. Returns ``{"pid", "slept_s"}``."""
    from prefect.runtime import flow_run

    if marker_dir:
        Path(marker_dir, f"{flow_run.get_id()}.pid").write_text(str(os.getpid()))
    end = time.monotonic() + sleep_s
    while time.monotonic() < end:
        time.sleep(0.05)
    return {"pid": os.getpid(), "slept_s": sleep_s}
