"""The `finsent` command's help and error wording as a new operator reads them (a reviewer's report), and
the container healthchecks, which follow FINSENT_METRICS__PORT."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from finsent.cli import build_parser
from finsent.health import HealthServer
from tests.servers import free_port
from tests.test_cli_errors import run_main

REPO_ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("clean_finsent_env")


def sub_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[name]
            return found
    raise AssertionError(f"no sub-command {name}")


def help_of(command: str) -> str:
    """The --help text of `finsent COMMAND`, whitespace folded."""
    return " ".join(sub_parser(build_parser(), command).format_help().split())


# ---- 6. --help ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "produce", "check-config", "demo"])
def test_config_has_help_text(command: str) -> None:
    assert "--config CONFIG YAML settings file (else FINSENT_CONFIG)" in help_of(command)


def test_check_config_format_and_demo_rate_say_their_defaults() -> None:
    assert "--format {yaml,json} output format (default: yaml)" in help_of("check-config")
    assert "sample messages per second (default 50;" in help_of("demo")


@pytest.mark.parametrize(
    "argv",
    [
        ["check-config", "--log-level", "debug"],
        ["--log-level", "DEBUG", "check-config"],
        ["config-reference", "--log-level", "DEBUG"],
        ["sources", "check", "--log-level", "DEBUG"],
        ["--log-level", "ERROR", "sources", "check", "--log-level", "DEBUG"],
    ],
)
def test_log_level_is_taken_before_or_after_the_command(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).log_level == "DEBUG"


def test_log_level_before_the_command_is_kept_when_none_follows_it() -> None:
    assert build_parser().parse_args(["--log-level", "warning", "check-config"]).log_level == "WARNING"
    assert build_parser().parse_args(["check-config"]).log_level == "INFO"
    for name in ("run", "alerts", "produce", "demo", "sources", "backtest", "label", "config-reference"):
        assert "--log-level" in help_of(name), name


def test_check_config_with_log_level_after_it_runs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINSENT_KAFKA__BOOTSTRAP_SERVERS", "kafka:9092")
    code, out, _ = run_main(["check-config", "--format", "json", "--log-level", "DEBUG"], capsys)
    assert code == 0 and "kafka" in json.loads(out)


def test_sources_config_given_a_settings_file_points_at_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings_file = tmp_path / "finsent.yaml"
    settings_file.write_text("kafka:\n  bootstrap_servers: kafka:9092\npipeline:\n  group_id: g\n")
    code, _, err = run_main(["sources", "--config", str(settings_file)], capsys)
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith(f"finsent sources: {settings_file}: unknown top-level keys ['kafka', 'pipeline']")
    assert line.endswith(
        f"; {settings_file} looks like a finsent settings file (kafka, pipeline): pass it with --settings; "
        "--config names the sources file"
    )


# ---- 7. error wording ----------------------------------------------------------------------------------


def settings_error(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = run_main(["check-config"], capsys)
    assert (code, out) == (2, "")
    (line,) = err.splitlines()
    return line


def test_a_list_variable_that_is_not_json_gets_its_own_example(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    line = settings_error({"FINSENT_PIPELINE__METRICS_TICKERS": "AAPL,MSFT"}, monkeypatch, capsys)
    assert line.startswith(
        "finsent: settings: FINSENT_PIPELINE__METRICS_TICKERS: lists and maps are given as JSON, e.g. "
        """FINSENT_PIPELINE__METRICS_TICKERS='["a","b"]' ("""
    )
    assert "INPUT_TOPICS" not in line and "AAPL" not in line


def test_a_check_across_settings_does_not_say_settings_twice(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    line = settings_error({"FINSENT_PIPELINE__SHUTDOWN_TIMEOUT_S": "400"}, monkeypatch, capsys)
    assert line.startswith(
        "finsent: settings: invalid settings (from the environment): pipeline.shutdown_timeout_s (400 s) plus"
    )
    assert line.count("settings:") == 1


def test_a_missing_slack_webhook_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    line = settings_error({"FINSENT_ALERTS__NOTIFIERS__SLACK__ENABLED": "true"}, monkeypatch, capsys)
    assert line == (
        "finsent: settings: invalid settings (from the environment): alerts.notifiers.slack.webhook_url "
        "(FINSENT_ALERTS__NOTIFIERS__SLACK__WEBHOOK_URL): needed when the channel is enabled "
        "(alerts.enabled is on)"
    )


def test_config_reference_check_of_a_missing_file_says_it_does_not_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.md"
    code, out, _ = run_main(["config-reference", "--check", str(missing)], capsys)
    assert code == 1
    assert (
        out.strip()
        == f"{missing} does not exist: run `finsent config-reference --output {missing}` to write it"
    )


# ---- 8. container healthchecks follow FINSENT_METRICS__PORT ---------------------------------------------


def healthcheck_commands() -> dict[str, list[str]]:
    """The exec-form healthcheck command of each image and of the Compose file's finsent services."""
    found = {}
    for name in ("Dockerfile", "deploy/Dockerfile.gpu"):
        text = (REPO_ROOT / name).read_text(encoding="utf-8")
        match = re.search(r"^HEALTHCHECK [^\n]*\\\n\s*CMD (\[.*\])$", text, flags=re.MULTILINE)
        assert match, name
        found[name] = json.loads(match[1])
    compose = yaml.safe_load((REPO_ROOT / "deploy/compose.yaml").read_text(encoding="utf-8"))
    test = compose["x-finsent-healthcheck"]["test"]
    assert test[0] == "CMD"
    found["deploy/compose.yaml"] = test[1:]
    return found


@pytest.mark.parametrize("name", ["Dockerfile", "deploy/Dockerfile.gpu", "deploy/compose.yaml"])
def test_the_container_healthcheck_asks_the_port_finsent_metrics_port_names(name: str) -> None:
    """It asked 127.0.0.1:9108 whatever FINSENT_METRICS__PORT said: a worker moved to another port (two on
    one host) was reported unhealthy while it was fine."""
    command = healthcheck_commands()[name]
    assert command[0] in ("python", "python3") and command[1] == "-c"
    server = HealthServer(CollectorRegistry(), dict, "127.0.0.1", 0).start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FINSENT_")}

        def check(port: str | None) -> int:
            extra = {} if port is None else {"FINSENT_METRICS__PORT": port}
            done = subprocess.run(
                [sys.executable, "-c", command[2]], env={**env, **extra}, capture_output=True, timeout=30
            )
            return done.returncode

        assert check(str(server.port)) == 0
        assert check(str(free_port())) != 0
    finally:
        server.stop()


def test_pseudonym_prints_what_the_documents_store_for_an_author(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An erasure request names an author; with pseudonymised authors nothing could compute the value
    their documents hold, so they could not be found."""
    from datetime import UTC, datetime

    from finsent.outputs.es_documents import build_document
    from inference.types import Prediction
    from ingest.decode import DecodeLimits, decode
    from ingest.message import KafkaMeta, Message

    monkeypatch.setenv("FINSENT_PIPELINE__PSEUDONYMIZE_KEY", "k3y with a newline\n")
    code, out, _ = run_main(["pseudonym", "jane@example.com", "@bob"], capsys)
    assert code == 0
    stored = out.splitlines()
    now = datetime.now(UTC)
    raw = b'{"source": "s", "text": "ACME falls", "author": "jane@example.com"}'
    msg = decode(raw, KafkaMeta("raw", 0, 1, int(now.timestamp() * 1000)), DecodeLimits(), now)
    assert isinstance(msg, Message)
    pred = Prediction("Earnings", 0.9, "negative", 0.9, {"Earnings": 0.9}, {"negative": 0.9})
    doc = build_document(
        msg, pred, ingested_at=now, labeled_at=now, model_version="v", author_key=b"k3y with a newline\n"
    )
    assert stored[0] == doc["author"] and len(stored) == 2 and stored[1] != stored[0]
    monkeypatch.delenv("FINSENT_PIPELINE__PSEUDONYMIZE_KEY")
    code, _, err = run_main(["pseudonym", "x"], capsys)
    assert code == 2 and "pipeline.pseudonymize_key (FINSENT_PIPELINE__PSEUDONYMIZE_KEY) is not set" in err
