"""What an operator following the docs meets at start-up (a reviewer's report): a labeler started during
an Elasticsearch outage counts its failed index setups in finsent_output_errors_total; `finsent
check-config` finds what `finsent run` would refuse at start; `finsent run` binds its metrics port and
checks its model before it creates topics or starts its alert worker; the stop signal is logged at once;
"cannot connect to Kafka" names the setting."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from kafka import KafkaAdminClient
from kafka.errors import KafkaTimeoutError

from finsent.app import StoppedDuringStartup
from finsent.commands.pipeline import cannot_connect
from finsent.settings import Settings, settings_env
from inference.labeler import onnxruntime
from inference.types import Labeler
from tests.pipeline_helpers import alert_worker_settings, make_settings, real_labeler, topics, wait_for
from tests.servers import Noida, create_topic, free_port
from tests.test_cli_errors import run_main
from tests.test_pipeline_e2e import Worker

REPO_ROOT = Path(__file__).resolve().parent.parent

labeler_fixture = pytest.fixture(scope="module", name="labeler")(real_labeler)


pytestmark = pytest.mark.usefixtures("clean_finsent_env")


def metric(port: int, series: str) -> float | None:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    line = next((x for x in text.splitlines() if x.startswith(series + " ")), None)
    return None if line is None else float(line.rsplit(" ", 1)[1])


# ---- 1. Elasticsearch down when the labeler starts ---------------------------------------------------


def test_a_labeler_started_during_an_elasticsearch_outage_counts_its_failed_setups(
    noida: Noida, unique: str, labeler: Labeler
) -> None:
    """Nothing listens at the Elasticsearch address: the index setup retries, and each failed attempt is
    counted in finsent_output_errors_total{output="elasticsearch"} (what FinsentOutputErrors reads); it
    stayed 0, and no lag series exists since nothing is consumed, so no alert the runbook names fired."""
    t = topics(unique)
    for topic in (t.raw, t.labeled, t.dead):
        create_topic(noida.kafka, topic, 1)
    port = free_port()
    down = f"http://127.0.0.1:{free_port()}"
    worker = Worker(make_settings(noida.kafka, down, t, metrics_port=port), labeler)
    try:
        errors = 'finsent_output_errors_total{output="elasticsearch"}'
        wait_for(lambda: (metric(port, errors) or 0) >= 3, "failed index setups counted", 30)
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 503
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        assert metric(port, f'finsent_consumer_lag_messages{{partition="0",topic="{t.raw}"}}') is None
        worker.stop.set()
        worker.thread.join(timeout=60)
        assert isinstance(worker.error, StoppedDuringStartup), worker.error  # a stop, not a failure
    finally:
        worker.stop.set()


# ---- 2. check-config finds what `finsent run` refuses at start -----------------------------------------


def test_check_config_reports_what_run_would_refuse_one_line_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FINSENT_KAFKA__SSL_CAFILE", str(tmp_path / "kafka-ca.crt"))
    monkeypatch.setenv("FINSENT_ELASTICSEARCH__URL", "https://es:9200")
    monkeypatch.setenv("FINSENT_ELASTICSEARCH__CA_CERTS", str(tmp_path / "es-ca.crt"))
    monkeypatch.setenv("FINSENT_MODEL__DIR", "/nope/model")
    monkeypatch.setenv("FINSENT_KAFKA__BOOTSTRAP_SERVERS", "kafka:9092")
    started = time.monotonic()
    code, out, err = run_main(["check-config", "--format", "json"], capsys)
    assert time.monotonic() - started < 10, "no connection is attempted"
    assert code == 2
    assert json.loads(out)["model"]["dir"] == "/nope/model", "the settings are still printed"
    assert err.splitlines() == [
        f"finsent check-config: kafka.ssl_cafile (FINSENT_KAFKA__SSL_CAFILE): cannot read "
        f"{tmp_path}/kafka-ca.crt",
        f"finsent check-config: elasticsearch.ca_certs (FINSENT_ELASTICSEARCH__CA_CERTS): cannot read "
        f"{tmp_path}/es-ca.crt",
        "finsent check-config: model.dir (FINSENT_MODEL__DIR): /nope/model is not a finsent model directory: "
        "finsent_config.json is missing",
    ]


def test_check_config_finds_a_model_folder_without_its_onnx_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from inference.model_dir import default_model_dir

    for f in default_model_dir().iterdir():
        if not f.name.endswith(".onnx"):
            (tmp_path / f.name).symlink_to(f)
    monkeypatch.setenv("FINSENT_MODEL__DIR", str(tmp_path))
    monkeypatch.setenv("FINSENT_KAFKA__BOOTSTRAP_SERVERS", "kafka:9092")
    code, _, err = run_main(["check-config"], capsys)
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith(f"finsent check-config: model.dir (FINSENT_MODEL__DIR): {tmp_path}/model.")
    assert line.endswith(": named in finsent_config.json but missing")


def test_check_config_opens_the_onnx_file_as_run_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config listing 19 topics for a model of 20 passed check-config, and every `finsent run` of the
    rollout then refused it; a corrupt ONNX file passed too."""
    from inference.model_dir import default_model_dir

    source = default_model_dir()
    for f in source.iterdir():
        if f.name != "finsent_config.json":
            (tmp_path / f.name).symlink_to(f)
    config = json.loads((source / "finsent_config.json").read_text(encoding="utf-8"))
    config["topic_labels"] = config["topic_labels"][:-1]
    (tmp_path / "finsent_config.json").write_text(json.dumps(config), encoding="utf-8")
    monkeypatch.setenv("FINSENT_MODEL__DIR", str(tmp_path))
    monkeypatch.setenv("FINSENT_KAFKA__BOOTSTRAP_SERVERS", "kafka:9092")
    code, _, err = run_main(["check-config"], capsys)
    assert code == 2
    assert err.splitlines() == [
        f"finsent check-config: model.dir (FINSENT_MODEL__DIR): {tmp_path}: topic_logits has 20 classes "
        "but finsent_config.json lists 19 labels"
    ]
    config["topic_labels"] = json.loads((source / "finsent_config.json").read_text())["topic_labels"]
    (tmp_path / "finsent_config.json").write_text(json.dumps(config), encoding="utf-8")
    cpu_file = tmp_path / config["variants"]["cpu"]
    cpu_file.unlink()
    cpu_file.write_bytes(b"not an onnx file")
    code, _, err = run_main(["check-config"], capsys)
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith(
        f"finsent check-config: model.dir (FINSENT_MODEL__DIR): {cpu_file}: onnxruntime cannot load it ("
    )


@pytest.mark.skipif(
    "CUDAExecutionProvider" in onnxruntime().get_available_providers(), reason="this onnxruntime has CUDA"
)
def test_check_config_reports_cuda_asked_of_an_onnxruntime_without_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FINSENT_MODEL__DEVICE", "cuda")
    monkeypatch.setenv("FINSENT_KAFKA__BOOTSTRAP_SERVERS", "kafka:9092")
    code, _, err = run_main(["check-config"], capsys)
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith(
        "finsent check-config: model.device (FINSENT_MODEL__DEVICE) is cuda, but this onnxruntime has no "
        "CUDAExecutionProvider"
    )


def test_check_config_of_good_settings_exits_0(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINSENT_KAFKA__BOOTSTRAP_SERVERS", "kafka:9092")
    code, out, err = run_main(["check-config"], capsys)
    assert (code, err) == (0, "") and "kafka:" in out


def test_check_config_says_run_needs_a_kafka_address(capsys: pytest.CaptureFixture[str]) -> None:
    """The default settings (no broker: `finsent demo` starts its own) passed check-config, and `finsent
    run` refused them at once."""
    code, out, err = run_main(["check-config"], capsys)
    assert code == 2 and "kafka:" in out
    assert err.splitlines() == [
        "finsent check-config: kafka.bootstrap_servers is empty: set FINSENT_KAFKA__BOOTSTRAP_SERVERS (only "
        "`finsent demo`, which starts a local broker, runs without it)"
    ]


# ---- 3. no side effect before a fatal misconfiguration is found -------------------------------------------


def broker_topics(bootstrap: str) -> set[str]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


@pytest.mark.parametrize("problem", ["port-taken", "bad-model-dir"])
def test_run_refuses_a_taken_port_or_a_bad_model_before_touching_kafka(
    problem: str,
    noida: Noida,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before, `finsent run` created its output topics and started (and stopped) its alert worker, which
    joined its group and restored its state, and only then stopped on the port or the model."""
    settings = alert_worker_settings(noida.kafka, unique, es_url=None)
    t = topics(unique)
    env = {
        **settings_env(settings),
        "FINSENT_PIPELINE__INPUT_TOPICS": json.dumps([t.raw]),
        "FINSENT_PIPELINE__GROUP_ID": t.group,
        "FINSENT_PIPELINE__DEAD_LETTER_TOPIC": t.dead,
        "FINSENT_METRICS__ENABLED": "true",
        "FINSENT_METRICS__HOST": "127.0.0.1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    create_topic(noida.kafka, t.raw, 1)
    ours = {settings.pipeline.labeled_topic, t.dead, settings.alerts.state_topic}
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        if problem == "port-taken":
            monkeypatch.setenv("FINSENT_METRICS__PORT", str(port))
            expected = f"finsent run: cannot listen on 127.0.0.1:{port} (metrics.host / metrics.port): "
        else:
            monkeypatch.setenv("FINSENT_METRICS__PORT", str(free_port()))
            monkeypatch.setenv("FINSENT_MODEL__DIR", "/nope/model")
            expected = (
                "finsent run: model: model.dir (FINSENT_MODEL__DIR): /nope/model is not a finsent model"
            )
        started = time.monotonic()
        code, _, err = run_main(["run"], capsys)
    assert code == 2 and time.monotonic() - started < 10
    assert err.strip().splitlines()[-1].startswith(expected)
    assert "connecting to Kafka" not in err
    assert not ours & broker_topics(noida.kafka), "topics were created before the refusal"


# ---- 4. the stop signal is logged when it arrives ---------------------------------------------------------


def finsent_popen(args: list[str], env: dict[str, str], **kwargs: object) -> subprocess.Popen[str]:
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("FINSENT_")}
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "finsent", *args],
        env={"FINSENT_METRICS__ENABLED": "false", **base, **env},
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def read_until(proc: subprocess.Popen[str], text: str, seen: list[str], timeout_s: float = 90) -> None:
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout_s
    for line in proc.stderr:
        seen.append(line)
        if text in line:
            return
        assert time.monotonic() < deadline, "".join(seen)
    raise AssertionError(f"ended before {text!r}:\n{''.join(seen)}")


@pytest.mark.parametrize("command", ["run", "alerts", "sources"])
def test_the_stop_signal_is_logged_when_it_arrives(
    command: str, noida: Noida, unique: str, tmp_path: Path
) -> None:
    """Before, a stop that waited on an output (Elasticsearch down: up to pipeline.shutdown_timeout_s)
    logged nothing until the end; `finsent sources` also ended without a closing line."""
    settings = alert_worker_settings(noida.kafka, unique, es_url=None)
    env = settings_env(settings)
    args = [command]
    if command == "run":
        t = topics(unique)
        create_topic(noida.kafka, t.raw, 1)
        env.update(
            {
                "FINSENT_PIPELINE__INPUT_TOPICS": json.dumps([t.raw]),
                "FINSENT_PIPELINE__GROUP_ID": t.group,
                "FINSENT_PIPELINE__DEAD_LETTER_TOPIC": t.dead,
                "FINSENT_ALERTS__ENABLED": "false",
            }
        )
        ready, stopping, last = (
            "consuming",
            "stopping: finishing the batch in flight, waiting up to 5 s for the outputs",
            "pipeline stopped",
        )
    elif command == "alerts":
        create_topic(noida.kafka, settings.pipeline.labeled_topic, 1)
        ready, stopping, last = (
            "no saved alert state",
            "stopping: finishing the step in flight, then saving the alert state (waiting up to 15 s",
            "alert worker stopped",
        )
    else:
        sources = tmp_path / "sources.yaml"
        sources.write_text(f"sources:\n  - {{name: wire, kind: stdin, topic: raw-{unique}}}\n")
        env["FINSENT_SOURCES__STATE_DIR"] = str(tmp_path / "state")
        args += ["--config", str(sources)]
        ready, stopping, last = (
            "publishing 1 source(s)",
            "stopping: letting the fetches under way finish, waiting up to 30 s",
            "sources stopped",
        )
    proc = finsent_popen(args, env, stdin=subprocess.PIPE)
    try:
        seen: list[str] = []
        read_until(proc, ready, seen)
        proc.send_signal(signal.SIGINT if command == "sources" else signal.SIGTERM)
        read_until(proc, stopping, seen, 10)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    stderr = "".join(seen) + err
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert last in stderr.strip().splitlines()[-1], stderr


# ---- 5. the Kafka address's setting ---------------------------------------------------------------------


def test_cannot_connect_names_the_setting_and_a_name_that_does_not_resolve() -> None:
    error = KafkaTimeoutError("Failed to update metadata after 30.0 secs.")
    line = cannot_connect(Settings(kafka={"bootstrap_servers": "127.0.0.1:1"}), "run", error)
    assert line == (
        "finsent run: cannot connect to Kafka at 127.0.0.1:1: KafkaTimeoutError: Failed to update metadata "
        "after 30.0 secs. (kafka.bootstrap_servers / FINSENT_KAFKA__BOOTSTRAP_SERVERS)"
    )
    servers = "127.0.0.1:1,kafka-0.nope.invalid:9092"
    line = cannot_connect(Settings(kafka={"bootstrap_servers": servers}), "sources", error)
    assert line.endswith(
        "(kafka.bootstrap_servers / FINSENT_KAFKA__BOOTSTRAP_SERVERS; host name kafka-0.nope.invalid did "
        "not resolve)"
    )
