"""Sub-commands owned by the pipeline part of finsent: run, produce, check-config, demo."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import queue
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from kafka.errors import KafkaError

from finsent.commands.argtypes import non_negative, topic_name
from finsent.settings import Settings, load_settings, with_env_vars
from ingest.secret_names import SECRET_NAMES

if TYPE_CHECKING:
    from finsent.produce import Replayed, ReplayInput, ReplayStop

log = logging.getLogger(__name__)

CONFIG_HELP = "YAML settings file (else FINSENT_CONFIG); FINSENT_* variables override it"

PRODUCE_CLOSE_JOIN_S = 5.0
"""How long `finsent produce` waits for the producer's I/O thread once a close drops its records."""


def register(sub: Any) -> None:
    """Add this module's sub-commands to the `finsent` parser."""
    p = sub.add_parser("run", help="run the labeling pipeline until SIGTERM/SIGINT")
    p.add_argument("--config", type=Path, help=CONFIG_HELP)
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("produce", help="replay a JSONL or CSV file into a Kafka topic at a given rate")
    p.add_argument("file", type=Path, help="JSONL (one message per line) or CSV with a `text` column")
    p.add_argument(
        "--topic", type=topic_name, help="target topic (default: the first of pipeline.input_topics)"
    )
    p.add_argument(
        "--rate", type=non_negative(float), default=0.0, help="messages per second (0: as fast as possible)"
    )
    p.add_argument("--limit", type=non_negative(int), help="send at most this many records")
    p.add_argument("--source", help="`source` for CSV rows without one (default csv:<file name>)")
    p.add_argument("--config", type=Path, help=CONFIG_HELP)
    p.set_defaults(handler=cmd_produce)

    p = sub.add_parser(
        "check-config",
        help="print the effective settings (secrets masked) and check what `finsent run` checks at start",
        description=cmd_check_config.__doc__,
    )
    p.add_argument(
        "--format", choices=("yaml", "json"), default="yaml", help="output format (default: %(default)s)"
    )
    p.add_argument("--config", type=Path, help=CONFIG_HELP)
    p.set_defaults(handler=cmd_check_config)

    p = sub.add_parser(
        "pseudonym",
        help="print the pseudonym stored for each author (pipeline.pseudonymize_key), e.g. to erase them",
        description=cmd_pseudonym.__doc__,
    )
    p.add_argument("authors", nargs="+", metavar="AUTHOR", help="an author as the messages name them")
    p.add_argument("--config", type=Path, help=CONFIG_HELP)
    p.set_defaults(handler=cmd_pseudonym)

    p = sub.add_parser(
        "demo", help="run everything locally on a bundled sample stream and show live progress"
    )
    p.add_argument(
        "--duration",
        type=non_negative(float),
        default=0.0,
        help="stop after this many seconds (0: when done)",
    )
    p.add_argument(
        "--rate",
        type=non_negative(float),
        default=50.0,
        help="sample messages per second (default %(default)g; 0: as fast as possible; fast rates may end "
        "before alerts close)",
    )
    p.add_argument("--config", type=Path, help=CONFIG_HELP)
    p.set_defaults(handler=cmd_demo)


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None))


@contextmanager
def _quiet_kafka_retries() -> Iterator[None]:
    """kafka-python logs every failed bootstrap attempt at ERROR (dozens of lines while it retries for
    30 s); the caller reports the outcome in one line instead. Kept with --log-level DEBUG."""
    kafka_log = logging.getLogger("kafka")
    previous = kafka_log.level
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        kafka_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        kafka_log.setLevel(previous)


def kafka_refusal(
    settings: Settings,
    command: str,
    *,
    uses_elasticsearch: bool = True,
    stopped: Callable[[], bool] | None = None,
) -> int | None:
    """Bootstrap once (kafka-python retries for up to 30 s) before anything else starts. Returns the exit
    code that ends the command, after its one line: 2 for a TLS file that cannot be read (a setting to
    fix, as every other refused setting), 1 when no broker answers (`finsent <command>: cannot connect to
    Kafka at ...`); None to go on. Checked up front so that the model is not loaded and no worker thread
    starts (each would fail with its own traceback). With `stopped`, the wait ends as soon as it returns
    True (a SIGTERM during the check), and None is returned: the caller, whose stop handlers are installed
    already, checks its stop next."""
    from kafka import KafkaAdminClient

    from finsent.background import Background

    for problem in unreadable_tls_files(settings, uses_elasticsearch=uses_elasticsearch):
        print(f"finsent {command}: {problem}", file=sys.stderr)
        return 2
    log.info("connecting to Kafka at %s", settings.kafka.bootstrap_servers)

    def bootstrap() -> None:
        with _quiet_kafka_retries():
            KafkaAdminClient(**settings.kafka.client_kwargs()).close()

    check = Background(bootstrap, "finsent-kafka-check")
    if not check.wait(unless=stopped):
        return None  # stopped first; the check is left to end by itself
    try:
        check.result()
    except KafkaError as e:
        print(cannot_connect(settings, command, e), file=sys.stderr)
        return 1
    return None


def stoppable_kafka_check(
    settings: Settings, command: str, *, uses_elasticsearch: bool = True, stopping: str | None = None
) -> tuple[StopEvent, int | None]:
    """The start of a long-running command: its stop signals installed first (as a container's PID 1,
    Python ignores SIGTERM until it has a handler, and a stop sent during the check was lost), then
    `kafka_refusal`, given up on when a signal comes. Returns the stop and None to go on, or the exit
    code: 1 when Kafka cannot be reached, 2 for an unreadable TLS file; when stopped while connecting,
    SIGINT (Ctrl-C) ends as it always did there, `finsent <command>: interrupted`, exit 130
    (KeyboardInterrupt, which `finsent.cli` reports), and SIGTERM, a requested stop, with one line and
    exit 0, as the command's stop at any later time. `stopping` is logged (INFO) when the stop signal
    arrives: what the command does before it ends, which may take a while."""
    stop = StopEvent(stopping)
    install_stop_signals(stop)
    refused = kafka_refusal(settings, command, uses_elasticsearch=uses_elasticsearch, stopped=stop.is_set)
    if refused is not None:
        return stop, refused
    if not stop.is_set():
        return stop, None
    if stop.signum == signal.SIGINT:
        raise KeyboardInterrupt
    log.info("finsent %s: stopped while connecting to Kafka at %s", command, settings.kafka.bootstrap_servers)
    return stop, 0


def unreadable_tls_files(settings: Settings, *, uses_elasticsearch: bool = True) -> list[str]:
    """The TLS files the settings name that cannot be read, one line each (Elasticsearch's only for a
    command that writes there: `produce` and `sources` ran fine without it). kafka-python reported a
    missing CA file (a Secret without its key, on Kubernetes) only as "cannot connect", after 30 s."""
    named: dict[str, Path | None] = {
        "kafka.ssl_cafile": settings.kafka.ssl_cafile,
        "kafka.ssl_certfile": settings.kafka.ssl_certfile,
        "kafka.ssl_keyfile": settings.kafka.ssl_keyfile,
    }
    if uses_elasticsearch and settings.elasticsearch.enabled and settings.elasticsearch.url:
        named["elasticsearch.ca_certs"] = settings.elasticsearch.ca_certs
    return [
        f"{name} (FINSENT_{name.upper().replace('.', '__')}): cannot read {path}"
        for name, path in named.items()
        if path is not None and not (path.is_file() and os.access(path, os.R_OK))
    ]


KAFKA_ADDRESS_SETTING = "kafka.bootstrap_servers / FINSENT_KAFKA__BOOTSTRAP_SERVERS"
EMPTY_BOOTSTRAP = (
    "kafka.bootstrap_servers is empty: set FINSENT_KAFKA__BOOTSTRAP_SERVERS (only `finsent demo`, which "
    "starts a local broker, runs without it)"
)


def cannot_connect(settings: Settings, command: str, error: BaseException) -> str:
    """The one line printed when Kafka cannot be reached: the address, the error, the setting that gives
    the address, and which of its host names did not resolve (kafka-python's error says only that no
    broker answered in time)."""
    servers = settings.kafka.bootstrap_servers
    unresolved = unresolved_hosts(servers)
    why = f"; host name {', '.join(unresolved)} did not resolve" if unresolved else ""
    return f"finsent {command}: cannot connect to Kafka at {servers}: {error} ({KAFKA_ADDRESS_SETTING}{why})"


def unresolved_hosts(bootstrap_servers: str) -> list[str]:
    """The host names of a `host:port,...` list that do not resolve (a DNS lookup, no connection)."""
    import socket

    unresolved = []
    for entry in (e.strip() for e in bootstrap_servers.split(",")):
        if not entry:
            continue
        host = entry[1 : entry.find("]")] if entry.startswith("[") else entry.partition(":")[0]
        try:
            socket.getaddrinfo(host, None)
        except (OSError, UnicodeError):
            unresolved.append(host)
    return unresolved


class StopEvent(threading.Event):
    """The stop of a long-running command; `signum` is the signal that asked for it (None: none yet), and
    `stopping` the line logged when it arrives (what the command does before it ends)."""

    signum: int | None = None

    def __init__(self, stopping: str | None = None) -> None:
        super().__init__()
        self.stopping = stopping


def install_stop_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT ask the loop to stop; a second SIGINT interrupts at once. Installed before the
    command waits on anything (the Kafka check): as a container's PID 1, Python ignores SIGTERM until it
    has a handler, and a stop sent meanwhile was lost.

    The handler never sets `stop` itself: it runs between two bytecodes of the main thread, which may hold
    the event's lock at that moment (inside `stop.wait()`, or inside a first handler's `Event.set()` when
    `timeout` sends SIGTERM to the child and again to its group), and taking it there again hung the
    process for good. It hands the signal to a thread of its own instead, through a queue whose put() is
    reentrant, and that thread sets the event, after logging the StopEvent's `stopping` line (INFO) when
    it has one: a stop that waits on an output said nothing for up to `pipeline.shutdown_timeout_s`. Only
    the first signal counts."""
    signalled: list[int] = []
    relay: queue.SimpleQueue[int] = queue.SimpleQueue()

    def set_stop() -> None:
        relay.get()
        stopping = stop.stopping if isinstance(stop, StopEvent) else None
        if stopping:
            logging.getLogger("finsent").info("%s", stopping)
        stop.set()

    threading.Thread(target=set_stop, name="finsent-stop-signal", daemon=True).start()

    def handler(signum: int, _frame: object) -> None:
        if signalled:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        signalled.append(signum)
        if isinstance(stop, StopEvent):
            stop.signum = signum
        relay.put(signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def cmd_run(args: argparse.Namespace) -> int:
    from finsent.app import ModelLoadError, StoppedDuringStartup, prepare_worker, run_worker
    from finsent.health import ListenError
    from finsent.kafka_topics import TopicSetupError
    from finsent.outputs.es_setup import IndexSetupError
    from finsent.runner import PipelineError

    settings = _settings(args)
    if not settings.kafka.bootstrap_servers:
        print(
            "kafka.bootstrap_servers is empty: set FINSENT_KAFKA__BOOTSTRAP_SERVERS (or try `finsent demo`)",
            file=sys.stderr,
        )
        return 2
    refused = (ModelLoadError, IndexSetupError, ListenError, TopicSetupError)  # fix the settings and rerun
    try:  # before Kafka: a bad model or a taken port stops it before it creates topics or joins groups
        prepared = prepare_worker(settings)
    except refused as e:
        print(_refused_line(e), file=sys.stderr)
        return 2
    try:
        stop, exit_code = stoppable_kafka_check(settings, "run", stopping=run_stopping_line(settings))
    except BaseException:
        prepared.stop()
        raise
    if exit_code is not None:
        prepared.stop()
        return exit_code
    try:
        run_worker(settings, stop, prepared)
    except refused as e:
        print(_refused_line(e), file=sys.stderr)
        return 2
    except StoppedDuringStartup as e:
        logging.getLogger("finsent").info("%s", e)
        return 0
    except PipelineError as e:
        logging.getLogger("finsent").error("the pipeline stopped: %s (nothing unwritten was committed)", e)
        return 1
    except KafkaError as e:
        print(f"finsent run: Kafka at {settings.kafka.bootstrap_servers} failed: {e}", file=sys.stderr)
        return 1
    return 0


def _refused_line(error: Exception) -> str:
    """`finsent run`'s one line for a start-up refusal (model, Elasticsearch, metrics port, topics)."""
    from finsent.app import ModelLoadError
    from finsent.outputs.es_setup import IndexSetupError

    what = "model: " if isinstance(error, ModelLoadError) else ""
    what = "Elasticsearch: " if isinstance(error, IndexSetupError) else what
    return f"finsent run: {what}{error}"


def run_stopping_line(settings: Settings) -> str:
    """What `finsent run` logs when its stop signal arrives: the stop may take a while (an Elasticsearch
    outage holds the batches in flight for `pipeline.shutdown_timeout_s`)."""
    return (
        "stopping: finishing the batch in flight, waiting up to "
        f"{settings.pipeline.shutdown_timeout_s:g} s for the outputs"
    )


def cmd_produce(args: argparse.Namespace) -> int:
    """Check the input, connect, stream it; progress on stderr every few seconds, the count on stdout.
    SIGINT and SIGTERM stop it at any point: what was sent is flushed (up to `produce.STOP_FLUSH_S`), the
    count printed as at a normal end, marked `(interrupted)`, and the exit code is 128 + the signal (130
    for Ctrl-C, 143 for SIGTERM)."""
    from finsent.app import quiet_libraries
    from finsent.produce import Replayed, ReplayInterrupted, ReplayStop, open_input

    quiet_libraries()
    settings = _settings(args)
    topic = args.topic or settings.pipeline.input_topics[0]
    stop = ReplayStop()
    with _replay_stop_signals(stop):
        try:  # the first record is read before connecting: a bad file fails at once, not after 30 s
            replay_input = stop.blocking_call(open_input, args.file, source=args.source)  # a FIFO: blocks
        except ValueError as e:
            print(f"finsent produce: {e}", file=sys.stderr)
            return 2
        except ReplayInterrupted:
            return _produce_report(Replayed(stopped_by=stop.signum), topic)
        with replay_input:
            code = _produce(args, settings, replay_input, topic, stop)
        warning = replay_input.undated_warning()  # after the count: what a re-run of the file would do
        if warning is not None:
            print(warning, file=sys.stderr)
        return code


@contextmanager
def _replay_stop_signals(stop: ReplayStop) -> Iterator[None]:
    """SIGINT and SIGTERM request `stop` (a second SIGINT interrupts at once) while the block runs; the
    handlers before are restored after it (`finsent produce` also runs inside tests and scripts)."""

    def handler(signum: int, _frame: object) -> None:
        if stop.requested:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        stop.request(signum)  # raises ReplayInterrupted where the replay waits on a silent pipe

    before = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, previous in before.items():
            signal.signal(signum, previous)


def _produce(
    args: argparse.Namespace, settings: Settings, replay_input: ReplayInput, topic: str, stop: ReplayStop
) -> int:
    """Connect and replay the opened input; the exit code of `finsent produce`."""
    from finsent.background import Background
    from finsent.outputs.kafka_outputs import close_producer as close_with_join
    from finsent.outputs.kafka_outputs import make_producer
    from finsent.produce import Replayed, progress_line, replay

    close_producer = functools.partial(close_with_join, join_s=PRODUCE_CLOSE_JOIN_S)

    if not settings.kafka.bootstrap_servers:
        print("kafka.bootstrap_servers is empty: set FINSENT_KAFKA__BOOTSTRAP_SERVERS", file=sys.stderr)
        return 2
    refused = kafka_refusal(settings, "produce", uses_elasticsearch=False, stopped=lambda: stop.requested)
    if refused is not None:
        return refused
    if stop.requested:
        return _produce_report(Replayed(stopped_by=stop.signum), topic)

    def progress(sent: int, elapsed_s: float) -> None:
        print(progress_line(topic, sent, elapsed_s, replay_input.share_read()), file=sys.stderr)

    try:
        with _quiet_kafka_retries():
            producer = make_producer(settings.kafka)
    except KafkaError as e:
        print(cannot_connect(settings, "produce", e), file=sys.stderr)
        return 1
    # every send() to a topic that does not exist waits max_block_ms (60 s) and fails alone: a typo in
    # --topic, on a broker that creates no topics on use, took a minute per record
    lookup = Background(lambda: producer.partitions_for(topic), "finsent-produce-topic")
    if not lookup.wait(unless=lambda: stop.requested):
        close_producer(producer, 0)
        return _produce_report(Replayed(stopped_by=stop.signum), topic)
    try:
        lookup.result()
    except KafkaError as e:
        close_producer(producer)
        why = "a broker that creates no topics on use needs it created first"
        print(
            f"finsent produce: topic {topic} not found at {settings.kafka.bootstrap_servers} ({why}): {e}",
            file=sys.stderr,
        )
        return 1
    try:
        result = replay(
            producer,
            topic,
            replay_input.records,
            rate=args.rate,
            limit=args.limit,
            progress=progress,
            stop=stop,
        )
    except KafkaError as e:
        close_producer(producer)
        print(f"finsent produce: Kafka at {settings.kafka.bootstrap_servers} failed: {e}", file=sys.stderr)
        return 1
    except BaseException:  # a second Ctrl-C: no more waiting
        close_producer(producer, 0)
        raise
    # records still unacknowledged after a stop's wait are dropped, not waited for again
    close_producer(producer, 0 if result.unconfirmed else None)
    return _produce_report(result, topic)


def _produce_report(result: Replayed, topic: str) -> int:
    """Print what a replay did. An input that broke off part-way (bad UTF-8 or CSV further on) exits 2
    like a bad file, as its last line, after the count of what was sent before it. A replay stopped by a
    signal says so on the count's line and exits 128 + the signal (130: SIGINT, 143: SIGTERM)."""
    from finsent.produce import STOP_FLUSH_S

    interrupted = " (interrupted)" if result.stopped_by is not None else ""
    print(f"sent {result.sent} records to {topic}{interrupted}")
    if result.failed:
        print(f"{result.failed} records were NOT written (first: {result.first_error})", file=sys.stderr)
    if result.unconfirmed:
        print(
            f"finsent produce: {result.unconfirmed} records were not acknowledged within {STOP_FLUSH_S:g} s "
            "of the stop: they may or may not have been written",
            file=sys.stderr,
        )
    if result.input_error is not None:
        read = result.sent + result.failed + result.unconfirmed
        print(f"finsent produce: {result.input_error} (stopped there, after {read} records)", file=sys.stderr)
    if result.stopped_by is not None:
        return 128 + int(result.stopped_by)
    if result.input_error is not None:
        return 2
    return 1 if result.failed else 0


# The user info runs to the last `@` before the path (as HTTP clients split it: `user:p@ss@host`).
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/@\s:]*:)[^/\s]*@")
# A bare token as the user (`https://TOKEN@host`): no colon, no dot (a user name rarely looks like one).
_URL_TOKEN_USER = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://)[A-Za-z0-9_\-]{20,}@")
_QUERY_SECRET = re.compile(rf"(?P<head>[?&][^=&#\s]*(?:{SECRET_NAMES})[^=&#\s]*=)[^&#\s]*", re.I)


def effective_settings(settings: Settings) -> dict[str, Any]:
    """Settings as plain JSON values; SecretStr fields come out as `**********`, and so do the password
    of a URL that carries one (`https://user:pw@es:9200`), a long token as a URL's user, and query
    parameters named like secrets (`?auth_token=...`)."""
    data: dict[str, Any] = _redact(settings.model_dump(mode="json"))
    return data


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        value = _URL_PASSWORD.sub(r"\g<head>**********@", value)
        value = _URL_TOKEN_USER.sub(r"\g<head>**********@", value)
        return _QUERY_SECRET.sub(r"\g<head>**********", value)
    if isinstance(value, dict):
        return {k: _redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def cmd_pseudonym(args: argparse.Namespace) -> int:
    """Print, one per line, the value stored in the Elasticsearch documents' `author` field for each
    AUTHOR under `pipeline.pseudonymize_key` (FINSENT_PIPELINE__PSEUDONYMIZE_KEY), so that an author's
    documents can be found and deleted (an erasure request: docs/data.md) without storing names."""
    from finsent.outputs.es_documents import pseudonym

    key = _settings(args).pipeline.pseudonymize_key
    secret = key.get_secret_value() if key is not None else ""  # as the labeler keys it: not stripped
    if not secret.strip():
        print(
            "finsent pseudonym: pipeline.pseudonymize_key (FINSENT_PIPELINE__PSEUDONYMIZE_KEY) is not set: "
            "with pseudonymize_authors off, authors are stored as given",
            file=sys.stderr,
        )
        return 2
    for author in args.authors:
        print(pseudonym(author, secret.encode("utf-8")))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    """Print the effective settings (secrets masked), then check what `finsent run` checks before it
    connects: the TLS files named (Kafka's, and Elasticsearch's when it is written to) exist and are
    readable, and the model does (`finsent.app.model_problem`: the model directory, the ONNX file of
    `model.device`, the CUDA provider when it is cuda, the labels the outputs expect), without loading the
    model or connecting anywhere. Each problem is one line on stderr, and the exit code is then 2."""
    settings = _settings(args)
    missing = settings.alerts.notifiers.missing_credentials()
    if missing:  # loaded: alerts.enabled is off, so only `finsent alerts` needs them
        print(
            f"note: {with_env_vars(missing)} not set: `finsent alerts` will not start with these settings",
            file=sys.stderr,
        )
    from alerts.config import UNFILLED_LINKS, dashboard_template_problem

    template_problem = dashboard_template_problem(settings.alerts.dashboard_url_template)
    if template_problem is not None:
        print(
            f"note: alerts.dashboard_url_template {template_problem}: {UNFILLED_LINKS}",
            file=sys.stderr,
        )
    data = effective_settings(settings)
    if args.format == "json":
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(yaml.safe_dump(data, sort_keys=True), end="")
    problems = startup_problems(settings)
    for problem in problems:
        print(f"finsent check-config: {problem}", file=sys.stderr)
    return 2 if problems else 0


def startup_problems(settings: Settings) -> list[str]:
    """What stops `finsent run` at its start with these settings, found without a network connection or
    loading the model: no Kafka address, unreadable TLS files, and a model that cannot serve. One line
    each."""
    from finsent.app import model_problem

    problems = [EMPTY_BOOTSTRAP] if not settings.kafka.bootstrap_servers else []
    problems += unreadable_tls_files(settings)
    model = model_problem(settings)
    if model is not None:
        problems.append(model)
    return problems


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_demo(args: argparse.Namespace) -> int:
    from finsent.app import ModelLoadError
    from finsent.demo import run_demo

    settings = _settings(args)
    # SIGTERM as Ctrl-C: the local server the demo starts lives in a session of its own, and only an
    # unwinding stack (not a killed interpreter) stops it and removes its data
    signal.signal(signal.SIGTERM, _interrupt)
    refused = kafka_refusal(settings, "demo") if settings.kafka.bootstrap_servers else None
    if refused is not None:
        return refused  # a broker of the user's: one line, not kafka-python's retries for 30 s
    try:
        return int(run_demo(settings, duration_s=args.duration, rate=args.rate))
    except ModelLoadError as e:
        print(f"finsent demo: model: {e}", file=sys.stderr)
        return 2
    except KafkaError as e:
        print(cannot_connect(settings, "demo", e), file=sys.stderr)
        return 1
