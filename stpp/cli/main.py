"""The top of the command line: the parser of every command and the dispatch to its handlers.

Handlers are imported only for the command that runs: the engine's load torch, the project's load
the store, and neither is needed to parse (or to print ``--help``).
"""

from __future__ import annotations

import argparse
from typing import Sequence

from stpp.cli.engine_args import ENGINE_COMMANDS, add_engine_parsers
from stpp.cli.project_args import add_project_parser


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m stpp``: ``run``, ``eval``, ``predict``, ``worker`` and ``project ...``."""
    parser = argparse.ArgumentParser(prog="python -m stpp",
                                     description="The command line: python -m stpp run|eval|predict|worker|project.")
    commands = parser.add_subparsers(dest="command", required=True)
    add_engine_parsers(commands)
    add_project_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run the command; returns its exit code."""
    args = build_parser().parse_args(argv)
    if args.command in ENGINE_COMMANDS:
        from stpp.cli.engine import run_engine_command

        return run_engine_command(args)
    if args.command == "worker":
        from stpp.worker.main import worker_main

        return worker_main(args.run_dir)
    from stpp.cli.projects import run_project_command

    return run_project_command(args)
