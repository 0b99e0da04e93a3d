"""Settings of a host that runs one role of a stack spread over several hosts (mixed into
:class:`core.settings.Settings`, which gives them their ``BOTAI_`` variables).

``botai up`` without a role starts everything on one machine and needs none of these. With
``botai up --role server|worker|gateway|recovery`` the host reaches the stack's other parts
through them: the Prefect API (the load balancer in front of the API servers), MongoDB
(``MONGODB_URI``, a field of the main settings), PostgreSQL and Redis (server hosts only).

Secrets are not settings: the Prefect API auth string, the server's encryption key and the
gateway's JWT secret come from the environment or from a file named here
(:mod:`deployments.roles` installs them into the host's state folder, mode 0600).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import NoDecode

#: The parts a server host can run: Prefect's API (behind the load balancer) and its
#: background services (scheduler, late runs, repossessor of concurrency leases...).
SERVER_PARTS = ("api", "services")


def _split(v: object) -> object:
    """``"a,b"`` -> ``["a", "b"]`` (a list is taken as it is; empty -> None)."""
    if isinstance(v, str):
        return [p.strip() for p in v.split(",") if p.strip()] or None
    return v


class MultihostSettings(BaseModel):
    """Where the other parts of the stack are, seen from one host."""

    host_name: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="This host's name in worker names and records (unset: the machine's "
        "hostname); unique per host.",
    )
    remote_api_url: str | None = Field(
        default=None,
        description="Prefect API of the stack (BOTAI_REMOTE_API_URL), e.g. "
        "http://10.0.0.10:4200/api (the load balancer); unset: this host's own server "
        "(http://BOTAI_HOST:BOTAI_PREFECT_PORT/api).",
    )
    worker_queues: Annotated[list[str] | None, NoDecode] = Field(
        default=None,
        description="Work queues this host's worker serves, separated by ',' (e.g. "
        "ml_training on a GPU host); unset: every queue of the pool.",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis of a high-availability Prefect server (messaging, event ordering, "
        "concurrency leases, docket), e.g. redis://10.0.0.5:6379/0; server hosts only.",
    )
    server_parts: Annotated[list[str], NoDecode] = Field(
        default=list(SERVER_PARTS),
        description="What `botai up --role server` runs, separated by ',': api (Prefect's API "
        "and UI, no background services), services (the background services, one process).",
    )
    prefect_auth_string_file: Path | None = Field(
        default=None,
        description="File holding the stack's Prefect API auth string (user:password); "
        "or set PREFECT_API_AUTH_STRING. Every host of one stack uses the same.",
    )
    prefect_encryption_key_file: Path | None = Field(
        default=None,
        description="File holding the Prefect server's encryption key (server hosts); or set "
        "PREFECT_SERVER_ENCRYPTION_KEY. Every server host of one stack uses the same.",
    )

    @field_validator("worker_queues", mode="before")
    @classmethod
    def _split_queues(cls, v: object) -> object:
        return _split(v)

    @field_validator("server_parts", mode="before")
    @classmethod
    def _split_parts(cls, v: object) -> object:
        return _split(v) or []

    @field_validator("server_parts")
    @classmethod
    def _known_parts(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(SERVER_PARTS))
        if unknown or not v:
            raise ValueError(
                f"BOTAI_SERVER_PARTS takes {', '.join(SERVER_PARTS)} separated by ',' "
                f"(got {', '.join(unknown) or 'nothing'})"
            )
        return v

    @field_validator("remote_api_url")
    @classmethod
    def _api_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip().rstrip("/")
        if not v.startswith(("http://", "https://")) or not v.endswith("/api"):
            raise ValueError(
                "BOTAI_REMOTE_API_URL must be the Prefect API's URL, "
                f"http(s)://HOST:PORT/api (got {v!r})"
            )
        return v
