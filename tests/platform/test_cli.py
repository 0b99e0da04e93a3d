"""The botai CLI's own logic: .env loading and argument checks (commands run in the
run-command test against a real stack)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deployments.cli import build_parser, load_dotenv, main


@pytest.mark.tc("none")
def test_dotenv_adds_only_unset_non_empty_variables(tmp_path: Path, monkeypatch):
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# comment\nBOTAI_T_NEW=from-file\nexport BOTAI_T_QUOTED='quoted value'\n"
        "BOTAI_T_SET=from-file\nBOTAI_T_EMPTY=\nnot a variable line\n"
    )
    monkeypatch.setenv("BOTAI_T_SET", "from-env")
    for name in ("BOTAI_T_NEW", "BOTAI_T_QUOTED", "BOTAI_T_EMPTY"):
        monkeypatch.delenv(name, raising=False)
    try:
        assert load_dotenv(env_file) == ["BOTAI_T_NEW", "BOTAI_T_QUOTED"]
        assert os.environ["BOTAI_T_NEW"] == "from-file"
        assert os.environ["BOTAI_T_QUOTED"] == "quoted value"
        assert os.environ["BOTAI_T_SET"] == "from-env"  # the environment wins
        assert "BOTAI_T_EMPTY" not in os.environ
    finally:
        for name in ("BOTAI_T_NEW", "BOTAI_T_QUOTED"):
            os.environ.pop(name, None)
    assert load_dotenv(tmp_path / "missing.env") == []


@pytest.mark.tc("TC-ASYNC-083")
def test_ingest_rejects_bad_parameters_before_touching_the_stack(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("BOTAI_STATE_DIR", str(tmp_path))
    assert main(["ingest", "--source", "synthetic", "--symbols", "btc-usdt"]) == 2
    assert "invalid parameters" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ingest", "--source", "ftp"])


@pytest.mark.tc("none")
def test_down_and_status_on_an_empty_state_folder(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("BOTAI_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("BOTAI_PREFECT_PORT", "1")  # nothing answers there
    assert main(["down"]) == 0
    assert "nothing runs" in capsys.readouterr().out
    assert main(["status"]) == 1
    out = capsys.readouterr().out
    assert "no process recorded" in out and "not answering" in out


@pytest.mark.tc("none")
def test_prefect_passthrough_needs_a_stack_profile_and_keeps_every_argument(
    capsys, monkeypatch, tmp_path
):
    monkeypatch.setenv("BOTAI_STATE_DIR", str(tmp_path))
    assert main(["prefect", "--help"]) == 1  # `--help` is prefect's, not botai's
    assert "no Prefect profile in" in capsys.readouterr().err
