"""A CSV import reads only files inside the configured data folders: the parameter model
refuses any other path before a run exists (HTTP gateway and CLI alike), and the import checks
again where it opens the file. Paths are resolved first: no '..' or symbolic-link escape."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.main import create_app
from api.security import issue_token
from api.settings import load_api_settings
from core.exceptions import InvalidInputError
from core.schemas.market_data import IngestParameters
from core.settings import load_settings
from integrations.market_data.csv_source import read_candles_csv
from integrations.market_data.pipeline import import_csv
from integrations.store import C, Store

pytestmark = pytest.mark.tc("TC-ASYNC-096", "TC-ASYNC-083")

ROWS = "timestamp,open,high,low,close,volume\n" + "".join(
    f"2024-01-01T{h:02d}:00:00Z,10,11,9,10.5,{h}\n" for h in range(8)
)


@pytest.fixture
def folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(a data folder holding ok.csv, a folder outside it holding secret.csv); the data
    folder is the only one allowed (BOTAI_DATA_DIRS)."""
    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    (data / "ok.csv").write_text(ROWS)
    (outside / "secret.csv").write_text(ROWS)
    monkeypatch.setenv("BOTAI_DATA_DIRS", str(data))
    return data, outside


def _csv(path: str) -> IngestParameters:
    return IngestParameters(source="csv", symbols=["XRPUSDT"], csv_path=path)


def test_paths_outside_the_data_folders_are_refused_with_the_folders_named(folders) -> None:
    data, outside = folders
    (data / "link.csv").symlink_to(outside / "secret.csv")
    (data / "sub").symlink_to(outside, target_is_directory=True)
    refused = [
        "/etc/passwd",
        str(outside / "secret.csv"),
        str(data / ".." / "outside" / "secret.csv"),
        str(data / "link.csv"),  # a link inside pointing outside
        str(data / "sub" / "secret.csv"),
        os.path.relpath(outside / "secret.csv"),
    ]
    for path in refused:
        with pytest.raises(ValidationError) as info:
            _csv(path)
        text = str(info.value)
        assert "is outside the data folders" in text and str(data.resolve()) in text, path
        assert "BOTAI_DATA_DIRS" in text
    assert _csv(str(data / "ok.csv")).csv_path == str((data / "ok.csv").resolve())
    assert _csv(str(data / "x" / ".." / "ok.csv")).csv_path == str((data / "ok.csv").resolve())
    with pytest.raises(ValidationError, match="not a valid file path"):
        _csv("bad\x00.csv")


def test_default_folders_are_the_shared_data_and_the_state_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BOTAI_DATA_DIRS", raising=False)
    settings = load_settings(state_dir=tmp_path / "state", data_dir=tmp_path / "shared")
    assert settings.allowed_data_dirs == [
        (tmp_path / "shared").resolve(),
        (tmp_path / "state" / "data").resolve(),
    ]
    monkeypatch.setenv("BOTAI_DATA_DIRS", f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}")
    assert load_settings().allowed_data_dirs == [
        (tmp_path / "a").resolve(),
        (tmp_path / "b").resolve(),
    ]


def test_the_import_checks_again_where_it_opens_the_file(folders, store: Store) -> None:
    """A caller that bypassed the parameter model still cannot make the worker read it."""
    data, outside = folders
    allowed = load_settings().allowed_data_dirs
    with pytest.raises(InvalidInputError, match="is outside the data folders"):
        import_csv(store, str(outside / "secret.csv"), symbol="XRPUSDT", allowed_dirs=allowed)
    with pytest.raises(InvalidInputError, match="is outside the data folders"):
        read_candles_csv("/etc/passwd", allowed_dirs=allowed)
    assert store.col(C.MARKET_DATA).count_documents({}) == 0
    [res] = import_csv(store, str(data / "ok.csv"), symbol="XRPUSDT", allowed_dirs=allowed)
    assert res.inserted == 8


def test_gateway_refuses_the_path_before_queueing(folders, store: Store) -> None:
    settings = load_api_settings(jwt_secret="csv-path-test-secret-" + "c" * 24)
    admin = {"Authorization": f"Bearer {issue_token(settings, 'ada', admin=True)}"}
    client = TestClient(create_app(settings, store_factory=lambda: store))
    body = {"source": "csv", "symbols": ["XRPUSDT"], "csv_path": "/etc/passwd"}
    r = client.post("/api/tasks/ingest", json=body, headers=admin)
    assert r.status_code == 422
    error = r.json()["error"]
    assert error.startswith("Invalid parameters: csv_path: file '/etc/passwd' is outside")
    assert str(folders[0].resolve()) in error
    assert store.col(C.API_USAGE).count_documents({}) == 0
