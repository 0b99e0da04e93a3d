"""The process work pool, its queues and the deployments of ``prefect.yaml``.

:func:`ensure_work_pool` creates the pool and aligns its queues' limits (and the training
slots every training path takes); :func:`apply_deployments` runs ``prefect deploy --all``
unless nothing it reads changed since the last apply on this state folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import subprocess
from collections.abc import Mapping

import yaml

from core.environment import REPO_ROOT
from core.exceptions import ConfigurationError
from core.settings import Settings
from deployments.service_records import run_dir
from deployments.services import prefect_cmd

log = logging.getLogger(__name__)

#: Work queues of the process pool and their concurrency limits (None: unlimited).
WORK_QUEUES: dict[str, int | None] = {
    "ml_training": 2,
    "analysis": None,
    "backtesting": None,
    "scheduled": None,
}


def ensure_work_pool(settings: Settings) -> list[str]:
    """Create the process work pool and its queues, or align existing queues' limits.

    Uses the Prefect API of the current settings context. Returns the queue names.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        with contextlib.suppress(ObjectAlreadyExists):
            client.create_work_pool(
                WorkPoolCreate(
                    name=settings.work_pool,
                    type="process",
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                )
            )
        for name, limit in WORK_QUEUES.items():
            try:
                queue = client.read_work_queue_by_name(name, work_pool_name=settings.work_pool)
                if queue.concurrency_limit != limit:
                    client.update_work_queue(queue.id, concurrency_limit=limit)
            except ObjectNotFound:
                client.create_work_queue(
                    name=name, work_pool_name=settings.work_pool, concurrency_limit=limit
                )
    from tasks.training import ensure_training_limit  # every training path takes its slots

    ensure_training_limit(WORK_QUEUES["ml_training"] or 2)
    return list(WORK_QUEUES)


def deployment_inputs_hash() -> str:
    """SHA-256 of what ``prefect deploy`` reads: prefect.yaml and every .py under flows/ and
    core/ (flow signatures and parameter schemas). Returns the hex digest."""
    digest = hashlib.sha256()
    files = [REPO_ROOT / "prefect.yaml"]
    for folder in ("flows", "core"):
        files += sorted((REPO_ROOT / folder).rglob("*.py"))
    for path in files:
        digest.update(str(path.relative_to(REPO_ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def prefect_yaml_deployments() -> list[str]:
    """The deployment names listed in prefect.yaml."""
    spec = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text()) or {}
    return [d["name"] for d in spec.get("deployments") or []]


def apply_deployments(
    settings: Settings, env: Mapping[str, str], *, existing: set[str] | None = None
) -> bool:
    """Apply ``prefect.yaml``: ``prefect --no-prompt deploy --all`` from the repo root.

    Skipped when :func:`deployment_inputs_hash` equals the one recorded after the last
    successful apply on this state folder and every deployment of prefect.yaml is among
    ``existing`` (the deployment names the API lists now).

    Returns True when the command ran, False when it was skipped.

    Raises:
        ConfigurationError: the command failed (its output tail is in the message and in
            ``<state_dir>/run/deploy.log``).
    """
    stamp = settings.prefect_home / "deployed.sha256"
    wanted = deployment_inputs_hash()
    if (
        existing is not None
        and stamp.exists()
        and stamp.read_text().strip() == wanted
        and set(prefect_yaml_deployments()) <= existing
    ):
        log.info("prefect.yaml, flows/ and core/ unchanged since the last apply: skipped")
        return False
    log_path = run_dir(settings) / "deploy.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        prefect_cmd("--no-prompt", "deploy", "--all"),
        env=dict(env),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=settings.startup_timeout_s * 2,
        start_new_session=True,
    )
    log_path.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        stamp.unlink(missing_ok=True)
        tail = (result.stdout + result.stderr).strip().splitlines()[-15:]
        raise ConfigurationError(
            "applying prefect.yaml failed (`prefect deploy --all`): " + "\n".join(tail)
        )
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(wanted + "\n")
    return True
