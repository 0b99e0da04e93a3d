"""Settings of the stack's own upkeep: the supervisor of ``botai up``, the watchdog, the
clean-up of old runs and the crash recovery of runs (mixed into :class:`core.settings.Settings`,
which gives them their ``BOTAI_`` variables)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SupervisionSettings(BaseModel):
    """Supervisor, watchdog, clean-up and crash-recovery fields of the platform's settings."""

    # ------------------------------------------------------------ supervisor and watchdog
    supervisor_poll_s: float = Field(
        default=2.0, gt=0, description="How often botai up checks that its services run, seconds."
    )
    restart_backoff_initial_s: float = Field(
        default=1.0, gt=0, description="Wait before the first restart of a dead service, seconds."
    )
    restart_backoff_max_s: float = Field(
        default=60.0, gt=0, description="Longest wait between restarts (doubling), seconds."
    )
    restart_stable_after_s: float = Field(
        default=60.0,
        gt=0,
        description="A service up this long is stable again: its backoff starts over, seconds.",
    )
    restart_alert_failures: int = Field(
        default=3,
        ge=1,
        description="Deaths or failed starts of one service within the window that raise a "
        "critical alert (the supervisor keeps trying).",
    )
    restart_alert_window_s: float = Field(
        default=600.0, gt=0, description="Window of restart_alert_failures, seconds."
    )
    watchdog_interval_s: float = Field(
        default=5.0, gt=0, description="How often the watchdog probes services and queues, seconds."
    )
    service_hung_after_s: float = Field(
        default=20.0,
        gt=0,
        description="A service stopped (SIGSTOP) or failing its probe this long is hung: it is "
        "killed and restarted, seconds.",
    )
    worker_heartbeat_s: float = Field(
        default=10.0, gt=0, description="Heartbeat period of the stack's worker, seconds."
    )
    worker_heartbeat_stale_s: float = Field(
        default=30.0,
        gt=0,
        description="A worker whose last heartbeat is older than this is not alive, seconds.",
    )
    flow_run_stop_grace_s: float = Field(
        default=30.0,
        gt=0,
        description="An orphaned flow-run process gets SIGTERM, then SIGKILL after this, seconds.",
    )
    queue_max_wait_s: float = Field(
        default=3600.0,
        gt=0,
        description="Alert when a work queue's oldest due run has waited longer, seconds "
        "(TC-ASYNC-087: processed within 1 hour).",
    )
    queue_max_depth: int = Field(
        default=1000,
        ge=1,
        description="Alert when more runs than this wait in one work queue (TC-ASYNC-087).",
    )
    run_retention_days: float = Field(
        default=7.0,
        ge=1,
        description="Finished Prefect flow runs (db-vacuum), result and chart files older than "
        "this are deleted, days.",
    )
    cleanup_interval_s: float = Field(
        default=3600.0, ge=60, description="How often old runs and files are deleted, seconds."
    )
    # ------------------------------------------------------------ crash recovery
    recovery_poll_s: float = Field(
        default=3.0, gt=0, description="How often the recovery service looks for dead runs, s."
    )
    recovery_max_attempts: int = Field(
        default=3,
        ge=1,
        description="Executions of one run, the first included, before it is dead-lettered.",
    )
    recovery_backoff_s: float = Field(
        default=5.0, ge=0, description="Wait before the first resubmission, s (doubles after)."
    )
    recovery_backoff_max_s: float = Field(
        default=60.0, ge=0, description="Longest wait between two resubmissions, s."
    )
    recovery_exit_grace_s: float = Field(
        default=5.0,
        ge=0,
        description="A Running run without a live process this long is Crashed, s.",
    )
    recovery_start_grace_s: float = Field(
        default=45.0,
        ge=0,
        description="A Pending/Submitting run without a process this long is Crashed, s.",
    )
    recovery_hung_after_s: float = Field(
        default=60.0,
        gt=0,
        description="A run whose process is stopped (SIGSTOP) this long is Crashed, s.",
    )
    recovery_window_h: float = Field(
        default=24.0, gt=0, description="Crashed/failed runs older than this are left alone, h."
    )
    recovery_local_workers: bool = Field(
        default=True,
        description="Every worker of the pool runs on this machine (process checks are local).",
    )
    recovery_pending_max_s: float = Field(
        default=120.0,
        gt=0,
        description="A Pending run whose flow has not started this long (no heartbeat) is "
        "Crashed, whatever host claimed it (no process table needed), s.",
    )
    recovery_heartbeat_stale_s: float = Field(
        default=75.0,
        gt=0,
        description="A Running run of another host (or with no recorded process) whose last "
        "flow-run heartbeat is older than this is Crashed, s (at least two heartbeats).",
    )
    recovery_lease_s: float = Field(
        default=30.0,
        gt=0,
        description="Lease of the acting recovery replica, s: another replica takes over when "
        "it is not renewed this long.",
    )
