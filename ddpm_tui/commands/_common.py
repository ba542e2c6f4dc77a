"""Pieces every subcommand shares: the user-facing error and the --workspace option."""

from __future__ import annotations

import argparse


class CLIError(Exception):
    """A user-facing error: printed as one line ``ddpm-tui: error: ...``, exit status 2."""


def add_workspace_arg(parser: argparse.ArgumentParser) -> None:
    """Accept ``--workspace`` after the subcommand too (``ddpm-tui train --workspace W``)."""
    parser.add_argument(
        "--workspace",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="workspace folder (default: $DDPM_TUI_HOME or the platform's user data dir)",
    )
