"""The `ddpm-tui` command line: no arguments opens the studio, subcommands do the same
jobs without a UI (for scripts and SSH).

Each subcommand lives in ``ddpm_tui/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func(args, workspace) -> int``.
Command modules import torch/selenium lazily inside ``func`` so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ddpm_tui import __version__
from ddpm_tui.commands._common import CLIError
from ddpm_tui.workspace import ENV_VAR, Workspace

# Order is the order shown in --help.
COMMAND_MODULES = ("train", "sample", "runs", "import_seed", "scrape", "data")


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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        workspace = Workspace.resolve(getattr(args, "workspace", None))
        func = getattr(args, "func", None)
        if func is None:
            return run_studio(workspace)
        return int(func(args, workspace) or 0)
    except CLIError as exc:
        print(f"ddpm-tui: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ddpm-tui: interrupted", file=sys.stderr)
        return 130
