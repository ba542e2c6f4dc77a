"""The `ddpm-tui` command line: no arguments opens the studio, subcommands do the same
jobs without a UI (for scripts and SSH).

Each subcommand lives in ``ddpm_tui/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func(args, workspace) -> int``.
Command modules import torch/selenium lazily inside ``func`` so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ddpm_tui import __version__
from core.io.safe_text import shown
from ddpm_tui.commands._common import CLIError
from ddpm_tui.workspace import ENV_VAR, Workspace

# Order is the order shown in --help.
COMMAND_MODULES = ("train", "sample", "eval", "export", "runs", "import_checkpoint", "scrape", "data")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddpm-tui",
        description="A terminal studio for a from-scratch DDPM that learns to draw 64x64 dogs. "
        "With no command, opens the studio.",
    )
    parser.add_argument("--version", action="version", version=f"ddpm-tui {__version__}")
    parser.add_argument(
        "--workspace",
        metavar="DIR",
        help=f"workspace folder (default: ${ENV_VAR} or the platform's user data dir)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"ddpm_tui.commands.{name}")
        module.register(sub)
    return parser


def run_studio(workspace: Workspace) -> int:
    from ddpm_tui.app import StudioApp

    StudioApp(workspace=workspace).run()
    return 0


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Like parse_args, but a wrong flag after a subcommand gets that subcommand's usage."""
    args, extras = parser.parse_known_args(argv)
    if extras:
        # Descend through the (possibly nested) subcommands named on the command line.
        target = parser
        for token in sys.argv[1:] if argv is None else argv:
            subs = [a for a in target._actions if isinstance(a, argparse._SubParsersAction)]
            if subs and token in subs[0].choices:
                target = subs[0].choices[token]
        target.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
    try:
        workspace = Workspace.resolve(getattr(args, "workspace", None))
        func = getattr(args, "func", None)
        if func is None:
            return run_studio(workspace)
        return int(func(args, workspace) or 0)
    except CLIError as exc:
        print(f"ddpm-tui: error: {shown(exc)}", file=sys.stderr)  # paths and names from disk
        return 2
    except KeyboardInterrupt:
        print("ddpm-tui: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `ddpm-tui runs | head`: the reader left; stop quietly (and keep Python from
        # complaining again when it flushes stdout at exit).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
