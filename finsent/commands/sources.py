"""`finsent sources`: the producer service that pulls feeds, APIs and files into Kafka, and
`finsent sources check`, which fetches each source once and prints what would be published."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from finsent.commands.pipeline import cannot_connect, stoppable_kafka_check
from finsent.health import HealthServer, ListenError
from finsent.log_redaction import mask_secrets_in_log
from finsent.registry import worker_registry
from finsent.settings import Settings, load_settings
from ingest.sources.config import SourceList, SourcesConfigError, StdinSource, load_sources
from ingest.sources.publisher import KafkaPublisher, StreamPublisher
from ingest.sources.service import SourcesService

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    """Add `finsent sources` and `finsent sources check` to the `finsent` parser."""
    parser = sub.add_parser(
        "sources",
        help="pull configured feeds, APIs and files into the raw Kafka topic (long-running)",
        description=__doc__,
    )
    _common_args(parser, None)
    parser.set_defaults(handler=run_service)
    inner = parser.add_subparsers(dest="sources_command", metavar="SUBCOMMAND")
    check = inner.add_parser(
        "check", help="fetch each source once and print the messages as JSON lines; publish nothing"
    )
    _common_args(check, argparse.SUPPRESS)
    check.add_argument("--source", action="append", default=[], help="only this source (repeatable)")
    check.set_defaults(handler=run_check)


def _common_args(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--config",
        dest="sources_config",
        type=Path,
        default=default,
        help="the sources YAML file (default: sources.config_file from the settings)",
    )
    parser.add_argument(
        "--settings",
        type=Path,
        default=default,
        help="finsent settings YAML (default: the FINSENT_CONFIG environment variable)",
    )


def _load(args: argparse.Namespace) -> tuple[Settings, SourceList] | None:
    settings = load_settings(getattr(args, "settings", None))
    path = getattr(args, "sources_config", None) or settings.sources.config_file
    if path is None:
        print("finsent sources: no sources file: pass --config or set sources.config_file", file=sys.stderr)
        return None
    try:
        sources = load_sources(Path(path))
    except SourcesConfigError as e:
        print(f"finsent sources: {e}{settings_file_hint(Path(path))}", file=sys.stderr)
        return None
    mask_secrets_in_log(sources)  # its headers and params (API keys) are secrets too
    return settings, sources


def settings_file_hint(path: Path) -> str:
    """A pointer to `--settings` when the sources file given looks like a finsent settings file (its
    top-level keys are settings sections: kafka, pipeline, ...): `--config` is the sources file here, not
    the settings file as for the other commands. Empty otherwise."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return ""
    sections = set(data) & set(Settings.model_fields) if isinstance(data, dict) else set()
    if not sections - {"sources"}:
        return ""
    return (
        f"; {path} looks like a finsent settings file ({', '.join(sorted(sections))}): pass it with "
        "--settings; --config names the sources file"
    )


def run_check(args: argparse.Namespace) -> int:
    """Fetch every (or the chosen) source once; messages to stdout, a summary per source to stderr."""
    loaded = _load(args)
    if loaded is None:
        return 2
    settings, sources = loaded
    if args.source:
        unknown = set(args.source) - {s.name for s in sources.sources}
        if unknown:
            print(f"finsent sources check: unknown source(s): {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        sources = SourceList(sources=tuple(s for s in sources.sources if s.name in args.source))
    service = SourcesService(
        sources,
        settings.sources,
        StreamPublisher(sys.stdout),
        CollectorRegistry(),
        dry_run=True,
        stdin=sys.stdin.buffer if _has_stdin(sources) else None,
    )
    try:
        reports = service.run_all_once()
    finally:
        service.stop()
    for r in reports:
        status = "ok" if r.ok else f"FAILED ({r.error})"
        print(
            f"{r.source}: {status}; {r.fetched} fetched, {r.published} would be published, "
            f"{r.duplicates} duplicates, {r.invalid} invalid",
            file=sys.stderr,
        )
    return 0 if all(r.ok for r in reports) else 1


def _has_stdin(sources: SourceList) -> bool:
    return any(isinstance(s, StdinSource) for s in sources.enabled())


def run_service(args: argparse.Namespace) -> int:
    """Run until SIGTERM/SIGINT (or until stdin ends when it is the only source)."""
    loaded = _load(args)
    if loaded is None:
        return 2
    settings, sources = loaded
    if not sources.enabled():
        print("finsent sources: every source is disabled; nothing to do", file=sys.stderr)
        return 2
    if not settings.kafka.bootstrap_servers:
        print("finsent sources: kafka.bootstrap_servers is not set", file=sys.stderr)
        return 2
    from finsent.app import quiet_libraries

    quiet_libraries()  # kafka-python's reconnect lines, once a minute each during a broker outage
    # one line (TLS files, then the broker), not kafka-python's retries
    stopping = (
        "stopping: letting the fetches under way finish, waiting up to "
        f"{settings.sources.flush_timeout_s:g} s for the broker's acknowledgements"
    )
    stop, exit_code = stoppable_kafka_check(settings, "sources", uses_elasticsearch=False, stopping=stopping)
    if exit_code is not None:
        return exit_code
    registry = worker_registry()
    try:
        publisher = KafkaPublisher(
            settings.kafka.client_kwargs(), flush_timeout_s=settings.sources.flush_timeout_s
        )
    except KafkaError as e:
        print(cannot_connect(settings, "sources", e), file=sys.stderr)
        return 1
    try:
        service = SourcesService(
            sources,
            settings.sources,
            publisher,
            registry,
            stdin=sys.stdin.buffer if _has_stdin(sources) else None,
        )
    except OSError as e:  # the state directory cannot be made or read (sources.state_dir)
        print(f"finsent sources: sources.state_dir: {e}", file=sys.stderr)
        publisher.close()
        return 2
    server = None
    if settings.metrics.enabled:
        try:
            server = HealthServer(
                registry, lambda: {"scheduler": service.running}, settings.metrics.host, settings.metrics.port
            ).start()
        except ListenError as e:
            print(f"finsent sources: {e}", file=sys.stderr)
            publisher.close()
            return 2
    service.start()
    log.info(
        "publishing %d source(s) to %s (idempotent producer: %s)",
        len(service.sources),
        settings.sources.topic,
        publisher.idempotent,
    )
    try:
        while not stop.is_set() and not service.wait(timeout=0.5):
            pass
    finally:
        service.stop()
        publisher.close()
        if server is not None:
            server.stop()
    log.info("sources stopped")
    return 0
