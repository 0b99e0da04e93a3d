"""Session-wide fixtures: a real nx-27017 process and one Prefect test server.

Environment is fixed before Prefect is imported anywhere: Prefect's home lives in a
temporary folder (never ~/.prefect) and Keras uses the JAX backend.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="botai-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_TMP / "prefect-home")
# not the profile a prefect.toml that `botai up` wrote in the repo root points at
os.environ["PREFECT_PROFILES_PATH"] = str(_SESSION_TMP / "prefect-home" / "profiles.toml")
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ["BOTAI_STATE_DIR"] = str(_SESSION_TMP / "state")
os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "true")
os.environ.setdefault("PREFECT_SERVER_API_HOST", "127.0.0.1")

import pytest  # noqa: E402
from pytest_httpserver import HTTPServer  # noqa: E402

from integrations.embedded_mongo import EmbeddedMongo, start_embedded_mongo  # noqa: E402
from integrations.store import Store, connect  # noqa: E402
from tests.peers import Mailbox, free_port  # noqa: E402

if TYPE_CHECKING:
    from blocks.model_store import ModelStoreBlock

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

#: (node id, tc marker arguments) of every test this session collected (tests/test_traceability.py)
TC_ITEMS = pytest.StashKey[list[tuple[str, list[object]]]]()


def traceability_module():  # noqa: ANN201 - the scripts/traceability.py module
    """scripts/traceability.py, imported once (scripts/ is not a package)."""
    name = "botai_traceability"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, REPO_ROOT / "scripts" / "traceability.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _tc_args(item: pytest.Item) -> list[object]:
    return [a for m in item.iter_markers("tc") for a in m.args]


def pytest_itemcollected(item: pytest.Item) -> None:
    """Record each collected test's spec markers (for the traceability check)."""
    item.config.stash.setdefault(TC_ITEMS, []).append((item.nodeid, _tc_args(item)))


@pytest.fixture(scope="session")
def traceability():  # noqa: ANN201 - the scripts/traceability.py module
    """The traceability generator module (scripts/traceability.py)."""
    return traceability_module()


@pytest.fixture
def collected_tc_markers(request: pytest.FixtureRequest) -> list[tuple[str, list[object]]]:
    """(node id, tc marker arguments) of every test this session collected."""
    return request.config.stash.get(TC_ITEMS, [])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test names the spec case(s) it covers, and those cases exist.

    The case ids are read from the spec (../shared/spec/TC-ASYNC.md or $BOTAI_SPEC_PATH);
    without it only the form of each id is checked.

    Raises:
        pytest.UsageError: a test has no tc marker or names an unknown case (collection fails).
    """
    tr = traceability_module()
    spec = tr.spec_path()
    known = {c.case_id for c in tr.read_cases(spec)} if spec.exists() else None
    problems = [p for item in items for p in tr.marker_problems(item.nodeid, _tc_args(item), known)]
    if problems:
        shown = "\n  ".join(problems[:40])
        more = f"\n  ... and {len(problems) - 40} more" if len(problems) > 40 else ""
        raise pytest.UsageError(
            "each test must be marked with the spec case(s) it covers, "
            '@pytest.mark.tc("TC-ASYNC-NNN", ...), or tc("none") for platform behaviour the spec '
            f"does not describe (docs/traceability.md):\n  {shown}{more}"
        )


@pytest.fixture(scope="session")
def session_tmp() -> Path:
    """A folder that lives for the whole test session."""
    return _SESSION_TMP


@pytest.fixture(scope="session")
def mongo_server(session_tmp: Path) -> Iterator[EmbeddedMongo]:
    """A real nx-27017 process on a free port, for the whole session."""
    server = start_embedded_mongo(session_tmp / "mongo")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mongo_uri(mongo_server: EmbeddedMongo) -> str:
    """URI of the session's nx-27017 server."""
    return mongo_server.uri


@pytest.fixture
def mongo_db_name() -> str:
    """A fresh database name per test, so tests never see each other's documents."""
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store(mongo_uri: str, mongo_db_name: str) -> Iterator[Store]:
    """A :class:`Store` on a fresh database with every index created."""
    client = connect(mongo_uri)
    s = Store(client, mongo_db_name)
    s.ensure_indexes()
    yield s
    client.close()


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """One temporary Prefect server (SQLite) for the whole session. Returns its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """``../shared/data`` with the real market data (read-only)."""
    if not SHARED_DATA.exists():
        pytest.skip(f"real market data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def mongo_block(prefect_server: str, mongo_uri: str, mongo_db_name: str, store: Store) -> Store:
    """Save ``MongoDBBlock(uri=mongo_uri, database=<this test's db>)`` as block "mongodb".

    Returns the test's :class:`Store`; flows that call ``blocks.loader.load_store()`` reach
    the same database.
    """
    from blocks.mongodb import MongoDBBlock

    MongoDBBlock(uri=mongo_uri, database=mongo_db_name).save("mongodb", overwrite=True)
    return store


@pytest.fixture
def model_store_block(prefect_server: str, tmp_path: Path) -> ModelStoreBlock:
    """Save a ``ModelStoreBlock`` named "model-store": a random AES-256 key, a tmp folder.

    Returns the saved block (``.directory``, ``.get_key()``).
    """
    from blocks.model_store import ModelStoreBlock, generate_model_key

    directory = tmp_path / "models"
    directory.mkdir()
    block = ModelStoreBlock(directory=str(directory), key=generate_model_key())
    block.save("model-store", overwrite=True)
    return block


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    """A real SMTP server (aiosmtpd) on a free port, no TLS, no login."""
    from aiosmtpd.controller import Controller

    box = Mailbox(port=free_port())
    ctl = Controller(box, hostname="127.0.0.1", port=box.port)
    ctl.start()
    yield box
    ctl.stop()


@pytest.fixture
def peer() -> Iterator[HTTPServer]:
    """A threaded local HTTP server (pytest-httpserver) for Slack, the engine or an LLM API."""
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield server
    server.clear()
    if server.is_running():
        server.stop()
