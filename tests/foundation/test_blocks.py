"""Credential blocks: bootstrap from the environment, loading by a flow, secrets masked everywhere."""

from __future__ import annotations

import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.logging.handlers import APILogWorker

from blocks import (
    ALL_BLOCKS,
    LLMBlock,
    ModelStoreBlock,
    MongoDBBlock,
    SlackBlock,
    SMTPBlock,
    TradingEngineBlock,
)
from blocks.loader import load_block, load_store
from core.exceptions import ConfigurationError
from core.redact import is_placeholder, redact_mapping, redact_uri
from core.settings import load_settings
from deployments.bootstrap import bootstrap_blocks, describe_blocks, model_key_path
from tests.peers import restored_blocks

# Unique secret strings: if any of them shows up in a log, repr or API answer, the test fails.
LLM_KEY = f"sk-test-{uuid.uuid4().hex}"
SLACK_SECRET = uuid.uuid4().hex
SMTP_PASSWORD = f"pw-{uuid.uuid4().hex}"
ENGINE_TOKEN = f"tok-{uuid.uuid4().hex}"
MONGO_PASSWORD = f"mpw{uuid.uuid4().hex[:10]}"


def _environ(mongo_uri: str, db: str) -> dict[str, str]:
    return {
        "MONGODB_URI": mongo_uri,
        "MONGODB_DATABASE": db,
        "LLM_API_KEY": LLM_KEY,
        "LLM_BASE_URL": "http://127.0.0.1:9/v1",
        "LLM_MODEL": "gpt-4o-mini",
        "LLM_INPUT_USD_PER_1M": "0.15",
        "LLM_OUTPUT_USD_PER_1M": "0.6",
        "SLACK_WEBHOOK_URL": f"https://hooks.slack.com/services/T0/B0/{SLACK_SECRET}",
        "SLACK_CHANNEL": "#alerts",
        "SMTP_HOST": "smtp.example.org",
        "SMTP_SECURITY": "ssl",
        "SMTP_USERNAME": "bot",
        "SMTP_PASSWORD": SMTP_PASSWORD,
        "SMTP_SENDER": "bot@example.org",
        "SMTP_RECIPIENTS": "a@example.org, b@example.org",
        "TRADING_ENGINE_URL": "http://127.0.0.1:9/",
        "TRADING_ENGINE_TOKEN": ENGINE_TOKEN,
        "TRADING_ENGINE_TIMEOUT_S": "2.5",
    }


SECRETS = (LLM_KEY, SLACK_SECRET, SMTP_PASSWORD, ENGINE_TOKEN)


@pytest.fixture
def restore_blocks(prefect_server: str) -> Iterator[None]:
    """Put the session server's block documents back as they were: other areas' tests share
    it and may expect, say, no "llm" block."""
    with restored_blocks(*ALL_BLOCKS):
        yield


@flow(name="blocks-smoke")
def _use_blocks() -> dict[str, object]:
    """Load every block the way flows do, log them, use the unwrapped values."""
    logger = get_run_logger()
    out: dict[str, object] = {}
    for cls in (LLMBlock, SlackBlock, SMTPBlock, TradingEngineBlock, ModelStoreBlock):
        block = load_block(cls)
        logger.info("loaded %r / %s / %s", block, block, block.describe())
        out[cls.document_name] = block.describe()
    out["key_bytes"] = len(load_block(ModelStoreBlock).get_key())
    store = load_store()
    out["ping_ms"] = store.ping()
    out["database"] = store.db.name
    llm = load_block(LLMBlock).get_client()
    out["llm_base_url"] = str(llm.base_url)
    return out


@pytest.mark.tc("TC-ASYNC-099")
def test_bootstrap_creates_blocks_from_environment_and_a_flow_loads_them(
    restore_blocks: None, prefect_server: str, mongo_uri: str, mongo_db_name: str, tmp_path: Path
) -> None:
    settings = load_settings(state_dir=tmp_path / "state")
    env = _environ(mongo_uri, mongo_db_name)
    saved = bootstrap_blocks(settings, env)
    assert saved == [
        "botai-mongodb/mongodb",
        "botai-llm/llm",
        "botai-slack/slack",
        "botai-smtp/smtp",
        "botai-trading-engine/trading-engine",
        "botai-model-store/model-store",
    ]
    # the model-store key was generated once into a 0600 file and is stable across runs
    key_file = model_key_path(settings)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    first_key = load_block(ModelStoreBlock).key.get_secret_value()
    bootstrap_blocks(settings, env)
    assert load_block(ModelStoreBlock).key.get_secret_value() == first_key
    assert key_file.read_text().strip() == first_key

    smtp = load_block(SMTPBlock)
    assert (smtp.port, smtp.recipients) == (465, ["a@example.org", "b@example.org"])
    assert load_block(TradingEngineBlock).timeout_s == 2.5

    state = _use_blocks(return_state=True)
    assert state.is_completed()
    result = state.result()
    assert result["key_bytes"] == 32 and result["database"] == mongo_db_name
    assert result["llm_base_url"].startswith("http://127.0.0.1:9/v1")
    assert result["llm"]["api_key"] == "***"
    flat = repr(result)
    assert not any(s in flat for s in SECRETS)

    # the flow's logs, read back through the API, hold no secret
    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(
                flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    text = "\n".join(log.message for log in logs)
    assert "loaded LLMBlock(" in text  # the blocks were logged ...
    assert not any(s in text for s in SECRETS)  # ... masked

    # REST API without include_secrets: masked; with it: the only way to read them
    with httpx.Client(base_url=prefect_server, timeout=10) as http:
        docs = http.post("/block_documents/filter", json={}).json()
        body = http.post("/block_documents/filter", json={}).text
        assert any(d["name"] == "llm" for d in docs)
        assert not any(s in body for s in SECRETS)
        llm_doc = next(d for d in docs if d["name"] == "llm")
        assert set(llm_doc["data"]["api_key"]) == {"*"}
        plain = http.get(f"/block_documents/{llm_doc['id']}", params={"include_secrets": True})
        assert plain.json()["data"]["api_key"] == LLM_KEY

    shown = describe_blocks()
    assert {d["block"] for d in shown if d["present"]} >= set(saved)
    assert not any(s in repr(shown) for s in SECRETS)


@pytest.mark.tc("TC-ASYNC-099")
def test_secrets_masked_in_repr_str_and_describe() -> None:
    block = MongoDBBlock(uri=f"mongodb://bot:{MONGO_PASSWORD}@db.example.org:27017/", database="x")
    llm = LLMBlock(api_key=LLM_KEY)
    for shown in (repr(block), str(block), repr(llm), str(llm), repr(block.describe())):
        assert MONGO_PASSWORD not in shown and LLM_KEY not in shown
    assert block.display_uri() == "mongodb://bot:***@db.example.org:27017/"
    assert redact_uri("mongodb://h:1/?authSource=admin") == "mongodb://h:1/?authSource=admin"
    assert redact_mapping({"token": "abc", "nested": {"password": "p"}, "port": 1}) == {
        "token": "***",
        "nested": {"password": "***"},
        "port": 1,
    }


@pytest.mark.tc("none")
def test_missing_block_error_names_block_and_variable(prefect_server: str) -> None:
    with pytest.raises(ConfigurationError) as e:
        load_block(LLMBlock, "absent-llm")
    msg = str(e.value)
    assert "botai-llm/absent-llm" in msg and "LLM_API_KEY" in msg and "botai bootstrap" in msg
    with pytest.raises(ConfigurationError, match="MONGODB_URI"):
        load_store("absent-mongodb")


@pytest.mark.tc("none")
@pytest.mark.parametrize("placeholder", ["changeme", "your-api-key", "xxx", "<your token>"])
def test_placeholder_secrets_rejected_and_nothing_saved(
    restore_blocks: None, prefect_server: str, mongo_uri: str, tmp_path: Path, placeholder: str
) -> None:
    assert is_placeholder(placeholder)
    marker = uuid.uuid4().hex
    env = {
        "MONGODB_URI": mongo_uri,
        "LLM_API_KEY": placeholder,
        "SLACK_WEBHOOK_URL": f"https://hooks.slack.com/services/{marker}",
    }
    with pytest.raises(ConfigurationError, match="LLM_API_KEY") as e:
        bootstrap_blocks(load_settings(state_dir=tmp_path), env)
    assert "placeholder" in str(e.value)
    try:
        slack = load_block(SlackBlock)
        assert marker not in slack.webhook_url.get_secret_value()
    except ConfigurationError:
        pass  # never created: also nothing saved


@pytest.mark.tc("none")
def test_settings_reject_placeholder_mongodb_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONGODB_URI", "mongodb://bot:changeme@db.example.org/")
    with pytest.raises(ValueError, match="placeholder"):
        load_settings()
    assert not is_placeholder("sk-live-3f9a8b7c") and not is_placeholder("")


@pytest.mark.tc("none")
def test_optional_blocks_skipped_without_their_variables(
    restore_blocks: None, prefect_server: str, mongo_uri: str, tmp_path: Path
) -> None:
    settings = load_settings(state_dir=tmp_path, mongodb_database="only_defaults")
    saved = bootstrap_blocks(settings, {"MONGODB_URI": mongo_uri, "MODEL_STORE_KEY": ""})
    assert saved == ["botai-mongodb/mongodb", "botai-model-store/model-store"]
    assert load_block(MongoDBBlock).database == "only_defaults"
    assert load_block(ModelStoreBlock).directory == str(settings.model_dir)
