"""YAML errors in one line. PyYAML's message quotes the offending line of the file over several lines,
and a settings or sources file holds secrets (an Authorization header, an API key) on its lines. Its
problem text quotes input too: an alias (`*s3cr3t` is "found undefined alias 's3cr3t'"), a tag
(`!s3cr3t`: "could not determine a constructor for the tag '!s3cr3t'"), an anchor, a tag handle, an
unexpected character: a value starting with `*`, `&` or `!` was printed whole."""

from __future__ import annotations

import ast
import re

import yaml

# A string as PyYAML quotes it (`%r`): single-quoted, or double-quoted when it holds a single quote.
_QUOTED = re.compile(r"""'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*\"""")
# What is kept as quoted: one character (or one escape, '\t', '\x00', '\u2028': it tells what is wrong,
# and no secret is in one character), and PyYAML's token names ('<block end>', '<scalar>').
_KEPT = re.compile(r"""(?:[^\\]|\\(?:x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.))|<[a-z ]+>""", re.S)


def _unquoted(text: str) -> str:
    """`text` with every quoted string of input replaced by its first character and its length."""

    def repl(m: re.Match[str]) -> str:
        quoted = m.group(0)
        inner = quoted[1:-1]
        if _KEPT.fullmatch(inner):
            return quoted
        try:
            value = ast.literal_eval(quoted)
        except (ValueError, SyntaxError):
            value = inner
        if not isinstance(value, str) or not value:
            value = inner
        return f"{repr(value[0])[:-1]}…{repr(value[0])[-1]} ({len(value)} characters)"

    return _QUOTED.sub(repl, text)


def yaml_problem(error: yaml.YAMLError) -> str:
    """`line L, column C: problem (context)` from a YAML error, without PyYAML's multi-line excerpt of
    the file, and with what it quotes of the input cut down to its first character and length (see the
    module): the line, the column and the kind of problem stay."""
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        problem = " ".join((error.problem or "").split())
        context = " ".join((error.context or "").split())
        text = f"{problem} ({context})" if problem and context else problem or context or type(error).__name__
        text = _unquoted(text)
        return f"line {mark.line + 1}, column {mark.column + 1}: {text}" if mark is not None else text
    return _unquoted(" ".join(str(error).split()))
