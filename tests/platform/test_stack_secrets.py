"""The stack's secrets on real processes: the Prefect API answers 401 without the stack's auth
string, block documents are encrypted at rest with the stack's own key, and each started
process's environment (read from /proc/<pid>/environ) holds only the secrets it needs."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import uuid
from pathlib import Path

import httpx
import psutil
import pytest
from cryptography.fernet import Fernet

from core.settings import load_settings
from deployments import secrets, service_records, services, work_pool
from integrations.embedded_mongo import free_port
from integrations.service_checks import check_prefect_worker

pytestmark = pytest.mark.tc("TC-ASYNC-099", "TC-ASYNC-094")

JWT_SECRET = f"jwt-{uuid.uuid4().hex}{uuid.uuid4().hex}"
LLM_KEY = f"sk-stack-{uuid.uuid4().hex}"


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if item)


def test_api_needs_the_auth_string_and_each_process_gets_only_its_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect import flow
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    from blocks import LLMBlock
    from blocks.loader import load_block
    from deployments.bootstrap import bootstrap_blocks
    from deployments.up import prefect_api

    settings = load_settings(
        state_dir=tmp_path / "state", prefect_port=free_port(), mongodb_port=free_port()
    )
    # what `botai up` sees after loading .env: the gateway secret and a block credential
    monkeypatch.setenv("BOTAI_API_JWT_SECRET", JWT_SECRET)
    monkeypatch.setenv("LLM_API_KEY", LLM_KEY)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env = services.prefect_env(settings, environ)
    try:
        mongodb_uri = services.start_store(settings)
        server = services.start_prefect_server(settings, env)
        auth = secrets.prefect_auth_string(settings)
        key = (secrets.secrets_dir(settings) / secrets.ENCRYPTION_KEY_FILE).read_text().strip()
        for path in secrets.secrets_dir(settings).iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert stat.S_IMODE(secrets.secrets_dir(settings).stat().st_mode) == 0o700

        with prefect_api(settings):
            bootstrap_blocks(settings, {"MONGODB_URI": mongodb_uri, "LLM_API_KEY": LLM_KEY})

            @flow(name="auth-smoke")
            def auth_smoke() -> int:
                return len(load_block(LLMBlock).api_key.get_secret_value())

            state = auth_smoke(return_state=True)
            assert state.is_completed() and state.result() == len(LLM_KEY)
            APILogWorker.drain_all(timeout=10, at_exit=False)
            EventsWorker.drain_all(timeout=10, at_exit=False)
            work_pool.ensure_work_pool(settings)
            worker = services.start_worker(settings, env)
            # the worker reports in through the API: it authenticates
            services.wait_worker_online(settings, worker, settings.startup_timeout_s)

        # the health check's worker probe (plain HTTP) authenticates too
        pool, api = settings.work_pool, settings.prefect_api_url
        assert check_prefect_worker(api, pool, 10)[1] == "Prefect API answered HTTP 401"
        assert check_prefect_worker(api, pool, 10, auth)[1] is None

        user, password = auth.split(":", 1)
        with httpx.Client(base_url=api, timeout=10) as http:
            assert http.get("/health").json() is True  # probes stay open
            docs = http.post("/block_documents/filter", json={}, auth=(user, password)).json()
            llm = next(d for d in docs if d["name"] == "llm")
            url = f"/block_documents/{llm['id']}"
            for wrong in (None, (user, password[:-1] + "x"), ("admin", "admin")):
                r = http.get(url, params={"include_secrets": True}, auth=wrong)
                assert r.status_code == 401 and LLM_KEY not in r.text
            assert http.post("/flow_runs/filter", json={}).status_code == 401
            r = http.get(url, params={"include_secrets": True}, auth=(user, password))
            assert r.status_code == 200 and r.json()["data"]["api_key"] == LLM_KEY

        # at rest: encrypted with the stack's key, which the database does not hold
        db = sqlite3.connect(settings.prefect_home / "prefect.db")
        try:
            (blob,) = db.execute("SELECT data FROM block_document WHERE name = 'llm'").fetchone()
            keys = db.execute("SELECT key FROM configuration").fetchall()
        finally:
            db.close()
        assert LLM_KEY not in str(blob)
        # Prefect keeps the Fernet token in a JSON column: depending on the SQLAlchemy release
        # the raw value is the token itself or the token as a JSON string (quoted). Accept both.
        token = json.loads(blob) if blob.startswith('"') else blob
        assert json.loads(Fernet(key.encode()).decrypt(token.encode()))["api_key"] == LLM_KEY
        assert ("ENCRYPTION_KEY",) not in keys

        # each process's environment holds what it needs and nothing more
        records = {r.name: r for r in service_records.read_records(settings)}
        store_env = _environ(records["nx-27017"].pid)
        server_env = _environ(server.pid)
        worker_env = _environ(worker.pid)
        for name, proc_env in (
            ("store", store_env),
            ("server", server_env),
            ("worker", worker_env),
        ):
            text = "\n".join(proc_env.values())
            assert JWT_SECRET not in text and LLM_KEY not in text, name
        assert auth not in "\n".join(store_env.values()) and key not in str(store_env)
        assert server_env["PREFECT_SERVER_API_AUTH_STRING"] == auth
        assert server_env["PREFECT_SERVER_ENCRYPTION_KEY"] == key
        assert worker_env["PREFECT_API_AUTH_STRING"] == auth
        assert key not in "\n".join(worker_env.values())

        # never on a command line (visible to every user) nor in a log
        for rec in records.values():
            for p in [psutil.Process(rec.pid), *psutil.Process(rec.pid).children(recursive=True)]:
                cmdline = " ".join(p.cmdline())
                assert auth not in cmdline and key not in cmdline and password not in cmdline
        for log in service_records.run_dir(settings).glob("*.log"):
            text = log.read_text(errors="replace")
            assert password not in text and key not in text and JWT_SECRET not in text, log
    finally:
        services.stop_all(settings)


def test_an_older_database_key_is_moved_out_of_the_database(tmp_path: Path) -> None:
    """A state folder from before the stack had its own key: the blocks its database holds
    stay readable (the key is adopted) and the database no longer holds the key."""
    old_key = Fernet.generate_key().decode()
    db_path = tmp_path / "prefect.db"
    db = sqlite3.connect(db_path)
    db.execute("CREATE TABLE configuration (key VARCHAR NOT NULL, value JSON NOT NULL)")
    db.execute(
        "INSERT INTO configuration VALUES ('ENCRYPTION_KEY', ?)",
        (json.dumps({"fernet_key": old_key}),),
    )
    db.commit()
    db.close()
    settings = load_settings(state_dir=tmp_path / "state")
    url = f"sqlite+aiosqlite:///{db_path}"
    assert secrets.server_encryption_key(settings, url) == old_key
    db = sqlite3.connect(db_path)
    assert db.execute("SELECT count(*) FROM configuration").fetchone() == (0,)
    db.close()
    assert secrets.server_encryption_key(settings, url) == old_key  # from the file now
    fresh = load_settings(state_dir=tmp_path / "fresh")
    new = secrets.server_encryption_key(fresh, f"sqlite+aiosqlite:///{tmp_path / 'none.db'}")
    assert new != old_key and Fernet(new.encode())
    assert not (tmp_path / "none.db").exists()
    (secrets.secrets_dir(fresh) / secrets.ENCRYPTION_KEY_FILE).write_text("garbage\n")
    with pytest.raises(Exception, match="does not hold a Fernet key"):
        secrets.server_encryption_key(fresh, url)
