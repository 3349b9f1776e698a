"""YAML errors in one line. PyYAML's message quotes the offending line of the file over several lines,
and a settings or sources file holds secrets (an Authorization header, an API key) on its lines."""

from __future__ import annotations

import yaml


def yaml_problem(error: yaml.YAMLError) -> str:
    """`line L, column C: problem` from a YAML error, without PyYAML's multi-line excerpt."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or " ".join(str(error).split())
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem
