"""load_settings: one Settings per environment, re-read when the environment changes."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from core.settings import load_settings

pytestmark = pytest.mark.tc("none")


def test_one_settings_per_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BOTAI_STATE_DIR", str(tmp_path / "a"))
    first = load_settings()
    assert load_settings() is first  # built once while the environment is the same
    assert first.state_dir == tmp_path / "a"

    monkeypatch.setenv("BOTAI_STATE_DIR", str(tmp_path / "b"))  # as `botai up` and tests do
    assert load_settings().state_dir == tmp_path / "b"
    monkeypatch.setenv("MONGODB_DATABASE", "other_db")  # a variable outside the prefix
    assert load_settings().mongodb_database == "other_db"
    current = load_settings()
    monkeypatch.chdir(tmp_path)  # a default may depend on the working folder
    assert load_settings() is not current


def test_overrides_win_and_are_not_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOTAI_PREFECT_PORT", "4300")
    shared = load_settings()
    mine = load_settings(prefect_port=4400)
    assert (shared.prefect_port, mine.prefect_port) == (4300, 4400)
    assert load_settings(prefect_port=4400) is not mine


def test_shared_settings_are_read_only_and_bad_values_still_raise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ValidationError):
        load_settings().prefect_port = 1  # type: ignore[misc]
    monkeypatch.setenv("BOTAI_PREFECT_PORT", "not a port")
    with pytest.raises(ValidationError, match="prefect_port"):
        load_settings()
