"""The `finsent` command: one entry point, each sub-command registered by the module that owns it."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from finsent.commands import alerting, model, ops, pipeline, sources

COMMAND_MODULES = (model, pipeline, alerting, ops, sources)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finsent", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING, ERROR)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    handler = args.handler
    return int(handler(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
