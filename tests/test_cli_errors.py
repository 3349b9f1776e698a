"""The `finsent` command's answers to common mistakes: one clear line and a meaningful exit code, never a
traceback (a bad settings file or variable, an unreachable broker, a wrong input file, a missing extra)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from kafka import KafkaProducer
from kafka.errors import KafkaTimeoutError

from finsent.cli import EXIT_BROKEN_PIPE, main
from finsent.demo import free_port
from finsent.settings import SettingsError, load_settings
from inference.model_dir import default_model_dir
from tests import servers
from tests.pipeline_helpers import read_topic
from tests.process_helpers import finsent_popen, wait_for_line

REPO_ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("clean_finsent_env")


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def finsent_process(
    args: list[str], env: dict[str, str], stdout: int = subprocess.PIPE
) -> subprocess.CompletedProcess[str]:
    """`python -m finsent ARGS` with only `env` as its FINSENT_* settings."""
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("FINSENT_")}
    return subprocess.run(
        [sys.executable, "-m", "finsent", *args],
        env={**base, **env},
        cwd=REPO_ROOT,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )


# ---- 1. settings that cannot be read -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("yaml_text", "env", "expected"),
    [
        (None, {}, "settings file {cfg} (--config or FINSENT_CONFIG) does not exist"),
        ("kafka:\n  bootstrap_servers: [unclosed\n", {}, "{cfg} is not valid YAML: line 3, column 1"),
        ("- a\n- b\n", {}, "{cfg}: the settings file must hold a mapping at the top level"),
        (
            "kafka:\n  bootstrap_server: x:9092\n",
            {},
            "kafka.bootstrap_server (FINSENT_KAFKA__BOOTSTRAP_SERVER): not a known setting "
            "(did you mean kafka.bootstrap_servers?)",
        ),
        (
            "",
            {"FINSENT_PIPELINE__BATCH_MAX_MESSAGES": "abc"},
            "pipeline.batch_max_messages (FINSENT_PIPELINE__BATCH_MAX_MESSAGES): Input should be a valid "
            "integer",
        ),
        (
            "",
            {"FINSENT_KAFKA__BOOTSTRAP_SERVER": "x"},
            "kafka.bootstrap_server (FINSENT_KAFKA__BOOTSTRAP_SERVER): not a known setting",
        ),
        (
            "",
            {"FINSENT_PIPELINE__INPUT_TOPICS": "not-json"},
            "FINSENT_PIPELINE__INPUT_TOPICS: lists and maps are given as JSON",
        ),
        (  # kafka-python refused these only once a worker connected, after the model had loaded
            "",
            {"FINSENT_KAFKA__HEARTBEAT_INTERVAL_MS": "20000"},
            "kafka: heartbeat_interval_ms (20000) must be below session_timeout_ms (10000)",
        ),
        (
            "",
            {"FINSENT_KAFKA__REQUEST_TIMEOUT_MS": "600000"},
            "kafka.request_timeout_ms (FINSENT_KAFKA__REQUEST_TIMEOUT_MS): Input should be less than 540000",
        ),
        (  # pydantic-settings named only the section ("alerts"), not the variable
            "",
            {"FINSENT_ALERTS__NOTIFIERS__EMAIL__RECIPIENTS": "a@example.com"},
            "FINSENT_ALERTS__NOTIFIERS__EMAIL__RECIPIENTS: lists and maps are given as JSON",
        ),
    ],
    ids=[
        "missing-file",
        "yaml-syntax",
        "yaml-list",
        "yaml-unknown-field",
        "env-not-int",
        "env-typo",
        "env-json",
        "env-heartbeat",
        "env-request-timeout",
        "env-json-deep",
    ],
)
def test_unreadable_settings_exit_2_with_one_line(
    yaml_text: str | None,
    env: dict[str, str],
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = tmp_path / "finsent.yaml"
    if yaml_text is not None:
        cfg.write_text(yaml_text)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = run_main(["check-config", "--config", str(cfg)], capsys)
    assert code == 2 and out == ""
    (line,) = [x for x in err.splitlines() if "WARNING" not in x]
    assert line.startswith("finsent: settings: ") and expected.format(cfg=cfg) in line


def test_every_settings_command_reports_settings_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "nope.yaml")
    for argv in (["run"], ["alerts"], ["produce", str(tmp_path / "x.jsonl")], ["demo"]):
        code, _, err = run_main([*argv, "--config", missing], capsys)
        assert code == 2 and f"finsent: settings: settings file {missing}" in err, argv
    code, _, err = run_main(["sources", "--settings", missing], capsys)
    assert code == 2 and "finsent: settings:" in err


def test_alerts_needs_the_channel_secrets_a_labeler_may_lack(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With alerts.enabled off (a labeler's settings) a channel's missing secret lets the settings load,
    `check-config` says who will refuse them, and `finsent alerts`, which always sends, stops with one line
    before connecting."""
    monkeypatch.setenv("FINSENT_ALERTS__ENABLED", "false")
    monkeypatch.setenv("FINSENT_ALERTS__NOTIFIERS__SLACK__ENABLED", "true")
    monkeypatch.setenv("FINSENT_KAFKA__BOOTSTRAP_SERVERS", "kafka:9092")
    code, out, err = run_main(["check-config"], capsys)
    assert code == 0 and "slack:" in out
    assert (
        "alerts.notifiers.slack.webhook_url (FINSENT_ALERTS__NOTIFIERS__SLACK__WEBHOOK_URL) not set: "
        "`finsent alerts` will not start"
    ) in err
    code, out, err = run_main(["alerts"], capsys)
    assert (code, out) == (2, "")
    assert err.strip() == (
        "finsent: settings: alerts.notifiers.slack.webhook_url "
        "(FINSENT_ALERTS__NOTIFIERS__SLACK__WEBHOOK_URL): needed when the channel is enabled"
    )


def test_load_settings_raises_a_value_error_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINSENT_PIPELINE__PSEUDONYMIZE_AUTHORS", "true")
    with pytest.raises(SettingsError, match=r"^invalid settings \(from the environment\): pipeline: "):
        load_settings()
    assert issubclass(SettingsError, ValueError)  # callers catching ValueError keep working


# ---- 2. FINSENT_* variables that no setting reads -------------------------------------------------------


def test_misspelled_section_variables_are_warned_about(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FINSENT_ELASTICSERCH__URL", "http://es:9200")
    monkeypatch.setenv("FINSENT_PIPELINE_BATCH_MAX_MESSAGES", "5")
    monkeypatch.setenv("FINSENT_TEST_BROKERS", "127.0.0.1:9092")  # the tests' own: not a setting, no warning
    monkeypatch.setenv("FINSENT_KAFKA__CLIENT_ID", "known")
    monkeypatch.setenv("FINSENT_KAFKA__BOOTSTRAP_SERVERS", "kafka:9092")
    with caplog.at_level(logging.WARNING, logger="finsent.settings"):
        code, out, _ = run_main(["check-config", "--format", "json"], capsys)
    assert code == 0 and json.loads(out)["kafka"]["client_id"] == "known"
    warnings = sorted(r.getMessage() for r in caplog.records if r.name == "finsent.settings")
    assert warnings == [
        "environment variable FINSENT_ELASTICSERCH__URL is not a finsent setting and is ignored "
        "(did you mean FINSENT_ELASTICSEARCH__URL?)",
        "environment variable FINSENT_PIPELINE_BATCH_MAX_MESSAGES is not a finsent setting and is ignored "
        "(did you mean FINSENT_PIPELINE__BATCH_MAX_MESSAGES?)",
    ]


# ---- 3. an unreachable broker ---------------------------------------------------------------------------


def stdin_sources_file(folder: Path) -> Path:
    path = folder / "sources.yaml"
    path.write_text("sources:\n  - {name: wire, kind: stdin}\n")
    return path


@pytest.fixture(scope="module")
def unreachable_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, float]]:
    """`run`, `alerts`, `produce`, `sources` and `demo` against a port nobody listens on, at once (each
    waits out kafka-python's 30 s bootstrap): name -> (stderr, seconds), after asserting exit code 1."""
    data = tmp_path_factory.mktemp("unreachable") / "s.jsonl"
    data.write_text('{"source": "s", "text": "x"}\n')
    bootstrap = f"127.0.0.1:{free_port()}"
    env = {
        "FINSENT_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "FINSENT_METRICS__ENABLED": "false",
        "FINSENT_ALERTS__ENABLED": "true",  # `run` starts the alert worker thread too
        "FINSENT_ELASTICSEARCH__ENABLED": "false",
    }

    def one(args: list[str]) -> tuple[str, float]:
        started = time.monotonic()
        proc = finsent_process(args, env)
        assert proc.returncode == 1, (args, proc.stderr)
        return proc.stderr.replace(bootstrap, "BOOTSTRAP"), time.monotonic() - started

    commands = {
        "run": ["run"],
        "alerts": ["alerts"],
        "produce": ["produce", str(data)],
        "sources": ["sources", "--config", str(stdin_sources_file(data.parent))],
        "demo": ["demo", "--duration", "5"],
    }
    with ThreadPoolExecutor(len(commands)) as pool:
        futures = {name: pool.submit(one, args) for name, args in commands.items()}
        return {name: f.result() for name, f in futures.items()}


@pytest.mark.parametrize("command", ["run", "alerts", "produce", "sources", "demo"])
def test_unreachable_broker_is_one_line_exit_1(
    command: str, unreachable_runs: dict[str, tuple[str, float]]
) -> None:
    stderr, _ = unreachable_runs[command]
    assert "Traceback" not in stderr
    assert "alert worker failed" not in stderr  # `run`: its thread never started
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"finsent {command}: cannot connect to Kafka at BOOTSTRAP: KafkaTimeoutError")
    assert len(stderr.strip().splitlines()) <= 3  # at most the INFO "connecting to" line besides it


@pytest.mark.parametrize("command", ["run", "alerts"])
def test_a_metrics_port_already_taken_is_one_line_exit_2(command: str, noida: servers.Noida) -> None:
    """`run` and `alerts` both default to port 9108: two of them on one host met this on day one, as a
    traceback."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        env = {
            "FINSENT_KAFKA__BOOTSTRAP_SERVERS": noida.kafka,
            "FINSENT_METRICS__PORT": str(port),
            "FINSENT_ELASTICSEARCH__ENABLED": "false",
        }
        done = finsent_process([command], env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith(f"finsent {command}: cannot listen on 127.0.0.1:{port} (metrics.host / metrics.port): ")
    )


@pytest.mark.parametrize("command", ["run", "alerts", "produce", "sources", "demo"])
def test_a_missing_tls_file_is_named_before_connecting(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """kafka-python said only "cannot connect", after 30 s, for a CA file that is not there. A setting to
    fix: exit 2, as every other refused setting (it was 1, as for a broker that does not answer)."""
    monkeypatch.setenv("FINSENT_KAFKA__BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("FINSENT_KAFKA__SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("FINSENT_KAFKA__SSL_CAFILE", str(tmp_path / "kafka-ca.crt"))
    data = tmp_path / "s.jsonl"
    data.write_text('{"source": "s", "text": "x"}\n')
    args = {"produce": [str(data)], "sources": ["--config", str(stdin_sources_file(tmp_path))]}
    started = time.monotonic()
    code, _, err = run_main([command, *args.get(command, [])], capsys)
    assert code == 2 and time.monotonic() - started < 10
    missing = tmp_path / "kafka-ca.crt"
    assert err.strip().splitlines()[-1] == (
        f"finsent {command}: kafka.ssl_cafile (FINSENT_KAFKA__SSL_CAFILE): cannot read {missing}"
    )


def test_label_uses_the_model_settings_and_names_a_bad_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`finsent label` in a worker's pod labeled with the shipped model on the CPU whatever the worker's
    FINSENT_MODEL__* said; a bad flag printed pydantic's multi-line error with a web link."""
    monkeypatch.setenv("FINSENT_MODEL__DIR", str(tmp_path / "nope"))
    code, _, err = run_main(["label", "hi"], capsys)
    assert code == 2 and f"{tmp_path / 'nope'} is not a finsent model directory" in err
    monkeypatch.delenv("FINSENT_MODEL__DIR")
    code, _, err = run_main(["label", "--threads", "0", "hi"], capsys)
    assert code == 2
    assert (
        err.strip().splitlines()[-1] == "finsent label: --threads: Input should be greater than or equal to 1"
    )


def test_config_reference_to_a_path_it_cannot_use_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_main(["config-reference", "--output", str(tmp_path / "no" / "x.md")], capsys)
    assert code == 2 and err.startswith("finsent config-reference: [Errno 2] No such file or directory")
    code, _, err = run_main(["config-reference", "--check", str(tmp_path)], capsys)
    assert code == 2 and "Is a directory" in err


# ---- 4. finsent produce: the input is checked before connecting -----------------------------------------


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: d / "missing.jsonl", "missing.jsonl: no such file"),
        (lambda d: d, "not a file (a JSONL or CSV file is expected)"),
        (
            lambda d: (d / "t.csv", (d / "t.csv").write_text("title,label\nx,1\n"))[0],
            "a CSV file needs a `text` column (columns: title, label)",
        ),
        (
            lambda d: (d / "l.csv", (d / "l.csv").write_bytes(b"text\n\xff\xfe\n"))[0],
            "not UTF-8 text",
        ),
    ],
    ids=["missing", "directory", "no-text-column", "not-utf8"],
)
def test_produce_rejects_a_bad_file_before_connecting(
    make: object,
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FINSENT_KAFKA__BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")  # would wait 30 s
    path = make(tmp_path)  # type: ignore[operator]
    started = time.monotonic()
    code, out, err = run_main(["produce", str(path)], capsys)
    assert code == 2 and out == ""
    assert err.startswith("finsent produce: ") and expected in err
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("command", "flag", "value"),
    [
        ("produce", "--rate", "-1"),
        ("produce", "--rate", "nan"),
        ("produce", "--limit", "-3"),
        ("demo", "--rate", "-5"),
        ("demo", "--rate", "nan"),
        ("demo", "--duration", "-3"),
    ],
)
def test_negative_or_nan_rates_limits_and_durations_are_usage_errors(
    command: str, flag: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["produce", str(tmp_path / "s.jsonl")] if command == "produce" else [command]
    with pytest.raises(SystemExit) as exc:
        main([*argv, flag, value])
    assert exc.value.code == 2
    assert f"argument {flag}: must be 0 or more, not {value}" in capsys.readouterr().err


def test_produce_to_a_topic_name_kafka_refuses_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """kafka-python's send() raised a ValueError for it, past produce's error handling: a traceback."""
    with pytest.raises(SystemExit) as exc:
        main(["produce", str(tmp_path / "s.jsonl"), "--topic", "news feed"])
    assert exc.value.code == 2
    assert "argument --topic: not a Kafka topic name: 'news feed' has characters" in capsys.readouterr().err


def test_produce_to_a_topic_the_broker_does_not_have_stops_at_once(
    noida: servers.Noida, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a broker that creates no topics on use, every send() to a missing topic waited 60 s for its
    metadata and failed alone: a typo in --topic took a minute per record. Both local brokers create
    topics on use, so the metadata wait's timeout is stood in for here (with its real exception)."""

    def no_such_topic(self: KafkaProducer, topic: str) -> set[int]:
        raise KafkaTimeoutError(f"Failed to update metadata after 60.0 secs (topic {topic})")

    monkeypatch.setattr(KafkaProducer, "partitions_for", no_such_topic)
    monkeypatch.setenv("FINSENT_KAFKA__BOOTSTRAP_SERVERS", noida.kafka)
    f = tmp_path / "s.jsonl"
    f.write_text(json.dumps({"source": "s", "text": "t"}) + "\n")
    code, out, err = run_main(["produce", str(f), "--topic", "news-typo"], capsys)
    assert code == 1 and out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"finsent produce: topic news-typo not found at {noida.kafka} (a broker that ")


def test_produce_does_not_need_the_elasticsearch_files_it_never_uses(
    noida: servers.Noida,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The TLS check before connecting named elasticsearch.ca_certs too: with the Kubernetes ConfigMap's
    settings, produce refused to start on a host without Elasticsearch's CA file."""
    topic = f"no-es-{unique}"
    servers.create_topic(noida.kafka, topic)
    monkeypatch.setenv("FINSENT_KAFKA__BOOTSTRAP_SERVERS", noida.kafka)
    monkeypatch.setenv("FINSENT_ELASTICSEARCH__URL", "https://es.example:9200")
    monkeypatch.setenv("FINSENT_ELASTICSEARCH__CA_CERTS", str(tmp_path / "es-ca.crt"))
    f = tmp_path / "s.jsonl"
    f.write_text(json.dumps({"source": "s", "text": "t"}) + "\n")
    code, out, _ = run_main(["produce", str(f), "--topic", topic], capsys)
    assert code == 0 and out == f"sent 1 records to {topic}\n"


def test_produce_reports_progress_on_a_long_replay(
    noida: servers.Noida,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = f"progress-{unique}"
    servers.create_topic(noida.kafka, topic)
    f = tmp_path / "s.jsonl"
    # with ids: re-runnable, so the only stderr line is the progress (no warning of undated records)
    f.write_text(
        "".join(json.dumps({"id": f"p{i}", "source": "s", "text": f"t{i}"}) + "\n" for i in range(14))
    )
    monkeypatch.setenv("FINSENT_KAFKA__BOOTSTRAP_SERVERS", noida.kafka)
    code, out, err = run_main(["produce", str(f), "--topic", topic, "--rate", "2", "--limit", "12"], capsys)
    assert code == 0 and out == f"sent 12 records to {topic}\n"
    progress = [x for x in err.splitlines() if x.startswith("finsent produce: ")]
    assert len(progress) == 1, err
    # streamed, so no record total: the share of the file read stands in for it
    line = re.fullmatch(
        rf"finsent produce: (\d+) records sent to {topic} \(2/s\), (\d+)% of the file read", progress[0]
    )
    assert line is not None, progress
    assert 9 <= int(line[1]) <= 11 and 50 <= int(line[2]) < 100
    assert len(read_topic(noida.kafka, topic, expected=12, settle_s=0.3)) == 12


# ---- 5. finsent backtest ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "sets", "expected"),
    [
        (None, ["window_s=60", "window_s.x=1"], "--set window_s.x=...: window_s is a value, not a section"),
        (None, ["window_s"], "--set 'window_s': expected NAME=VALUE"),
        (None, ["window_s=[1"], "--set window_s=...: the value is not valid YAML"),
        (None, ["notifiers.webhook.url=[s3cr3t"], "--set notifiers.webhook.url=...: the value is not valid"),
        (None, ["min_effect=2"], "alerts.min_effect (FINSENT_ALERTS__MIN_EFFECT): "),
        ("missing", [], "nope.yaml: no such settings file"),
        ("alerts: [unclosed\n", [], "is not valid YAML: line 2, column 1"),
        ("- a\n", [], "expected a mapping with an `alerts:` section"),
    ],
    ids=[
        "set-under-a-value",
        "set-no-equals",
        "set-bad-yaml",
        "set-bad-yaml-of-a-secret",
        "set-out-of-range",
        "no-file",
        "bad-yaml",
        "list",
    ],
)
def test_backtest_bad_settings_exit_2(
    config: str | None,
    sets: list[str],
    expected: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stream = tmp_path / "s.jsonl"
    stream.write_text("{}\n")
    argv = ["backtest", str(stream)]
    if config == "missing":
        argv += ["--config", str(tmp_path / "nope.yaml")]
    elif config is not None:
        (tmp_path / "c.yaml").write_text(config)
        argv += ["--config", str(tmp_path / "c.yaml")]
    for item in sets:
        argv += ["--set", item]
    code, out, err = run_main(argv, capsys)
    assert code == 2 and out == ""
    assert err.startswith("finsent backtest: bad settings: ") and expected in err
    assert "s3cr3t" not in err  # a --set value may be a webhook URL: never quoted


def test_backtest_of_only_unusable_lines_counts_them_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = tmp_path / "s.jsonl"
    stream.write_text('garbage\n{"a": 1}\n')  # raw path: both are dead-lettered by the decoder
    code, out, err = run_main(["backtest", str(stream)], capsys)
    assert code == 2
    assert "line 1: skipped (invalid_json" in err and "line 2: skipped (schema" in err
    assert "events: none; invalid 2" in out
    assert "finsent backtest: " + str(stream) + ": no usable event in 2 line(s) (2 invalid)" in err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert run_main(["backtest", str(empty)], capsys)[0] == 2


# ---- 6. optional extras that are not installed ------------------------------------------------------------


def test_a_corrupt_model_file_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ONNX Runtime's load errors derive from Exception only, past every command's error handling: a
    truncated download printed a traceback."""
    model = tmp_path / "model"
    shutil.copytree(default_model_dir(), model)
    (model / "model.int8.onnx").write_bytes(b"garbage")
    code, out, err = run_main(["label", "--model", str(model), "stocks fall"], capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"finsent label: {model / 'model.int8.onnx'}: cannot load the ONNX model (")
    assert len(err.strip().splitlines()) == 1


def test_evaluate_plot_without_matplotlib_fails_before_evaluating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the `plots` extra were not installed
    data = tmp_path / "d.csv"
    data.write_text("text,label\ngood,positive\n")
    argv = ["evaluate", "--task", "sentiment", "--data", str(data), "--model", str(tmp_path / "no-model")]
    code, out, err = run_main([*argv, "--plot", str(tmp_path / "p.png")], capsys)
    assert code == 2 and out == ""
    assert err == "finsent evaluate: needs the plots extra: pip install 'finsent[plots]' (for --plot)\n"


def test_backtest_plots_without_matplotlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    stream = tmp_path / "s.jsonl"
    stream.write_text("{}\n")
    code, out, err = run_main(["backtest", str(stream), "--plots", str(tmp_path / "plots")], capsys)
    assert code == 2 and out == ""
    assert err == "finsent backtest: needs the plots extra: pip install 'finsent[plots]' (for --plots)\n"


def test_plot_paths_that_cannot_be_written_fail_before_the_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found only when the charts were written, after a whole backtest or evaluation: a traceback."""
    stream = tmp_path / "s.jsonl"
    stream.write_text("{}\n")
    code, out, err = run_main(["backtest", str(stream), "--plots", str(stream)], capsys)
    assert code == 2 and out == ""
    assert err == f"finsent backtest: --plots {stream}: {stream} exists and is not a folder\n"
    code, out, err = run_main(["backtest", str(tmp_path)], capsys)
    assert code == 2 and err == f"finsent backtest: {tmp_path}: not a file\n"
    data = tmp_path / "d.csv"
    data.write_text("text,label\ngood,positive\n")
    evaluate = ["evaluate", "--task", "sentiment", "--data", str(data), "--plot"]
    code, out, err = run_main([*evaluate, str(tmp_path / "no" / "cm.png")], capsys)
    assert (
        code == 2
        and err
        == f"finsent evaluate: --plot {tmp_path / 'no' / 'cm.png'}: there is no folder {tmp_path / 'no'}\n"
    )
    code, out, err = run_main([*evaluate, str(tmp_path)], capsys)
    assert code == 2 and err == f"finsent evaluate: --plot {tmp_path}: is a folder, not a file\n"


def test_demo_without_noida_db(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "noida_db", None)  # as if the `demo` extra were not installed
    code, out, err = run_main(["demo"], capsys)
    assert code == 2 and "noida-db" not in out
    assert err.startswith("finsent demo: needs the demo extra: pip install 'finsent[demo]'")


# ---- 7. train and export inputs, checked before torch is imported ----------------------------------------


def test_train_and_export_check_inputs_before_importing_torch(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    good = tmp_path / "good.csv"
    good.write_text("text,label\nx,0\n")
    nolabel = tmp_path / "nolabel.csv"
    nolabel.write_text("text\nx\n")
    cases = [
        (["train", "--sentiment-data", str(tmp_path / "s.csv"), "--topic-data", str(good)], "no such file"),
        (["train", "--sentiment-data", str(good), "--topic-data", str(nolabel)], "has no `label` column"),
        (["export", "--checkpoint", str(tmp_path / "ckpt")], "missing train_meta.json, heads.pt, encoder"),
        (["export", "--checkpoint", str(tmp_path / "none")], "(no such directory)"),
        (
            [
                "train",
                "--sentiment-data",
                str(good),
                "--topic-data",
                str(good),
                "--sentiment-label-map",
                "0=",
            ],
            "--sentiment-label-map: bad label map entry '0='",
        ),
    ]
    script = (
        "import json, sys\nfrom finsent.cli import main\n"
        "code = main(json.loads(sys.argv[1]))\nprint(json.dumps([code, 'torch' in sys.modules]))\n"
    )
    for argv, expected in cases:
        proc = subprocess.run(
            [sys.executable, "-c", script, json.dumps(argv)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert json.loads(proc.stdout) == [2, False], (argv, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert proc.stderr.startswith(f"finsent {argv[0]}: ") and expected in proc.stderr, proc.stderr


@pytest.mark.parametrize("module", ["torch", "transformers", "onnx"])
def test_train_and_export_without_the_train_extra_say_how_to_install_it(
    module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """torch and the others are imported deep inside training and export: after the README's plain set-up
    (no `train` extra) both ended in a ModuleNotFoundError traceback."""
    monkeypatch.setitem(sys.modules, module, None)  # as if the `train` extra were not installed
    good = tmp_path / "good.csv"
    good.write_text("text,label\nx,0\n")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for name in ("train_meta.json", "heads.pt", "encoder"):
        (ckpt / name).touch()
    for argv in (
        ["train", "--sentiment-data", str(good), "--topic-data", str(good)],
        ["export", "--checkpoint", str(ckpt)],
    ):
        code, out, err = run_main(argv, capsys)
        assert code == 2 and out == ""
        install = "pip install 'finsent[train]'"
        assert err == f"finsent {argv[0]}: needs the train extra: {install} ({module} is not installed)\n"


def test_train_and_export_name_bad_step_or_comparison_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        (
            ["train", "--preprocessing", "url_placeholder,lowercase"],
            "unknown preprocessing step(s) ['lowercase']",
        ),
        (["export", "--compare", "runs/x"], "expected NAME=CHECKPOINT, not 'runs/x'"),
        # a traceback (ZeroDivisionError, ValueError) after torch was loaded, or a run that trained nothing
        (["train", "--batch-size", "0"], "argument --batch-size: must be more than 0, not 0"),
        (["train", "--dev-fraction", "1.5"], "argument --dev-fraction: must be between 0 and 1, not 1.5"),
        (["train", "--epochs", "-1"], "argument --epochs: must be more than 0, not -1"),
        (["train", "--lr", "nan"], "argument --lr: must be more than 0, not nan"),
        (["evaluate", "--task", "topic", "--data", "d.csv", "--limit", "0"], "--limit: must be 1 or more"),
        (
            ["export", "--compare", f"ablation={tmp_path}"],
            "not a `finsent train` checkpoint (no train_meta.json)",
        ),
    ]
    for argv, expected in cases:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert expected in capsys.readouterr().err


# ---- 8. finsent evaluate on a file without labeled rows ---------------------------------------------------


def test_evaluate_without_labeled_rows_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    header_only = tmp_path / "h.csv"
    header_only.write_text("text,label\n")
    code, out, err = run_main(["evaluate", "--task", "sentiment", "--data", str(header_only)], capsys)
    assert code == 2 and out == ""
    assert err == f"finsent evaluate: {header_only}: no labeled rows (0 with an empty text or label)\n"
    blanks = tmp_path / "b.csv"
    blanks.write_text("text,label\n,positive\nx,\n")
    code, _, err = run_main(["evaluate", "--task", "topic", "--data", str(blanks)], capsys)
    assert code == 2 and "no labeled rows (2 with an empty text or label)" in err


# ---- 9. --log-level, a closed pipe, blank lines to `finsent label` ---------------------------------------


def test_log_level_is_checked(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINSENT_KAFKA__BOOTSTRAP_SERVERS", "kafka:9092")
    with pytest.raises(SystemExit) as exc:
        main(["--log-level", "verbose", "check-config"])
    assert exc.value.code == 2
    assert "argument --log-level: invalid choice: 'VERBOSE'" in capsys.readouterr().err
    assert main(["--log-level", "warning", "check-config"]) == 0  # any case


def test_output_into_a_closed_pipe_ends_quietly() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head` that has already exited: every write fails with EPIPE
    try:
        proc = finsent_process(["config-reference"], {}, stdout=write_end)
    finally:
        os.close(write_end)
    assert proc.returncode == EXIT_BROKEN_PIPE == 141
    assert proc.stderr == ""


def test_label_marks_blank_lines_and_keeps_one_line_per_input(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("Shares of ACME plunge\n\n   \nACME beats estimates\n"))
    code, out, _ = run_main(["label"], capsys)
    assert code == 0
    records = [json.loads(x) for x in out.splitlines()]
    assert [r["text"] for r in records] == ["Shares of ACME plunge", "", "   ", "ACME beats estimates"]
    assert records[1] == {"text": "", "skipped": "blank"} and records[2] == {
        "text": "   ",
        "skipped": "blank",
    }
    assert "sentiment" in records[0] and "sentiment" in records[3]
    code, out, _ = run_main(["label", "", "ACME"], capsys)
    assert code == 0 and [json.loads(x).get("skipped") for x in out.splitlines()] == ["blank", None]


def test_ctrl_c_while_connecting_ends_quietly() -> None:
    proc = finsent_popen(["run"], {"FINSENT_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"})
    try:
        assert proc.stderr is not None
        seen: list[str] = []
        # past the imports (a SIGINT there is a traceback): inside the 30 s bootstrap wait
        wait_for_line(proc.stderr, "connecting to Kafka at", seen)
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    err = "".join(seen) + rest
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "finsent run: interrupted"


STOP_SIGNAL_STORM = """
import os, signal, sys, threading, time
from finsent.commands.pipeline import install_stop_signals
stop = threading.Event()
install_stop_signals(stop)
def fire():
    for _ in range(20_000):
        os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=fire, daemon=True).start()
started = time.monotonic()
while time.monotonic() - started < 3:  # the main thread waits on the event, as the run loops do
    stop.wait(0.001)
print("stopped" if stop.is_set() else "not stopped")
"""


def test_a_storm_of_stop_signals_never_deadlocks_the_handler() -> None:
    """`timeout` sends SIGTERM to the child and again to its group: a second handler run inside the
    first one's Event.set() waited on that Event's own lock, and the process hung until SIGKILL."""
    done = subprocess.run(
        [sys.executable, "-c", STOP_SIGNAL_STORM], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "stopped", done.stderr


def test_a_model_whose_labels_the_outputs_do_not_expect_is_refused_before_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """bearish / bullish would be served, unindexed by the mapping, and never counted as negative."""
    from finsent.app import label_contract_problem
    from finsent.settings import Settings

    with_es = Settings(elasticsearch={"url": "http://es:9200"})
    assert label_contract_problem(("negative", "neutral", "positive"), with_es) is None
    assert "Elasticsearch mapping" in str(label_contract_problem(("bearish", "neutral", "bullish"), with_es))
    no_es = Settings(elasticsearch={"enabled": False}, alerts={"negative_label": "bearish"})
    assert label_contract_problem(("bearish", "neutral", "bullish"), no_es) is None
    assert "negative_label" in str(label_contract_problem(("bearish", "neutral", "bullish"), Settings()))

    source = default_model_dir()
    for f in source.iterdir():
        (tmp_path / f.name).symlink_to(f)
    config = json.loads((source / "finsent_config.json").read_text(encoding="utf-8"))
    config["sentiment_labels"] = ["bearish", "neutral", "bullish"]
    (tmp_path / "finsent_config.json").unlink()
    (tmp_path / "finsent_config.json").write_text(json.dumps(config), encoding="utf-8")
    monkeypatch.setenv("FINSENT_MODEL__DIR", str(tmp_path))
    monkeypatch.setenv("FINSENT_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
    from finsent.app import ModelLoadError, load_model

    with pytest.raises(ModelLoadError, match="negative_label 'negative' is not one of"):
        load_model(Settings())
