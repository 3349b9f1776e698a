"""`finsent config-reference`: the configuration reference generated from the settings model."""

from __future__ import annotations

import os
from functools import reduce
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field, SecretStr

from finsent.cli import main
from finsent.commands.ops import SettingDoc, env_names, render_reference, setting_docs
from finsent.settings import Settings


class _Inner(BaseModel):
    """Inner section."""

    token: SecretStr = SecretStr("s3cret-value")
    mode: Literal["a", "b"] = "a"


class _Outer(BaseModel):
    name: str = Field("x|y", description="A name | with a pipe.")
    hosts: tuple[str, ...] = ("h1", "h2")
    inner: _Inner = _Inner()
    maybe: _Inner | None = None
    path: Path | None = None


def _get(settings: Settings, dotted: str) -> Any:
    return reduce(getattr, dotted.split("."), settings)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("FINSENT_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_leaves_of_nested_sections_with_env_names_types_and_defaults() -> None:
    docs = {d.path: d for d in setting_docs(_Outer)}
    assert set(docs) == {"name", "hosts", "inner.token", "inner.mode", "maybe.token", "maybe.mode", "path"}
    assert docs["inner.mode"] == SettingDoc(
        path="inner.mode",
        env="FINSENT_INNER__MODE",
        type="one of `a`, `b`",
        default="`a`",
        description="",
        secret=False,
    )
    assert docs["hosts"].type == "list of str" and docs["hosts"].default == '`["h1", "h2"]`'
    assert docs["path"].type == "path (optional)" and docs["path"].default == "(none)"


def test_secrets_are_marked_and_their_defaults_never_shown() -> None:
    docs = {d.path: d for d in setting_docs(_Outer)}
    assert docs["inner.token"].secret and docs["inner.token"].default == "(set)"
    text = render_reference(_Outer)
    assert "s3cret-value" not in text
    assert "| `inner.token` | `FINSENT_INNER__TOKEN` | secret string | (set) | **secret.** |" in text


def test_markdown_escapes_pipes_and_has_one_row_per_setting() -> None:
    text = render_reference(_Outer)
    assert "`x\\|y`" in text and "A name \\| with a pipe." in text
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == len(list(setting_docs(_Outer)))
    assert "## `inner`" in text and "Inner section." in text


def test_reference_covers_every_setting_of_finsent() -> None:
    text = render_reference(Settings)
    docs = list(setting_docs(Settings))
    assert len(docs) > 40
    for doc in docs:
        assert f"| `{doc.path}` | `{doc.env}` |" in text
    by_path = {d.path: d for d in docs}
    assert by_path["kafka.bootstrap_servers"].env == "FINSENT_KAFKA__BOOTSTRAP_SERVERS"
    assert by_path["metrics.port"].default == "`9108`"
    assert by_path["kafka.sasl_password"].secret and by_path["elasticsearch.api_key"].secret
    assert not by_path["kafka.sasl_username"].secret
    assert "FINSENT_CONFIG" in env_names(Settings)


def test_every_documented_string_setting_is_read_from_its_env_var(clean_env: pytest.MonkeyPatch) -> None:
    """The documented environment variable really sets the documented field."""
    strings = [d for d in setting_docs(Settings) if d.type in {"str", "str (optional)"}]
    assert len(strings) > 10
    formatted = {"elasticsearch.url": "http://probe-value:9200"}  # checked as http(s)://host:port
    for doc in strings:
        probe = formatted.get(doc.path, "probe-value")
        clean_env.setenv(doc.env, probe)
        assert _get(Settings(), doc.path) == probe, doc.env
        clean_env.delenv(doc.env)


def test_every_documented_secret_is_read_from_its_env_var(clean_env: pytest.MonkeyPatch) -> None:
    for doc in (d for d in setting_docs(Settings) if d.secret):
        clean_env.setenv(doc.env, "probe-secret")
        value = _get(Settings(), doc.path)
        assert isinstance(value, SecretStr) and value.get_secret_value() == "probe-secret", doc.env
        assert "probe-secret" not in repr(value)
        clean_env.delenv(doc.env)


def test_cli_writes_and_checks_the_reference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "configuration.md"
    assert main(["config-reference", "--output", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == render_reference(Settings)
    assert main(["config-reference", "--check", str(out)]) == 0
    out.write_text(out.read_text(encoding="utf-8") + "edited\n", encoding="utf-8")
    assert main(["config-reference", "--check", str(out)]) == 1
    assert "out of date" in capsys.readouterr().out
    assert main(["config-reference"]) == 0
    assert capsys.readouterr().out.startswith("# Configuration reference")
