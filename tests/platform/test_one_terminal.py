"""One terminal or many: after `botai up`, a new terminal with nothing exported (no BOTAI_
or PREFECT_ variable, a HOME of its own) reaches the stack from the project folder and from a
folder below it: `botai status`, `prefect deployment run` (plain in the project folder,
`botai prefect` below it) and `botai down`. The stack's Prefect profile holds the auth string
and is 0600; the ready message says where the string is, never the string."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from core.environment import find_state_dir
from core.settings import Settings
from deployments.profile import profiles_path, project_toml_path, with_stack_record
from deployments.secrets import prefect_auth_string
from integrations.embedded_mongo import free_port

pytestmark = pytest.mark.tc("none")

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
INGEST = (
    "ingest-market-data/ingest-market-data",
    "--param",
    'params={"source": "synthetic", "symbols": ["ETHUSDT"], "days": 60}',
)


def _clean_env(home: Path) -> dict[str, str]:
    """A new terminal's environment: nothing of the stack exported, a HOME of its own."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "BOTAI_", "MONGODB_", "DASK_"))
    }
    home.mkdir(exist_ok=True)
    env["HOME"] = str(home)
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_folder_is_found_from_the_checkout_and_from_below_it(tmp_path: Path):
    assert find_state_dir(REPO_ROOT) == REPO_ROOT / ".state"
    assert find_state_dir(REPO_ROOT / "deployments") == REPO_ROOT / ".state"
    project = tmp_path / "project"
    (project / ".state" / "prefect").mkdir(parents=True)
    (project / "a" / "b").mkdir(parents=True)
    assert find_state_dir(project / "a" / "b") == project / ".state"
    # a recorded stack's ports are used unless a variable sets them
    settings = Settings(state_dir=project / ".state")
    (project / ".state" / "run").mkdir()
    (project / ".state" / "run" / "stack.json").write_text(
        json.dumps({"prefect_port": 4321, "host": "127.0.0.1", "unknown": 1})
    )
    assert with_stack_record(settings, {}).prefect_port == 4321
    assert with_stack_record(settings, {"BOTAI_PREFECT_PORT": "4200"}).prefect_port == 4200
    assert project_toml_path(settings) == project / "prefect.toml"
    assert project_toml_path(Settings(state_dir=tmp_path / "elsewhere")) is None


def test_a_new_terminal_reaches_the_stack_without_exports(tmp_path: Path):
    project = tmp_path / "project"
    below = project / "notebooks" / "deep"
    below.mkdir(parents=True)
    state = project / ".state"
    port, mongo_port = free_port(), free_port()
    up_env = _clean_env(tmp_path / "home-up")
    up_env.update(
        BOTAI_STATE_DIR=str(state),
        BOTAI_PREFECT_PORT=str(port),
        BOTAI_MONGODB_PORT=str(mongo_port),
        BOTAI_MIN_FREE_DISK_GB="0.1",
        BOTAI_DEMO_PROBE_TIMEOUT_S="1",
        BOTAI_DEMO_DAYS="60",
        BOTAI_BINANCE_BASE_URL=f"http://127.0.0.1:{free_port()}",  # nothing listens: synthetic
    )
    settings = Settings(state_dir=state, prefect_port=port, mongodb_port=mongo_port)
    out_path = tmp_path / "up.out"
    with open(out_path, "w") as out:
        up = subprocess.Popen(
            [str(BIN / "botai"), "up", "--no-first-pipeline"],
            cwd=REPO_ROOT,
            env=up_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 420  # a fresh Prefect database migrates first
        while "supervising" not in out_path.read_text() and up.poll() is None:
            assert time.monotonic() < deadline, out_path.read_text()[-3000:]
            time.sleep(1)
        ready = out_path.read_text()
        assert up.poll() is None, ready[-3000:]

        auth = prefect_auth_string(settings)
        secret_file = state / "secrets" / "prefect-api-auth"
        assert auth.split(":", 1)[1] not in ready  # the string is never printed
        assert f"enter the whole line of {secret_file}" in ready and "Login form" in ready
        assert "export PREFECT" not in ready and "export BOTAI" not in ready  # none needed
        profile = profiles_path(settings)
        assert _mode(profile) == 0o600 and _mode(project / "prefect.toml") == 0o600
        assert auth in profile.read_text()
        assert auth not in (project / "prefect.toml").read_text()

        terminal = _clean_env(tmp_path / "home-2")
        for cwd in (project, below):
            status = _run([str(BIN / "botai"), "status", "--json"], cwd, terminal)
            assert status.returncode == 0, status.stdout[-2000:] + status.stderr[-2000:]
            info = json.loads(status.stdout)
            assert Path(info["state_dir"]).resolve() == state.resolve() and info["api_healthy"]
            assert info["api"] == settings.prefect_api_url
            assert "ingest-market-data/ingest-market-data" in info["deployments"]

        created = []
        plain = _run([str(BIN / "prefect"), "deployment", "run", *INGEST], project, terminal)
        assert plain.returncode == 0, plain.stdout[-2000:] + plain.stderr[-2000:]
        created += re.findall(r"UUID: ([0-9a-f-]{36})", plain.stdout)
        wrapped = _run(
            [str(BIN / "botai"), "prefect", "deployment", "run", *INGEST], below, terminal
        )
        assert wrapped.returncode == 0, wrapped.stdout[-2000:] + wrapped.stderr[-2000:]
        created += re.findall(r"UUID: ([0-9a-f-]{36})", wrapped.stdout)
        assert len(created) == 2, plain.stdout + wrapped.stdout
        api = settings.prefect_api_url.replace("://", f"://{auth}@", 1)
        for run_id in created:
            run = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()
            assert run["parameters"]["params"]["symbols"] == ["ETHUSDT"]
        for home in ("home-up", "home-2"):  # never ~/.prefect
            assert not (tmp_path / home / ".prefect").exists(), home

        down = _run([str(BIN / "botai"), "down"], below, terminal)
        assert down.returncode == 0 and "stopped:" in down.stdout, down.stdout + down.stderr
        up.wait(60)
    finally:
        if up.poll() is None:
            up.terminate()
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                for p in psutil.Process(up.pid).children(recursive=True):
                    p.kill()
                up.kill()
