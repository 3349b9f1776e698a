"""Sub-commands owned by the alerting part of finsent: `alerts` (the live worker) and `backtest`."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import yaml
from kafka.errors import KafkaError
from pydantic import ValidationError

from alerts.alert_text import lag_words
from alerts.backtest import DEFAULT_PARTITIONS, LATE_WARN_SHARE, BacktestResult, JsonlFile, Route
from alerts.config import AlertSettings
from alerts.detector import LATE
from alerts.model import Alert, rfc3339, transition_counts
from finsent.commands.argtypes import at_least
from finsent.extras import missing_extra
from finsent.output_paths import output_folder_problem

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from finsent.alert_worker import AlertWorker
    from finsent.health import HealthServer
    from finsent.settings import Settings
    from inference.config import ModelSettings
    from inference.labeler import OnnxLabeler
    from ingest.message import Message

# Charts `finsent backtest --plots` writes at most by default: about 0.2 s and 60 KB each, and a
# market-wide replay alerted 1,000 keys (2 min 39 s, 847 MB of peak memory) in a review.
PLOTS_MAX = 200
RAW_PROGRESS_S = 5.0  # a progress line this often while raw messages are labeled by the model


def register(sub: Any) -> None:
    """Add this module's sub-commands to the `finsent` parser."""
    p = sub.add_parser("alerts", help="run the alert worker on the labeled topic until SIGTERM/SIGINT")
    p.add_argument("--config", type=Path, help="YAML settings file (else FINSENT_CONFIG)")
    p.set_defaults(handler=cmd_alerts)

    p = sub.add_parser(
        "backtest", help="replay labeled events (or raw messages through the model) through the detector"
    )
    p.add_argument("file", type=Path, help="JSONL: labeled events, or raw messages (labeled by the model)")
    p.add_argument(
        "--config",
        type=Path,
        help="YAML settings file (else FINSENT_CONFIG); FINSENT_* variables apply too, as for `alerts`",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override an alerts setting, e.g. --set window_s=600 --set min_effect=0.15 (YAML values)",
    )
    p.add_argument(
        "--partitions",
        type=at_least(int, 1),
        default=DEFAULT_PARTITIONS,
        help="partitions of the labeled topic, one detector each, keys routed as the pipeline does "
        f"(default {DEFAULT_PARTITIONS}, as deployed)",
    )
    p.add_argument(
        "--arrival-order",
        action="store_true",
        help="replay in file order instead of in the order the events were labeled (labeled_at, as the "
        "live worker got them; without it, their own time)",
    )
    p.add_argument("--plots", type=Path, help="write one chart per alerted key into this folder")
    p.add_argument(
        "--plots-max",
        type=at_least(int, 1),
        default=PLOTS_MAX,
        help=f"chart at most this many keys, those with the most alerts first (default {PLOTS_MAX}: a "
        "chart takes about 0.2 s, and a market-wide replay can alert thousands of keys)",
    )
    p.add_argument("--format", choices=("png", "html"), default="png", help="chart format")
    p.add_argument("--json", action="store_true", help="print alerts as JSON lines instead of text")
    p.add_argument("--model-dir", type=Path, help="model for raw messages (default: the model.* settings)")
    p.set_defaults(handler=cmd_backtest)


def cmd_alerts(args: argparse.Namespace) -> int:
    from finsent.alert_worker import HANDOVER_SAVE_TIMEOUT_S, AlertWorker, StateUnusable
    from finsent.app import quiet_libraries
    from finsent.commands.pipeline import stoppable_kafka_check
    from finsent.health import ListenError
    from finsent.settings import SettingsError, load_settings, with_env_vars

    quiet_libraries()  # httpx logs request URLs at INFO, and webhook URLs are secrets
    settings = load_settings(args.config)
    missing = settings.alerts.notifiers.missing_credentials()
    if missing:  # checked at load only with alerts.enabled, which is `finsent run`'s switch
        raise SettingsError(f"{with_env_vars(missing)}: needed when the channel is enabled")
    if not settings.kafka.bootstrap_servers:
        print("kafka.bootstrap_servers is empty: set FINSENT_KAFKA__BOOTSTRAP_SERVERS", file=sys.stderr)
        return 2
    stopping = (
        "stopping: finishing the step in flight, then saving the alert state (waiting up to "
        f"{HANDOVER_SAVE_TIMEOUT_S:g} s for the state topic)"
    )
    stop, exit_code = stoppable_kafka_check(settings, "alerts", stopping=stopping)
    if exit_code is not None:
        return exit_code
    from finsent.registry import worker_registry

    registry = worker_registry()
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
    except StateUnusable as e:  # its cause was logged where it happened, in one line or with its trace
        print(f"finsent alerts: stopped: {e} (see the error logged above)", file=sys.stderr)
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


def backtest_base_settings(config: Path | None) -> Settings:
    """The settings `finsent alerts` would run with: FINSENT_* variables over the YAML file (`config`, else
    FINSENT_CONFIG). A `config` that is missing, not YAML or has no mapping for `alerts` is named first, in
    the backtest's own words. Raises ValueError with a one-line message."""
    from finsent.settings import load_settings, read_yaml

    if config is not None:
        loaded = read_yaml(config, f"{config}: no such settings file") or {}
        section = (loaded.get("alerts") or {}) if isinstance(loaded, dict) else None
        if not isinstance(section, dict):
            raise ValueError(f"{config}: expected a mapping with an `alerts:` section")
    return load_settings(config)


def with_overrides(alerts: AlertSettings, overrides: list[str]) -> AlertSettings:
    """`alerts` with each `--set NAME=VALUE` (a YAML value; NAME dotted, `alerts.` optional) on top.
    Raises ValueError for a malformed `--set` or a value the settings reject."""
    from finsent.settings import describe_validation_error

    if not overrides:
        return alerts
    data = alerts.model_dump()
    for item in overrides:
        _set_one(data, item)
    try:
        return AlertSettings.model_validate(data)
    except ValidationError as e:
        raise ValueError(f"with --set: {describe_validation_error(e, ('alerts',))}") from None


def _set_one(data: dict[str, Any], item: str) -> None:
    """Apply one `--set NAME=VALUE` to the settings mapping `data`."""
    from ingest.yaml_errors import yaml_problem

    name, sep, value = item.partition("=")
    key = name.strip()  # what is quoted in an error: the value may be a secret (a webhook URL)
    parts = key.removeprefix("alerts.").split(".")
    if not sep or not all(parts):
        raise ValueError(f"--set {item!r}: expected NAME=VALUE, e.g. --set window_s=600")
    target = data
    for depth, part in enumerate(parts[:-1], start=1):
        inner = target.setdefault(part, {})
        if not isinstance(inner, dict):
            raise ValueError(f"--set {key}=...: {'.'.join(parts[:depth])} is a value, not a section")
        target = inner
    try:
        target[parts[-1]] = yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise ValueError(f"--set {key}=...: the value is not valid YAML ({yaml_problem(e)})") from None


def backtest_settings(config: Path | None, overrides: list[str]) -> AlertSettings:
    """The `alerts` settings of `finsent alerts` (environment, YAML file) with `--set` overrides on top.
    Raises ValueError with a one-line message for an unreadable file, bad YAML, a malformed `--set` or a
    rejected value."""
    return with_overrides(backtest_base_settings(config).alerts, overrides)


def changed_settings(alerts: AlertSettings) -> list[str]:
    """`name=value` for each alerts setting that differs from its default, so that a backtest says which
    settings it ran with. Notifiers are left out: they do not change what fires, and hold secrets."""
    ours = alerts.model_dump(exclude={"notifiers"}, mode="json")
    defaults = AlertSettings().model_dump(exclude={"notifiers"}, mode="json")
    return [f"{name}={json.dumps(value)}" for name, value in ours.items() if value != defaults.get(name)]


def partition_router(partitions: int) -> Route:
    """Key id -> partition of a labeled topic with `partitions` partitions, as the pipeline's producer puts
    the record keyed `<key_type>:<key>` (Kafka's murmur2 partitioning)."""
    from finsent.outputs.partitioner import CachedKeyPartitioner

    hashes = CachedKeyPartitioner()

    def route(key_id: str) -> int:
        return hashes.key_hash(key_id.encode("utf-8", "surrogatepass")) % partitions

    return route


NO_PUBLISHED_AT = "no_published_at: the message has no published_at, so the backtest cannot date it"


def _raw_to_labeled(
    records: Iterable[tuple[int, Any]],
    settings: AlertSettings,
    labeler: OnnxLabeler,
    skipped: list[tuple[int, str]],
    *,
    total: int | None = None,
    now: datetime | None = None,
) -> Iterator[tuple[int, Any]]:
    """Raw messages -> the model -> labeled events (the same fan-out as the pipeline), 64 at a time as
    `records` yields them. Lines the pipeline would dead-letter are appended to `skipped` (line, reason),
    so they count as invalid; so are messages without `published_at`, which the pipeline dates by their
    Kafka timestamp, and a file has none. `total`: the messages to label, for the progress line; `now`:
    the time they are decoded and labeled at (the one they were counted at)."""
    from finsent.labeled_events import labeled_events
    from finsent.processing import UNREADABLE
    from inference.labeler import label_each_if_refused

    now = datetime.now(tz=UTC) if now is None else now
    messages = _decoded(records, now, skipped)
    started = said = time.monotonic()
    done = 0
    while chunk := list(itertools.islice(messages, 64)):
        if done and time.monotonic() - said >= RAW_PROGRESS_S:  # a long file is not labeled in silence
            said = time.monotonic()
            rate = done / max(said - started, 1e-9)
            of = "" if total is None else f" of {total}"
            print(f"finsent backtest: labeled {done}{of} messages ({rate:.0f}/s)", file=sys.stderr)
        done += len(chunk)
        predictions = label_each_if_refused(labeler, [m.text for _, m in chunk])
        for (lineno, msg), pred in zip(chunk, predictions, strict=True):
            if pred is None:  # as the pipeline, which dead-letters it
                skipped.append((lineno, "inference_failed: the model gave non-finite logits"))
                continue
            if pred.unreadable:
                skipped.append((lineno, f"unreadable: {UNREADABLE}"))
                continue
            for _key, value in labeled_events(
                msg, pred, key_types=settings.keys, labeled_at=now, model_version=labeler.model_version
            ):
                event = json.loads(value)
                # labeled now, not when it arrived: as the live worker's clock it would date every
                # historical event from the past, so the replay goes by the events' own times
                event.pop("labeled_at", None)
                yield lineno, event


def _decoded(
    records: Iterable[tuple[int, Any]], now: datetime, skipped: list[tuple[int, str]]
) -> Iterator[tuple[int, Message]]:
    """(line, Message) of the records the pipeline's decoder accepts and that carry a `published_at`, one
    at a time; the others are appended to `skipped` (line, reason)."""
    for lineno, obj in records:
        msg = _decoded_one(lineno, obj, now)
        if isinstance(msg, str):
            skipped.append((lineno, msg))
        else:
            yield lineno, msg


def _decoded_one(lineno: int, obj: Any, now: datetime) -> Message | str:
    """The message the pipeline's decoder makes of one record, or why it is skipped."""
    from ingest.decode import DecodeLimits, decode
    from ingest.message import DeadLetter, KafkaMeta

    raw = json.dumps(obj).encode() if not isinstance(obj, str) else obj.encode()
    msg = decode(raw, KafkaMeta("backtest", 0, lineno), DecodeLimits(), now)
    if isinstance(msg, DeadLetter):
        return f"{msg.error}: {msg.reason}"
    if isinstance(obj, dict) and obj.get("published_at") is None:
        return NO_PUBLISHED_AT  # the decoder dated it `now`
    return msg


def alert_lines(alerts: list[Alert]) -> list[str]:
    """One text line per transition; a firing says when the same run resolves it."""
    resolved_at = {a.alert_id: a.ends_at for a in alerts if a.status == "resolved"}
    return [_alert_line(a, resolved_at.get(a.alert_id)) for a in alerts]


def _alert_line(a: Alert, resolved_at: float | None) -> str:
    from alerts.notifiers.render import summary_text

    if a.status == "resolved":
        end = rfc3339(a.ends_at)
    elif resolved_at is not None:
        end = f"{rfc3339(resolved_at)} (resolved)"
    else:
        end = "still firing at the end of the file"
    where = f"{a.key_type}:{a.key}"
    span = f"{rfc3339(a.starts_at)} -> {end}"
    return f"{a.status.upper():8} {a.severity:8} {a.rule:15} {where}  {span}  {summary_text(a)}"


def footer(result: BacktestResult, lines: int, invalid: int) -> str:
    """The counts: alerts, key-events (one per message and alert key) by outcome, and input lines."""
    counts = ", ".join(f"{k} {v}" for k, v in sorted(result.outcomes.items()))
    fired, escalated, resolved = transition_counts(result.alerts)
    return (
        f"{fired} alerts fired, {f'{escalated} escalated, ' if escalated else ''}{resolved} resolved; "
        f"key-events: {counts or 'none'}; "
        f"invalid {invalid} of {lines} lines"
    )


def late_warning(
    result: BacktestResult, arrival_order: bool, allowed_lateness_s: float | None = None
) -> str | None:
    """A warning when more than LATE_WARN_SHARE of the key-events were late (not counted), and why: in
    file order (--arrival-order) the file's order may be to blame; in the order they were labeled
    (`labeled_at`), they came too long after their window, as they would have live (a slow source)."""
    share = result.late_share()
    if share <= LATE_WARN_SHARE:
        return None
    late = f"{result.outcomes.get(LATE, 0)} of {result.key_events()} key-events ({share:.0%})"
    most = result.most_late()
    most_text = "" if most is None else f"; most: {most[0]} ({most[1]}{_lag_text(most[2])})"
    if arrival_order:
        return (
            f"finsent backtest: warning: {late} came after their window had closed in file order "
            f"(--arrival-order) and were not counted{most_text}. Without --arrival-order they are replayed "
            "in the order they were labeled (labeled_at, else their own time), as the live worker gets them"
        )
    if result.with_labeled_at:
        setting = "alerts.allowed_lateness_s" + (
            "" if allowed_lateness_s is None else f" ({allowed_lateness_s:g} s)"
        )
        return (
            f"finsent backtest: warning: {late} came after their window had closed, as they would have "
            f"live, and were not counted: they were labeled more than {setting} after their window's "
            f"end{most_text}. A slow source needs a larger allowed_lateness_s; one dated hours off has a "
            "wrong time zone or clock (see docs/alerting.md#backtest)"
        )
    return f"finsent backtest: warning: {late} came after their window had closed, not counted{most_text}"


def _lag_text(lag: float | None) -> str:
    """The most late key's largest lag (labeled_at after its time) as words; "" when none is known."""
    return "" if lag is None else f", labeled up to {lag_words(lag)} after its time"


def no_usable_event(path: Path, result: BacktestResult, lines: int, invalid: int) -> str:
    """Why a file gave the detector nothing to count."""
    text = f"finsent backtest: {path}: no usable event in {lines} line(s) ({invalid} invalid)"
    if result.ignored():
        text += f"; {result.ignored()} key-events of key types not in alerts.keys were ignored"
    return text


def cmd_backtest(args: argparse.Namespace) -> int:
    from alerts.backtest import UnreadableFile, run_backtest

    try:
        base = backtest_base_settings(args.config)
        settings = with_overrides(base.alerts, args.overrides)
        model = _model_settings(base, args.model_dir)
    except ValueError as exc:
        print(f"finsent backtest: bad settings: {exc}", file=sys.stderr)
        return 2
    if not args.file.is_file():
        why = "not a file" if args.file.exists() else "no such file"
        print(f"finsent backtest: {args.file}: {why}", file=sys.stderr)
        return 2
    if args.plots is not None and missing_extra("matplotlib", "plots", "backtest", "for --plots"):
        return 2
    plots_problem = None if args.plots is None else output_folder_problem(args.plots, "--plots")
    if plots_problem is not None:
        print(f"finsent backtest: {plots_problem}", file=sys.stderr)
        return 2
    changed = changed_settings(settings)
    differ = f"differing from the defaults: {', '.join(changed)}" if changed else "all defaults"
    print(f"finsent backtest: alerts settings: {differ}", file=sys.stderr)
    source = JsonlFile(args.file)  # read twice, never held: its kind first, then its events
    raw_skipped: list[tuple[int, str]] = []
    try:
        stream = _labeled_stream(source, settings, model, raw_skipped)
        if stream is None:
            return 2
        result = run_backtest(
            settings,
            stream,
            route=partition_router(args.partitions),
            sort=not args.arrival_order,
            trace=args.plots is not None,  # the per-key series are for the charts only
        )
    except UnreadableFile as exc:  # unreadable, or a gzip file cut short or not gzip after all
        print(f"finsent backtest: {args.file}: cannot read it ({exc})", file=sys.stderr)
        return 2
    return _report(args, result, source.lines, sorted(raw_skipped + result.invalid), settings)


def _labeled_stream(
    source: JsonlFile,
    settings: AlertSettings,
    model: ModelSettings,
    skipped: list[tuple[int, str]],
) -> Iterable[tuple[int, Any]] | None:
    """The file's records (read again, one at a time) when any is a labeled event; stored labeled
    documents (an export of the Elasticsearch events index) as the labeled events the pipeline made of
    them, with their own labels; else the raw messages labeled by the model. A first pass over the file
    tells which (`file_kind`), and counts the raw messages the model will label. None (said on stderr)
    when the model cannot be loaded."""
    from alerts.backtest import DOCUMENTS, LABELED, decoded, documents_as_events, file_kind

    now = datetime.now(tz=UTC)  # raw messages are decoded at this time, counted and then labeled

    def usable_raw(lineno: int, obj: Any) -> bool:
        return not isinstance(_decoded_one(lineno, obj, now), str)

    kind = file_kind(source, usable_raw)
    path = source.path
    if kind.kind == LABELED:
        return decoded(source)
    if kind.kind == DOCUMENTS:
        print(
            f"{path}: labeled documents (an Elasticsearch export): their stored labels are used, one "
            f"event per alert key ({', '.join(settings.keys)})",
            file=sys.stderr,
        )
        return documents_as_events(decoded(source), settings.keys)
    print(
        f"{path}: no labeled events found; labeling {source.lines} raw messages with the model",
        file=sys.stderr,
    )
    from inference.labeler import load_from_settings  # numpy and ONNX Runtime: only for raw messages

    try:
        labeler = load_from_settings(model)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"finsent backtest: cannot load the model: {exc}", file=sys.stderr)
        return None
    return _raw_to_labeled(decoded(source), settings, labeler, skipped, total=kind.counted, now=now)


def _model_settings(base: Settings, model_dir: Path | None) -> ModelSettings:
    """The `model.*` settings (as `finsent label` reads them), with --model-dir in place of `model.dir`."""
    from finsent.commands.model import model_settings_with

    return model_settings_with(base.model, {"dir": model_dir}, dir_flag="--model-dir")


def _report(
    args: argparse.Namespace,
    result: BacktestResult,
    lines: int,
    invalid: list[tuple[int, str]],
    settings: AlertSettings,
) -> int:
    """Print the skipped lines, the alerts, the counts and the charts; the exit status."""
    info = sys.stderr if args.json else sys.stdout
    for lineno, reason in invalid[:20]:
        print(f"line {lineno}: skipped ({reason})", file=sys.stderr)
    if len(invalid) > 20:
        print(f"... {len(invalid) - 20} more invalid lines", file=sys.stderr)
    for line in (
        [json.dumps(a.es_document()) for a in result.alerts] if args.json else alert_lines(result.alerts)
    ):
        print(line)
    print(footer(result, lines, len(invalid)), file=info)
    warning = late_warning(result, args.arrival_order, settings.allowed_lateness_s)
    if warning is not None:
        print(warning, file=sys.stderr)
    if not result.usable():
        print(no_usable_event(args.file, result, lines, len(invalid)), file=sys.stderr)
        return 2
    if args.plots is not None:
        return _write_plots(args, result, info)
    return 0


def _write_plots(args: argparse.Namespace, result: BacktestResult, info: TextIO) -> int:
    """One chart per alerted key, at most `--plots-max`, those with the most alerts first; the keys
    left out are counted on stderr."""
    from alerts.plot import write_plot

    by_key: dict[str, list[Alert]] = {}
    for a in result.alerts:
        by_key.setdefault(f"{a.key_type}:{a.key}", []).append(a)
    keys = sorted(result.alerted_keys(), key=lambda k: -len(by_key.get(k, ())))  # stable: ties in order
    if len(keys) > args.plots_max:
        print(
            f"finsent backtest: {len(keys)} keys alerted; charting the {args.plots_max} with the most alerts "
            f"(--plots-max), {len(keys) - args.plots_max} left out",
            file=sys.stderr,
        )
    for key_id in keys[: args.plots_max]:
        latest = {a.alert_id: a for a in by_key.get(key_id, ())}
        try:
            path = write_plot(args.plots, key_id, result.series(key_id), list(latest.values()), args.format)
        except OSError as exc:
            print(f"finsent backtest: --plots {args.plots}: cannot write a chart ({exc})", file=sys.stderr)
            return 1
        print(f"chart: {path}", file=info)
    return 0
