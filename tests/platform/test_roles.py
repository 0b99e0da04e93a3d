"""``botai up --role``: what a host of a multi-host stack refuses before it starts anything,
where its secrets go, its worker's name, and the HA server's settings and load balancer.
(The roles running for real on test hosts: tests/multihost/.)"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from core.exceptions import ConfigurationError
from core.settings import load_settings
from deployments import ha, roles, service_records, services
from deployments.cli import build_parser

AUTH = "botai:" + "s3cret-multihost-auth-0123456789"
PG = "postgresql+asyncpg://prefect:pw-of-the-db@10.0.0.5:5432/prefect"
REDIS = "redis://10.0.0.5:6379/0"


def _settings(tmp_path: Path, **kw):
    return load_settings(state_dir=tmp_path / "state", **kw)


@pytest.mark.tc("none")
def test_the_role_option_takes_the_four_roles_only(capsys):
    assert build_parser().parse_args(["up", "--role", "worker"]).role == "worker"
    assert build_parser().parse_args(["up"]).role is None  # all-in-one default
    with pytest.raises(SystemExit):
        build_parser().parse_args(["up", "--role", "database"])
    assert "invalid choice: 'database'" in capsys.readouterr().err


@pytest.mark.tc("none")
def test_settings_refuse_a_bad_api_url_and_unknown_server_parts(tmp_path: Path):
    with pytest.raises(ValidationError, match="http\\(s\\)://HOST:PORT/api"):
        _settings(tmp_path, remote_api_url="10.0.0.10:4200")
    with pytest.raises(ValidationError, match="takes api, services"):
        _settings(tmp_path, server_parts="api,scheduler")
    s = _settings(tmp_path, remote_api_url="http://10.0.0.10:4200/api/", worker_queues="a, b")
    assert s.prefect_api_url == "http://10.0.0.10:4200/api"
    assert s.prefect_ui_url == "http://10.0.0.10:4200"
    assert s.worker_queues == ["a", "b"]


@pytest.mark.tc("TC-ASYNC-102")
def test_worker_names_and_queues_follow_the_host(tmp_path: Path):
    one = _settings(tmp_path, host_name="gpu-1", worker_queues="ml_training")
    two = _settings(tmp_path, host_name="cpu-1")
    assert services.worker_name(one) != services.worker_name(two)
    assert services.worker_name(one) == "botai-worker-gpu-1-4200"
    cmd = services.worker_command(one)
    assert cmd[cmd.index("--queue") + 1] == "ml_training" and cmd.count("--queue") == 1
    assert cmd[cmd.index("--host-name") + 1] == "gpu-1"
    assert "--queue" not in services.worker_command(two)  # every queue of the pool


@pytest.mark.tc("none")
def test_a_role_without_its_services_or_secrets_starts_nothing(tmp_path: Path):
    said: list[str] = []
    s = _settings(tmp_path)
    with pytest.raises(ConfigurationError, match="needs PostgreSQL"):
        roles.start_role(s, {}, "server", said.append)
    with pytest.raises(ConfigurationError, match="needs Redis"):
        roles.start_role(_settings(tmp_path, prefect_database_url=PG), {}, "server", said.append)
    with pytest.raises(ConfigurationError, match="BOTAI_REMOTE_API_URL"):
        roles.start_role(s, {}, "worker", said.append)
    remote = _settings(tmp_path, remote_api_url="http://10.0.0.10:4200/api")
    with pytest.raises(ConfigurationError, match="MONGODB_URI"):
        roles.start_role(remote, {}, "worker", said.append)
    with_mongo = _settings(
        tmp_path, remote_api_url="http://10.0.0.10:4200/api", mongodb_uri="mongodb://10.0.0.5/"
    )
    with pytest.raises(ConfigurationError, match="PREFECT_API_AUTH_STRING"):
        roles.start_role(with_mongo, {}, "worker", said.append)
    with pytest.raises(ConfigurationError, match="BOTAI_API_JWT_SECRET"):
        roles.start_role(with_mongo, {}, "gateway", said.append)
    with pytest.raises(ConfigurationError, match="unknown role"):
        roles.start_role(with_mongo, {}, "scheduler", said.append)
    assert said == [] and service_records.read_records(s) == []  # nothing started


@pytest.mark.tc("none")
def test_secrets_from_environment_or_file_are_installed_private(tmp_path: Path):
    key = Fernet.generate_key().decode()
    key_file = tmp_path / "key"
    key_file.write_text(key + "\n")
    s = _settings(tmp_path, prefect_encryption_key_file=key_file)
    roles.install_secrets(s, {"PREFECT_API_AUTH_STRING": AUTH}, "server")
    auth_path = s.prefect_auth_string_path
    key_path = auth_path.parent / "prefect-encryption-key"
    assert auth_path.read_text().strip() == AUTH and key_path.read_text().strip() == key
    for path in (auth_path, key_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(auth_path.parent.stat().st_mode) == 0o700
    # a later start without the variables uses what was installed; a new value replaces it
    roles.install_secrets(s, {}, "server")
    roles.install_secrets(s, {"PREFECT_API_AUTH_STRING": AUTH + "x"}, "worker")
    assert auth_path.read_text().strip() == AUTH + "x"
    with pytest.raises(ConfigurationError, match="user:password"):
        roles.install_secrets(s, {"PREFECT_API_AUTH_STRING": "short"}, "worker")
    fresh = _settings(tmp_path / "other")
    with pytest.raises(ConfigurationError, match="PREFECT_SERVER_ENCRYPTION_KEY") as info:
        roles.install_secrets(fresh, {"PREFECT_API_AUTH_STRING": AUTH}, "server")
    assert AUTH not in str(info.value)


@pytest.mark.tc("TC-ASYNC-078")
def test_ha_server_env_is_prefects_redis_setup_and_only_servers_get_the_database(
    tmp_path: Path,
):
    s = _settings(tmp_path, prefect_database_url=PG, redis_url=REDIS)
    env = ha.ha_server_env(s)
    assert env["PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"] == "prefect_redis.lease_storage"
    assert env["PREFECT_MESSAGING_BROKER"] == env["PREFECT_MESSAGING_CACHE"]
    assert env["PREFECT_MESSAGING_BROKER"] == "prefect_redis.messaging"
    assert env["PREFECT_SERVER_EVENTS_CAUSAL_ORDERING"] == "prefect_redis.ordering"
    assert env["PREFECT_REDIS_MESSAGING_URL"] == env["PREFECT_SERVER_DOCKET_URL"] == REDIS
    assert "pw-of-the-db" not in ha.describe(s)
    for name in (
        "prefect_redis.messaging",
        "prefect_redis.ordering",
        "prefect_redis.lease_storage",
    ):
        __import__(name)  # the modules Prefect will import exist in the locked environment
    environ = {"BOTAI_PREFECT_DATABASE_URL": PG, "BOTAI_REDIS_URL": REDIS}
    assert "PREFECT_SERVER_DATABASE_CONNECTION_URL" in roles.role_env(s, environ, "server")
    worker_env = roles.role_env(s, environ, "worker")
    assert not any(PG in v or REDIS in v for v in worker_env.values())


@pytest.mark.tc("none")
def test_haproxy_config_balances_the_api_servers_with_health_checks():
    text = ha.haproxy_config("0.0.0.0:4200", ["10.0.0.11:4200", "10.0.0.12:4200"])
    assert "bind 0.0.0.0:4200" in text and "option httpchk GET /api/health" in text
    assert "server api1 10.0.0.11:4200 check" in text
    assert "server api2 10.0.0.12:4200 check" in text
    with pytest.raises(ConfigurationError, match="HOST:PORT"):
        ha.haproxy_config("4200", ["10.0.0.11:4200"])
    with pytest.raises(ConfigurationError, match="at least one"):
        ha.haproxy_config("0.0.0.0:4200", [])
