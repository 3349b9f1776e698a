"""A YAML error says where and what is wrong, never the secret it tripped on: PyYAML quotes the alias,
tag, anchor or tag handle it could not use, and a secret value may start with `*`, `&` or `!`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ingest.sources.config import SourcesConfigError, load_sources
from ingest.yaml_errors import yaml_problem


def problem(text: str) -> str:
    with pytest.raises(yaml.YAMLError) as exc:
        yaml.safe_load(text)
    return yaml_problem(exc.value)


CONSTRUCTOR = "could not determine a constructor for the tag"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a:\n  pw: *s3cr3tALIAS\n", "line 2, column 7: found undefined alias 's…' (11 characters)"),
        ("a:\n  pw: !s3cr3tTAG\n", f"line 2, column 7: {CONSTRUCTOR} '!…' (10 characters)"),
        ("a: !s3cr3t'x y\n", f"line 1, column 4: {CONSTRUCTOR} '!…' (9 characters)"),
        ("a: !s3cr3tH!x y\n", "line 1, column 4: found undefined tag handle '!…' (9 characters)"),
        ("a: &s3cr3tA 1\nb: &s3cr3tA 2\n", "line 2, column 4: second occurrence (found duplicate anchor"),
        ("a: b\n\tc: d\n", "line 2, column 1: found character '\\t' that cannot start any token"),
        ('a: "\\qs3cr3t"\n', "line 1, column 6: found unknown escape character 'q'"),
        ("a:\n  b: [unclosed\n", "line 3, column 1: expected ',' or ']', but got '<stream end>'"),
    ],
)
def test_yaml_problems_keep_where_and_what_but_not_the_token(text: str, expected: str) -> None:
    said = problem(text)
    assert said.startswith(expected)
    assert "s3cr3t" not in said and "\n" not in said


def test_a_sources_file_with_a_secret_alias_names_no_secret(tmp_path: Path) -> None:
    path = tmp_path / "sources.yaml"
    path.write_text("sources:\n  - name: a\n    kind: rss\n    url: https://x/\n    params: {k: *s3cr3tK}\n")
    with pytest.raises(SourcesConfigError) as exc:
        load_sources(path)
    said = str(exc.value)
    assert said.startswith(f"{path}: not valid YAML: line 5, column 17: found undefined alias")
    assert "s3cr3t" not in said
