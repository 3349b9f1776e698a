"""Wiring for `finsent run`: real clients from settings, index setup, health server, the run loop."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kafka import KafkaProducer
from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from finsent.health import (
    HealthCheck,
    HealthServer,
    LoopHolder,
    LoopRef,
    all_of,
    loop_liveness,
    loop_readiness,
)
from finsent.kafka_topics import ensure_output_topics
from finsent.log_throttle import throttle_library_logs
from finsent.metrics import PipelineMetrics
from finsent.outputs.es_client import make_client
from finsent.outputs.es_retention import start_events_retention
from finsent.outputs.es_setup import IndexSetupError, ensure_index_setup, events_setup
from finsent.outputs.es_sink import ElasticsearchSink, backoff
from finsent.outputs.kafka_outputs import FLUSH_DRIVEN, KafkaOutputs, make_producer
from finsent.registry import worker_registry
from finsent.runner import BatchCallback, PipelineRunner, make_consumer
from finsent.settings import Settings
from inference.types import Labeler
from ingest.sources.http import quiet_http_logging

if TYPE_CHECKING:
    from inference.model_dir import ModelConfig

log = logging.getLogger(__name__)


def quiet_libraries() -> None:
    """Client libraries log every request and connection at INFO; keep their warnings only. The
    Elasticsearch transport also warns, with a traceback, at every retry and node failure: an outage
    (which the workers ride out, saying so themselves every tenth attempt) wrote a thousand lines in
    15 s, so only its errors are kept; kafka-python's repeated warnings and errors are let through once
    a minute per message (`finsent.log_throttle`). At DEBUG they all speak, except httpx, whose request
    lines carry URLs with secrets in them (quiet_http_logging)."""
    quiet_http_logging()
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in ("kafka", "urllib3", "apscheduler"):  # apscheduler: two lines per job run
            logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger("elastic_transport").setLevel(logging.ERROR)
        throttle_library_logs(("kafka",))  # its warnings repeat at every reconnect: once a minute each


CONTRACT_SENTIMENTS = frozenset({"negative", "neutral", "positive"})


class ModelLoadError(Exception):
    """The configured model cannot serve: missing or malformed directory, no GPU where one was asked
    for, or labels the outputs do not expect. Raised before anything is consumed."""


class StoppedDuringStartup(Exception):
    """A stop was asked for while start-up was still waiting on a server: a requested stop, not a
    failure (the command exits 0)."""


def load_model(settings: Settings) -> Labeler:
    """The labeler named by `model.*` (imported lazily: loading ONNX Runtime takes a moment)."""
    from inference.labeler import GpuUnavailableError, load_from_settings

    try:
        labeler: Labeler = load_from_settings(settings.model)
    except (ValueError, FileNotFoundError, GpuUnavailableError) as e:
        raise ModelLoadError(str(e)) from e
    problem = label_contract_problem(tuple(labeler.sentiment_labels), settings)
    if problem:
        raise ModelLoadError(problem)
    return labeler


def label_contract_problem(sentiments: tuple[str, ...], settings: Settings) -> str | None:
    """Why the model's sentiment labels do not fit the outputs, or None. The Elasticsearch mapping and
    the dashboards know negative / neutral / positive only, and the alert worker counts
    `alerts.negative_label`: a model labeling e.g. bearish / bullish would be served, and nothing would
    ever be counted as negative."""
    es = settings.elasticsearch
    if es.enabled and es.url and set(sentiments) != CONTRACT_SENTIMENTS:
        return (
            f"the model's sentiment labels {list(sentiments)} are not {sorted(CONTRACT_SENTIMENTS)}, "
            "which the Elasticsearch mapping and the dashboards expect (docs/CONTRACTS.md)"
        )
    if settings.alerts.negative_label not in sentiments:
        return (
            f"alerts.negative_label {settings.alerts.negative_label!r} is not one of the model's sentiment "
            f"labels {list(sentiments)}"
        )
    return None


def setup_elasticsearch(
    settings: Settings, stop: threading.Event, *, on_error: Callable[[], None] | None = None
) -> ElasticsearchSink | None:
    """Client + index template/alias/policy, retried until the server answers (or we are stopped); on a
    server without lifecycle management, the deletion of expired event indices (`es_retention`).
    `on_error` is called at each failed attempt (`finsent run` counts them in
    `finsent_output_errors_total{output="elasticsearch"}`, as the sink's failed writes: a labeler started
    during an outage shows it in the metrics, not only in its readiness)."""
    es_settings = settings.elasticsearch
    if not es_settings.enabled or not es_settings.url:
        log.info("Elasticsearch output disabled")
        return None
    client = make_client(es_settings)
    attempt = 0
    while True:
        try:
            lifecycle = ensure_index_setup(client, events_setup(es_settings))
            break
        except IndexSetupError:
            raise  # the server refused what we asked for (e.g. the lifecycle policy): retrying cannot help
        except Exception as e:
            if on_error is not None:
                on_error()
            if stop.wait(backoff(attempt, es_settings.retry_backoff_max_s)):
                raise StoppedDuringStartup(f"stopped while Elasticsearch was unavailable ({e})") from e
            if attempt % 10 == 0:
                log.warning("Elasticsearch index setup failed (%s); retrying", e)
            attempt += 1
    # Without lifecycle management on the server, expired daily indices are deleted by this worker, until
    # `stop` (a thread: the first pass must not delay the start).
    start_events_retention(client, es_settings, stop, lifecycle_in_force=lifecycle)
    return ElasticsearchSink(
        client,
        stop=stop,
        backoff_max_s=es_settings.retry_backoff_max_s,
        request_timeout_s=es_settings.request_timeout_s,
    )


def build_runner(
    settings: Settings,
    *,
    registry: CollectorRegistry,
    stop: threading.Event,
    labeler: Labeler,
    on_batch: BatchCallback | None = None,
) -> PipelineRunner:
    metrics = PipelineMetrics(
        registry, settings.pipeline.metrics_tickers, labeler.sentiment_labels, labeler.topic_labels
    )
    metrics.model_info.labels(
        version=labeler.model_version,
        device=str(getattr(labeler, "device", settings.model.device)),
        variant=str(getattr(labeler, "variant", "default")),
    ).set(1)
    es_errors = metrics.output_errors.labels(output="elasticsearch")
    es = setup_elasticsearch(settings, stop, on_error=es_errors.inc)
    if es is not None:
        es.on_error = es_errors.inc

    def new_producer() -> KafkaProducer:  # also a stuck producer's replacement
        return make_producer(settings.kafka, **FLUSH_DRIVEN)

    outputs = KafkaOutputs(
        new_producer(),
        labeled_topic=settings.pipeline.labeled_topic,
        dead_letter_topic=settings.pipeline.dead_letter_topic,
        new_producer=new_producer,
    )
    return PipelineRunner(
        settings,
        labeler=labeler,
        consumer=make_consumer(settings),
        outputs=outputs,
        es=es,
        metrics=metrics,
        stop=stop,
        on_batch=on_batch,
    )


LABELER_READY_WITHIN_S = 10.0
"""Between rebalances the labeler's loop polls at least every `pipeline.idle_backoff_max_ms` and never
waits on an output (writes run on their own threads; a commit waits at most
finsent.runner.COMMIT_TIMEOUT_MS)."""


def labeler_ready_within_s(settings: Settings) -> float:
    """The labeler's readiness window: LABELER_READY_WITHIN_S plus `pipeline.shutdown_timeout_s`, which a
    rebalance may spend inside `poll()` waiting for in-flight batches (the runner's `on_revoked`; while
    Elasticsearch is down they never finish), so that every labeler does not turn unready at each
    rebalance of an outage and block node drains."""
    return settings.pipeline.shutdown_timeout_s + LABELER_READY_WITHIN_S


ALERT_RESTART_MAX_S = 60.0
"""Longest wait before the in-process alert worker is started again after a failure."""


def alert_worker_thread(
    settings: Settings,
    stop: threading.Event,
    registry: CollectorRegistry,
    on_alert: Callable[[Any], None] | None = None,
    *,
    current: LoopHolder | None = None,
) -> threading.Thread | None:
    """A thread running the alert worker next to the pipeline when `alerts.enabled` (None otherwise); not
    started. A worker that fails is started again (see `supervise`): it resumes from its saved state, so
    `finsent run` never goes on labeling with alerting silently gone. `current` holds the worker running
    now, for the liveness probe: one that hangs without failing is never restarted by `supervise`."""
    if not settings.alerts.enabled:
        return None
    from finsent.alert_metrics import AlertMetrics
    from finsent.alert_worker import AlertWorker

    metrics = AlertMetrics(registry)  # one set of series across restarts
    holder = current if current is not None else LoopHolder()

    def once() -> None:
        worker = AlertWorker(settings, metrics=metrics, on_alert=on_alert)
        with holder.running(worker):
            worker.run(stop)

    return threading.Thread(target=supervise, args=(once, stop), name="finsent-alerts", daemon=True)


def supervise(
    run: Callable[[], None],
    stop: threading.Event,
    *,
    first_delay_s: float = 1.0,
    max_delay_s: float = ALERT_RESTART_MAX_S,
) -> None:
    """Call `run` until `stop` is set; after a failure, log it and call it again after a delay that doubles
    from `first_delay_s` up to `max_delay_s` (back to the first once a run lasted longer than that)."""
    failures = 0
    while not stop.is_set():
        started = time.monotonic()
        try:
            run()
            return  # it returns once stop is set
        except KafkaError as e:  # e.g. not authorized on the state topic: one line says it all
            log.error("the alert worker failed (%s: %s)", type(e).__name__, e)
        except Exception:
            log.exception("the alert worker failed")
        if time.monotonic() - started > max_delay_s:
            failures = 0
        delay = min(max_delay_s, first_delay_s * 2**failures)
        failures += 1
        log.warning("the pipeline goes on; restarting the alert worker in %.1f s", delay)
        if stop.wait(delay):
            return


class LabelerServer:
    """The labeler's /metrics, /healthz and /readyz on `metrics.host` / `metrics.port` (nothing when
    `metrics.enabled` is off), bound when made: `finsent run` makes it before it touches Kafka, so that a
    port already taken stops it (ListenError) before it creates topics or starts its alert worker. The
    probes read `runner`, set once the pipeline is built; `alert_loop` is the alert worker's loop when it
    runs in this process."""

    def __init__(
        self, settings: Settings, registry: CollectorRegistry, alert_loop: LoopRef | None = None
    ) -> None:
        self.registry = registry
        self.alert_loop = alert_loop
        self.runner: PipelineRunner | None = None
        self.server: HealthServer | None = None
        if settings.metrics.enabled:
            self.server = HealthServer(
                registry,
                loop_readiness(self.current, labeler_ready_within_s(settings)),
                settings.metrics.host,
                settings.metrics.port,
                liveness=labeler_liveness(settings, self.current, alert_loop),
            ).start()

    def current(self) -> PipelineRunner | None:
        """The pipeline's runner (a `LoopRef`), None until it is built."""
        return self.runner

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def model_problem(settings: Settings) -> str | None:
    """Why the configured model cannot serve, found without loading it (None when nothing is found): the
    model directory and its `finsent_config.json` (`inference.model_dir.read_model_config`, which also
    checks that the files it names exist), the ONNX file of the variant `model.device` runs, CUDA asked
    for on an onnxruntime without the CUDA provider, and labels the outputs do not expect. What `finsent
    run` checks before it touches Kafka, and `finsent check-config` reports; loading the model can still
    fail (no usable GPU behind the provider). The CPU variant is opened (without graph optimisation: a
    fraction of a second) to check its inputs and its heads' class counts against the labels, which
    `finsent check-config` passed and every `finsent run` of a rollout then refused."""
    from inference.model_dir import default_model_dir, read_model_config

    model = settings.model
    where = "model.dir (FINSENT_MODEL__DIR)"
    try:
        config = read_model_config(model.dir if model.dir is not None else default_model_dir())
        path = config.variant_path("cuda" if model.device == "cuda" else "cpu")
    except (OSError, ValueError) as e:  # missing, unreadable (a 0600 volume for another user), malformed
        return f"{where}: {e}"
    if model.device != "cuda":  # the fp16 CUDA variant does not open on the CPU provider
        problem = onnx_file_problem(config, path)
        if problem is not None:
            return f"{where}: {problem}"
    if model.device == "cuda":
        from inference.labeler import onnxruntime

        providers = onnxruntime().get_available_providers()
        if "CUDAExecutionProvider" not in providers:
            return (
                "model.device (FINSENT_MODEL__DEVICE) is cuda, but this onnxruntime has no "
                f"CUDAExecutionProvider (install onnxruntime-gpu, the `gpu` extra); available: {providers}"
            )
    return label_contract_problem(config.sentiment_labels, settings)


def onnx_file_problem(config: ModelConfig, path: Path) -> str | None:
    """Why the ONNX file at `path` cannot serve `config` (a corrupt file; inputs finsent does not feed;
    heads whose class counts differ from the labels), or None."""
    from inference.labeler import check_outputs, onnxruntime

    ort = onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own classes (InvalidProtobuf, Fail, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"{path}: onnxruntime cannot load it ({first})"
    try:
        check_outputs(session, config)
    except ValueError as e:
        return str(e)
    return None


def prepare_worker(settings: Settings) -> LabelerServer:
    """`finsent run` before it touches Kafka: the model checked (`model_problem`: ModelLoadError) and the
    metrics port bound (ListenError), so that neither is found after the output topics were created and
    the alert worker joined its group. The registry and the alert worker's loop holder are the server's."""
    problem = model_problem(settings)
    if problem is not None:
        raise ModelLoadError(problem)
    return LabelerServer(settings, worker_registry(), LoopHolder() if settings.alerts.enabled else None)


def run_worker(settings: Settings, stop: threading.Event, prepared: LabelerServer | None = None) -> None:
    """`finsent run`: the pipeline, plus the alert worker in a thread when alerting is enabled. `prepared`
    (else made here) is `prepare_worker`'s. The model is loaded first, so that one that fails to load
    (a corrupt file, no usable GPU) has created nothing and started nothing; the output topics are created
    next when missing (`ensure_output_topics`), before the alert worker subscribes to
    the labeled topic: its metadata request would create it with the broker's default partitions."""
    quiet_libraries()
    server = prepared if prepared is not None else prepare_worker(settings)
    try:
        labeler = load_model(settings)
        ensure_output_topics(settings)
        alert_loop = server.alert_loop
        alerts = (
            alert_worker_thread(settings, stop, server.registry, current=alert_loop)
            if isinstance(alert_loop, LoopHolder)
            else None
        )
        if alerts is not None:
            alerts.start()
        try:
            run_pipeline(settings, stop, labeler=labeler, server=server)
        finally:
            stop.set()
            if alerts is not None:
                alerts.join(timeout=60)
    finally:
        server.stop()


def labeler_liveness(settings: Settings, runner_ref: LoopRef, alert_loop: LoopRef | None) -> HealthCheck:
    """/healthz of `finsent run`: its consume loop, and the in-process alert worker's (`alert_loop`, when
    alerting runs in this process), each alive unless it has not polled for `kafka.max_poll_interval_ms`,
    the rule of `finsent alerts`' own probe: by then the group has dropped it anyway. A stuck alert worker
    raises nothing, so `supervise` never restarts it: restarting the pod is the only way back."""
    stalled_after_s = settings.kafka.max_poll_interval_ms / 1000
    labeler = loop_liveness(runner_ref, stalled_after_s)
    if alert_loop is None:
        return labeler
    return all_of(labeler, loop_liveness(alert_loop, stalled_after_s, name="alert_consume_loop"))


def run_pipeline(
    settings: Settings,
    stop: threading.Event,
    *,
    labeler: Labeler | None = None,
    registry: CollectorRegistry | None = None,
    on_batch: BatchCallback | None = None,
    alert_loop: LoopRef | None = None,
    server: LabelerServer | None = None,
) -> None:
    """Serve /metrics, /healthz, /readyz and run the pipeline until `stop` is set. `alert_loop`, the alert
    worker running next to it, counts in liveness only: readiness is about labeling, and gates rolling
    updates and the PodDisruptionBudget; an alert-worker problem (a shared one, say its state topic, hits
    every pod at once) would turn every labeler unready together and block node drains while they label
    on, and unready restarts nothing, so it would fix nothing either. With `server` (bound already, with
    its registry and alert loop: `run_worker`), that one serves, and its owner stops it."""
    own = server is None
    if server is None:
        server = LabelerServer(settings, registry or worker_registry(), alert_loop)
    try:
        model = labeler if labeler is not None else load_model(settings)
        server.runner = build_runner(
            settings, registry=server.registry, stop=stop, labeler=model, on_batch=on_batch
        )
        server.runner.run()
    finally:
        if own:
            server.stop()
