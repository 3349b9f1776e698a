"""The `finsent` command: one entry point, each sub-command registered by the module that owns it."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from finsent.commands import alerting, model, ops, pipeline, sources
from finsent.settings import SettingsError
from ingest.sources.tailing import allow_csv_cells_up_to

COMMAND_MODULES = (model, pipeline, alerting, ops, sources)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE: what a shell reports for a command whose reader went away (`finsent label ... | head`)."""
EXIT_INTERRUPTED = 130
"""128 + SIGINT: Ctrl-C."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finsent", description=__doc__)
    _add_log_level(parser, "INFO")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    for command in _sub_commands(parser):
        _add_log_level(command, argparse.SUPPRESS)  # unless given there, the value before the command
    return parser


def _add_log_level(parser: argparse.ArgumentParser, default: str) -> None:
    """--log-level, accepted before the sub-command and after it (`finsent check-config --log-level
    DEBUG`): a sub-command's own default is SUPPRESS, so that it never overrides the one given before."""
    parser.add_argument(
        "--log-level",
        default=default,
        type=str.upper,
        choices=LOG_LEVELS,
        help="logging level: " + ", ".join(LOG_LEVELS) + " (any case; default INFO)",
    )


def _sub_commands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every sub-command's parser under `parser`, nested ones (`sources check`) included, each once."""
    found: dict[int, argparse.ArgumentParser] = {}
    todo = [parser]
    while todo:
        for action in todo.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    if id(child) not in found:
                        found[id(child)] = child
                        todo.append(child)
    return list(found.values())


def main(argv: Sequence[str] | None = None) -> int:
    """Run one sub-command. Settings that cannot be read exit 2 with one line, not a traceback; a closed
    stdout (a pipe into `head`) and Ctrl-C end the command quietly."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    allow_csv_cells_up_to(CSV_CELL_LIMIT)
    handler = args.handler
    try:
        code = int(handler(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
    except SettingsError as e:
        print(f"finsent: settings: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:  # Ctrl-C before a command installs its own handler, or while it connects
        print(f"finsent {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return code


CSV_CELL_LIMIT = 2**31 - 1
"""csv's default cell limit (128 Ki characters) is below a long filing's body. The limit is process-wide,
so it is raised once here, for the whole command, rather than by the modules that read CSV (`finsent
produce`, the file sources, training data): their lines are bounded before they are parsed
(`sources.max_item_bytes` x 4), and the file sources still turn a cell over the limit into an `oversized`
item when finsent is used as a library."""


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush of the unwritable buffer does not
    print a second BrokenPipeError (the recipe of the Python docs, `signal` module notes)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # a replaced stdout (tests) has no descriptor to redirect
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


if __name__ == "__main__":
    raise SystemExit(main())
