"""Sub-commands owned by the alerting part of finsent: `alerts` (the live worker) and `backtest`."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from alerts.config import AlertSettings
from alerts.model import Alert, rfc3339


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
    from finsent.commands.pipeline import install_stop_signals
    from finsent.health import HealthServer
    from finsent.settings import load_settings

    quiet_libraries()  # httpx logs request URLs at INFO, and webhook URLs are secrets
    settings = load_settings(args.config)
    if not settings.kafka.bootstrap_servers:
        print("kafka.bootstrap_servers is empty: set FINSENT_KAFKA__BOOTSTRAP_SERVERS", file=sys.stderr)
        return 2
    stop = threading.Event()
    install_stop_signals(stop)
    registry = CollectorRegistry()
    worker = AlertWorker(settings, registry=registry)
    health = None
    if settings.metrics.enabled:
        health = HealthServer(
            registry, lambda: {"kafka": worker.ready}, settings.metrics.host, settings.metrics.port
        ).start()
    try:
        worker.run(stop)
    finally:
        if health is not None:
            health.stop()
    return 0


def backtest_settings(config: Path | None, overrides: list[str]) -> AlertSettings:
    """The `alerts` section of the YAML file (if any) with `--set` overrides on top."""
    data: dict[str, Any] = {}
    if config is not None:
        loaded = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        section = loaded.get("alerts", {}) if isinstance(loaded, dict) else {}
        data = dict(section) if isinstance(section, dict) else {}
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected NAME=VALUE")
        target = data
        parts = name.strip().removeprefix("alerts.").split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = yaml.safe_load(value)
    return AlertSettings(**data)


def _raw_to_labeled(
    records: list[tuple[int, Any]], settings: AlertSettings, model_dir: Path | None
) -> Iterator[tuple[int, Any]]:
    """Raw messages -> the model -> labeled events (the same fan-out as the pipeline)."""
    from finsent.labeled_events import labeled_events
    from inference.labeler import load_labeler
    from ingest.decode import DecodeLimits, decode
    from ingest.message import DeadLetter, KafkaMeta

    labeler = load_labeler(model_dir)
    now = datetime.now(tz=UTC)
    messages = []
    for lineno, obj in records:
        raw = json.dumps(obj).encode() if not isinstance(obj, str) else obj.encode()
        msg = decode(raw, KafkaMeta("backtest", 0, lineno), DecodeLimits(), now)
        if isinstance(msg, DeadLetter):
            print(f"line {lineno}: skipped ({msg.error}: {msg.reason})", file=sys.stderr)
            continue
        messages.append((lineno, msg))
    for start in range(0, len(messages), 64):
        chunk = messages[start : start + 64]
        predictions = labeler.label([m.text for _, m in chunk])
        for (lineno, msg), pred in zip(chunk, predictions, strict=True):
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
        print(f"bad settings: {exc}", file=sys.stderr)
        return 2
    if not args.file.is_file():
        print(f"{args.file}: no such file", file=sys.stderr)
        return 2
    records = list(read_jsonl(args.file))
    labeled = sum(1 for _, obj in records if is_labeled(obj))
    if records and labeled == 0:
        print(f"{args.file}: no labeled events found; labeling {len(records)} raw messages with the model")
        stream: Any = _raw_to_labeled(records, settings, args.model_dir)
    else:
        stream = records
    result = run_backtest(settings, stream)
    for lineno, reason in result.invalid[:20]:
        print(f"line {lineno}: skipped ({reason})", file=sys.stderr)
    if len(result.invalid) > 20:
        print(f"... {len(result.invalid) - 20} more invalid lines", file=sys.stderr)
    for a in result.alerts:
        print(json.dumps(a.es_document()) if args.json else _alert_line(a))
    counts = ", ".join(f"{k} {v}" for k, v in sorted(result.outcomes.items()))
    firing = sum(1 for a in result.alerts if a.status == "firing")
    print(
        f"{firing} alerts fired, {len(result.alerts) - firing} resolved; events: {counts or 'none'}; "
        f"invalid {len(result.invalid)}",
        file=sys.stderr if args.json else sys.stdout,
    )
    if args.plots is not None:
        from alerts.plot import write_plot

        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("charts need matplotlib: pip install 'finsent[plots]'", file=sys.stderr)
            return 2
        for key_id in result.alerted_keys():
            latest = {a.alert_id: a for a in result.alerts if f"{a.key_type}:{a.key}" == key_id}
            alerts = list(latest.values())
            path = write_plot(args.plots, key_id, result.series(key_id), alerts, args.format)
            print(f"chart: {path}", file=sys.stderr if args.json else sys.stdout)
    return 0
