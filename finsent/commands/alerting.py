"""Sub-commands owned by the alerting part of finsent: `alerts` (the live worker) and `backtest`."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from kafka.errors import KafkaError
from pydantic import ValidationError

from alerts.config import AlertSettings
from alerts.model import Alert, rfc3339
from finsent.extras import missing_extra

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from finsent.alert_worker import AlertWorker
    from finsent.health import HealthServer
    from finsent.settings import Settings


def register(sub: Any) -> None:
    """Add this module's sub-commands to the `finsent` parser."""
    p = sub.add_parser("alerts", help="run the alert worker on the labeled topic until SIGTERM/SIGINT")
    p.add_argument("--config", type=Path, help="YAML settings file (else FINSENT_CONFIG)")
    p.set_defaults(handler=cmd_alerts)

    p = sub.add_parser(
        "backtest", help="replay labeled events (or raw messages through the model) through the detector"
    )
    p.add_argument("file", type=Path, help="JSONL: labeled events, or raw messages (labeled by the model)")
    p.add_argument("--config", type=Path, help="YAML settings file (its `alerts` section is used)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override an alerts setting, e.g. --set window_s=600 --set min_effect=0.15 (YAML values)",
    )
    p.add_argument("--plots", type=Path, help="write one chart per alerted key into this folder")
    p.add_argument("--format", choices=("png", "html"), default="png", help="chart format")
    p.add_argument("--json", action="store_true", help="print alerts as JSON lines instead of text")
    p.add_argument("--model-dir", type=Path, help="model for raw messages (default: the bundled model)")
    p.set_defaults(handler=cmd_backtest)


def cmd_alerts(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from finsent.alert_worker import AlertWorker
    from finsent.app import quiet_libraries
    from finsent.commands.pipeline import install_stop_signals, kafka_unreachable
    from finsent.health import ListenError
    from finsent.settings import load_settings

    quiet_libraries()  # httpx logs request URLs at INFO, and webhook URLs are secrets
    settings = load_settings(args.config)
    if not settings.kafka.bootstrap_servers:
        print("kafka.bootstrap_servers is empty: set FINSENT_KAFKA__BOOTSTRAP_SERVERS", file=sys.stderr)
        return 2
    if kafka_unreachable(settings, "alerts"):
        return 1
    stop = threading.Event()
    install_stop_signals(stop)
    registry = CollectorRegistry()
    worker = AlertWorker(settings, registry=registry)
    try:
        health = start_health_server(settings, registry, worker)
    except ListenError as e:
        print(f"finsent alerts: {e}", file=sys.stderr)
        return 2
    try:
        worker.run(stop)
    except KafkaError as e:
        print(f"finsent alerts: Kafka at {settings.kafka.bootstrap_servers} failed: {e}", file=sys.stderr)
        return 1
    finally:
        if health is not None:
            health.stop()
    return 0


def start_health_server(
    settings: Settings, registry: CollectorRegistry, worker: AlertWorker
) -> HealthServer | None:
    """/metrics, /readyz and /healthz of `finsent alerts` (None when metrics are off); started = its loop
    has polled once. Both probes allow `kafka.max_poll_interval_ms` between polls, not the labeler's window: a
    healthy step waits on the state topic (a save up to 30 s, a commit 10 s) and on Elasticsearch (each
    alert document up to `elasticsearch.request_timeout_s`), and by then the group has dropped it anyway."""
    from finsent.health import HealthServer, loop_liveness, loop_readiness

    if not settings.metrics.enabled:
        return None
    stalled_after_s = settings.kafka.max_poll_interval_ms / 1000

    def loop_ref() -> AlertWorker | None:
        return worker if worker.last_poll else None

    return HealthServer(
        registry,
        loop_readiness(loop_ref, stalled_after_s),
        settings.metrics.host,
        settings.metrics.port,
        liveness=loop_liveness(loop_ref, stalled_after_s),
    ).start()


def backtest_settings(config: Path | None, overrides: list[str]) -> AlertSettings:
    """The `alerts` section of the YAML file (if any) with `--set` overrides on top. Raises ValueError with
    a one-line message for an unreadable file, bad YAML, a malformed `--set` or a rejected value."""
    from finsent.settings import describe_validation_error, read_yaml, yaml_problem

    data: dict[str, Any] = {}
    if config is not None:
        loaded = read_yaml(config, f"{config}: no such settings file") or {}
        section = (loaded.get("alerts") or {}) if isinstance(loaded, dict) else None
        if not isinstance(section, dict):
            raise ValueError(f"{config}: expected a mapping with an `alerts:` section")
        data = dict(section)
    for item in overrides:
        name, sep, value = item.partition("=")
        parts = name.strip().removeprefix("alerts.").split(".")
        if not sep or not all(parts):
            raise ValueError(f"--set {item!r}: expected NAME=VALUE, e.g. --set window_s=600")
        target = data
        for depth, part in enumerate(parts[:-1], start=1):
            inner = target.setdefault(part, {})
            if not isinstance(inner, dict):
                raise ValueError(f"--set {item!r}: {'.'.join(parts[:depth])} is a value, not a section")
            target = inner
        try:
            target[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ValueError(f"--set {item!r}: the value is not valid YAML ({yaml_problem(e)})") from None
    try:
        return AlertSettings(**data)
    except ValidationError as e:
        raise ValueError(describe_validation_error(e, ("alerts",))) from None


def _raw_to_labeled(
    records: list[tuple[int, Any]],
    settings: AlertSettings,
    model_dir: Path | None,
    skipped: list[tuple[int, str]],
) -> Iterator[tuple[int, Any]]:
    """Raw messages -> the model -> labeled events (the same fan-out as the pipeline). Lines the pipeline
    would dead-letter are appended to `skipped` (line, reason), so they count as invalid."""
    from finsent.labeled_events import labeled_events
    from inference.labeler import label_each_if_refused, load_labeler
    from ingest.decode import DecodeLimits, decode
    from ingest.message import DeadLetter, KafkaMeta

    labeler = load_labeler(model_dir)
    now = datetime.now(tz=UTC)
    messages = []
    for lineno, obj in records:
        raw = json.dumps(obj).encode() if not isinstance(obj, str) else obj.encode()
        msg = decode(raw, KafkaMeta("backtest", 0, lineno), DecodeLimits(), now)
        if isinstance(msg, DeadLetter):
            skipped.append((lineno, f"{msg.error}: {msg.reason}"))
            continue
        messages.append((lineno, msg))
    for start in range(0, len(messages), 64):
        chunk = messages[start : start + 64]
        predictions = label_each_if_refused(labeler, [m.text for _, m in chunk])
        for (lineno, msg), pred in zip(chunk, predictions, strict=True):
            if pred is None:  # as the pipeline, which dead-letters it
                skipped.append((lineno, "inference_failed: the model gave non-finite logits"))
                continue
            for _key, value in labeled_events(
                msg, pred, key_types=settings.keys, labeled_at=now, model_version=labeler.model_version
            ):
                yield lineno, json.loads(value)


def _alert_line(a: Alert) -> str:
    end = rfc3339(a.ends_at) if a.ends_at is not None else "still firing"
    where = f"{a.key_type}:{a.key}"
    span = f"{rfc3339(a.starts_at)} -> {end}"
    return f"{a.status.upper():8} {a.severity:8} {a.rule:15} {where}  {span}  {a.summary}"


def cmd_backtest(args: argparse.Namespace) -> int:
    from alerts.backtest import is_labeled, read_jsonl, run_backtest

    try:
        settings = backtest_settings(args.config, args.overrides)
    except ValueError as exc:
        print(f"finsent backtest: bad settings: {exc}", file=sys.stderr)
        return 2
    if not args.file.is_file():
        print(f"{args.file}: no such file", file=sys.stderr)
        return 2
    if args.plots is not None and missing_extra("matplotlib", "plots", "backtest", "for --plots"):
        return 2
    records = list(read_jsonl(args.file))
    labeled = sum(1 for _, obj in records if is_labeled(obj))
    raw_skipped: list[tuple[int, str]] = []
    if records and labeled == 0:
        print(f"{args.file}: no labeled events found; labeling {len(records)} raw messages with the model")
        stream: Any = _raw_to_labeled(records, settings, args.model_dir, raw_skipped)
    else:
        stream = records
    result = run_backtest(settings, stream)
    invalid = sorted(raw_skipped + result.invalid)
    for lineno, reason in invalid[:20]:
        print(f"line {lineno}: skipped ({reason})", file=sys.stderr)
    if len(invalid) > 20:
        print(f"... {len(invalid) - 20} more invalid lines", file=sys.stderr)
    for a in result.alerts:
        print(json.dumps(a.es_document()) if args.json else _alert_line(a))
    counts = ", ".join(f"{k} {v}" for k, v in sorted(result.outcomes.items()))
    firing = sum(1 for a in result.alerts if a.status == "firing")
    print(
        f"{firing} alerts fired, {len(result.alerts) - firing} resolved; events: {counts or 'none'}; "
        f"invalid {len(invalid)}",
        file=sys.stderr if args.json else sys.stdout,
    )
    if not result.outcomes:
        print(
            f"finsent backtest: {args.file}: no usable event in {len(records)} line(s) "
            f"({len(invalid)} invalid)",
            file=sys.stderr,
        )
        return 2
    if args.plots is not None:
        from alerts.plot import write_plot

        for key_id in result.alerted_keys():
            latest = {a.alert_id: a for a in result.alerts if f"{a.key_type}:{a.key}" == key_id}
            alerts = list(latest.values())
            path = write_plot(args.plots, key_id, result.series(key_id), alerts, args.format)
            print(f"chart: {path}", file=sys.stderr if args.json else sys.stdout)
    return 0
