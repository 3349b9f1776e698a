"""Sub-commands owned by the operations part of finsent: `finsent config-reference`.

The configuration reference is generated from the settings model, so the documented names, environment
variables, types and defaults are the ones finsent really reads."""

from __future__ import annotations

import argparse
import enum
import json
import sys
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr
from pydantic_core import PydanticUndefined

ENV_PREFIX = "FINSENT_"
ENV_NESTED_DELIMITER = "__"
_SECRET_TYPES = (SecretStr, SecretBytes)


@dataclass(frozen=True)
class SettingDoc:
    """One leaf setting as an operator sees it."""

    path: str
    env: str
    type: str
    default: str
    description: str
    secret: bool


def nested_model(annotation: Any) -> type[BaseModel] | None:
    """The settings section a field holds (unwrapping `X | None`), or None for a leaf value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(models) == 1:
            return nested_model(models[0])
    return None


def is_secret(annotation: Any) -> bool:
    """True when the value is a credential (SecretStr anywhere in the type)."""
    if isinstance(annotation, type) and issubclass(annotation, _SECRET_TYPES):
        return True
    return any(is_secret(a) for a in typing.get_args(annotation))


def render_type(annotation: Any) -> str:
    """A short human name for a field's type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:  # a validated type (TopicName): named by what it holds
        return render_type(args[0])
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        text = " or ".join(render_type(a) for a in rest)
        return f"{text} (optional)" if len(rest) < len(args) else text
    if origin in (tuple, list, set, frozenset):
        items = [a for a in args if a is not Ellipsis]
        return "list of " + (render_type(items[0]) if items else "values")
    if origin is dict:
        return f"map of {render_type(args[0])} to {render_type(args[1])}" if args else "map"
    if isinstance(annotation, type):
        if issubclass(annotation, _SECRET_TYPES):
            return "secret string"
        if issubclass(annotation, Path):
            return "path"
        if issubclass(annotation, enum.Enum):
            return "one of " + ", ".join(f"`{m.value}`" for m in annotation)
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def render_default(value: Any, *, secret: bool) -> str:
    """The default as it would be written in YAML; secrets never show a value."""
    if value is PydanticUndefined:
        return "(required)"
    if value is None:
        return "(none)"
    if secret:
        return "(set)"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, Path):
        return f"`{value}`"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, str):
        return f'`"{value}"`' if value == "" else f"`{value}`"
    if isinstance(value, (tuple, list, frozenset, set)):
        return f"`{json.dumps([_plain(v) for v in value])}`"
    if isinstance(value, BaseModel):
        return f"`{json.dumps(value.model_dump(mode='json'))}`"
    return f"`{value}`"


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (Path, enum.Enum)):
        return str(value.value if isinstance(value, enum.Enum) else value)
    return value


def setting_docs(model: type[BaseModel], path: tuple[str, ...] = ()) -> Iterator[SettingDoc]:
    """Every leaf setting of `model`, depth first, in declaration order."""
    for name, field in model.model_fields.items():
        here = (*path, name)
        section = nested_model(field.annotation)
        if section is not None:
            yield from setting_docs(section, here)
            continue
        secret = is_secret(field.annotation)
        yield SettingDoc(
            path=".".join(here),
            env=ENV_PREFIX + ENV_NESTED_DELIMITER.join(here).upper(),
            type=render_type(field.annotation),
            default=render_default(field.get_default(call_default_factory=True), secret=secret),
            description=" ".join((field.description or "").split()),
            secret=secret,
        )


def section_docs(model: type[BaseModel], path: tuple[str, ...] = ()) -> Iterator[tuple[str, str]]:
    """(dotted path, docstring) of every settings section under `model`, depth first."""
    for name, field in model.model_fields.items():
        section = nested_model(field.annotation)
        if section is not None:
            here = (*path, name)
            yield ".".join(here), " ".join((section.__doc__ or "").split())
            yield from section_docs(section, here)


def env_names(model: type[BaseModel]) -> set[str]:
    """Every environment variable finsent reads for `model`: leaves and whole sections (as JSON)."""
    names = {d.env for d in setting_docs(model)}
    names |= {ENV_PREFIX + ENV_NESTED_DELIMITER.join(p.split(".")).upper() for p, _ in section_docs(model)}
    names.add(ENV_PREFIX + "CONFIG")
    return names


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_reference(model: type[BaseModel]) -> str:
    """The markdown configuration reference: one table per settings section."""
    by_section: dict[str, list[SettingDoc]] = {}
    for doc in setting_docs(model):
        by_section.setdefault(doc.path.rpartition(".")[0], []).append(doc)
    intros = dict(section_docs(model))
    lines = [
        "# Configuration reference",
        "",
        "Generated by `finsent config-reference` from `finsent.settings.Settings`; do not edit by hand.",
        "",
        "Settings are read from (highest priority first) environment variables and the YAML file named by",
        "`FINSENT_CONFIG` (or `--config`). Environment variables use the `FINSENT_` prefix and `__` between",
        'nested names; lists and maps are given as JSON (`FINSENT_PIPELINE__INPUT_TOPICS=\'["a","b"]\'`).',
        "Settings marked **secret** are credentials: give them through the environment (e.g. from a",
        "Kubernetes Secret, as deploy/k8s does) or an uncommitted YAML file; finsent never logs them.",
        "A `FINSENT_*` variable that no setting reads is logged as a warning naming the closest known one;",
        "settings that cannot be read stop every command with `finsent: settings: ...` (exit 2).",
        "",
    ]
    order = ["", *intros]  # depth first: a section before its subsections
    for section in order:
        docs = by_section.get(section, [])
        if not docs:
            continue
        lines += [f"## `{section or '(top level)'}`", ""]
        if intros.get(section):
            lines += [intros[section], ""]
        lines += [
            "| Setting | Environment variable | Type | Default | Description |",
            "|---|---|---|---|---|",
        ]
        for d in docs:
            description = (("**secret.** " if d.secret else "") + d.description).strip()
            lines.append(
                f"| `{d.path}` | `{d.env}` | {_cell(d.type)} | {_cell(d.default)} | {_cell(description)} |"
            )
        lines.append("")
    return "\n".join(lines)


def run_config_reference(args: argparse.Namespace) -> int:
    """Print (or write, or check) the configuration reference."""
    from finsent.settings import Settings

    text = render_reference(Settings)
    try:
        if args.check is not None:
            if not args.check.exists():
                print(
                    f"{args.check} does not exist: run `finsent config-reference --output {args.check}` to "
                    "write it"
                )
                return 1
            current = args.check.read_text(encoding="utf-8")
            if current != text:
                print(f"{args.check} is out of date: run `finsent config-reference --output {args.check}`")
                return 1
            return 0
        if args.output is not None:
            args.output.write_text(text, encoding="utf-8")
            return 0
    except (OSError, UnicodeDecodeError) as e:  # a folder, a missing parent, no permission
        print(f"finsent config-reference: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


def register(sub: Any) -> None:
    """Add this module's sub-commands to the `finsent` parser."""
    parser = sub.add_parser(
        "config-reference",
        help="print the configuration reference (markdown) generated from the settings model",
        description=run_config_reference.__doc__,
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--output", type=Path, help="write the reference to this file instead of stdout")
    target.add_argument("--check", type=Path, help="exit 1 if this file differs from the generated reference")
    parser.set_defaults(handler=run_config_reference)
