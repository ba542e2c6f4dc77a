"""Pieces the subcommands share: the user-facing error, the --workspace option, the
bounded-number argparse type and the run-name rule (declared in core.training.options)."""

from __future__ import annotations

import argparse

from core.diffusion.registry import (AMP_MODES, DEFAULT_GUIDANCE, DEFAULT_SAMPLER, MAX_SIGMA_REL, SAMPLER_SPECS,
                                     sampler_help, steps_help)
from core.training.options import RUN_NAME_RE  # noqa: F401  (the commands' one spelling of it)


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


def add_command(subparsers: argparse._SubParsersAction, name: str, func, **kwargs) -> argparse.ArgumentParser:
    """A subcommand that runs ``func(args, workspace)`` and takes --workspace like every other
    (``kwargs`` go to ``add_parser``: help, description, aliases)."""
    parser = subparsers.add_parser(name, **kwargs)
    add_workspace_arg(parser)
    parser.set_defaults(func=func)
    return parser


def bounded(kind: type, *, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False):
    """An argparse ``type``: ``kind(text)`` within [low, high] (or open ends), else a usage
    error naming the value. Infinity and NaN are refused."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"{text!r} must be a finite number")
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            fmt = str if kind is int else "{:g}".format  # a seed's bound exactly, not 9.22337e+18
            if low is not None and high is not None:
                where = f"in {'(' if low_open else '['}{fmt(low)}, {fmt(high)}{')' if high_open else ']'}"
            elif low is not None:
                where = f"{'>' if low_open else '>='} {fmt(low)}"
            else:
                where = f"{'<' if high_open else '<='} {fmt(high)}"
            raise argparse.ArgumentTypeError(f"{text!r} must be {where}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


positive_int = bounded(int, low=1)


def add_source_arg(parser: argparse.ArgumentParser, *, optional: bool = False) -> None:
    """RUN_OR_CHECKPOINT, as `sample`, `eval` and `export` take it."""
    parser.add_argument("source", metavar="RUN_OR_CHECKPOINT", nargs="?" if optional else None,
                        help="a run name in the workspace, or a checkpoint file (.pt, or .safetensors from "
                        "`ddpm-tui export`)")


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    """How images are drawn, the same for `sample` and `eval`: sampler, steps, eta, guidance,
    device and autocast (their defaults from core.diffusion.registry)."""
    parser.add_argument("--sampler", choices=list(SAMPLER_SPECS), default=DEFAULT_SAMPLER, help=sampler_help())
    parser.add_argument("--steps", type=positive_int, default=None, help=steps_help())
    parser.add_argument("--eta", type=bounded(float, low=0.0, high=1.0), default=0.0,
                        help="DDIM eta: 0 deterministic, 1 DDPM-like (default: 0; not the training ETA)")
    parser.add_argument("--guidance", type=bounded(float, low=0.0, high=100.0), default=None,
                        help=f"classifier-free guidance scale for conditional runs (default: {DEFAULT_GUIDANCE:g}; "
                        "1 = plain conditional)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default: auto)")
    parser.add_argument("--amp", choices=AMP_MODES, default="auto",
                        help="autocast: bf16 where the device does it fast (default: auto)")
    add_ema_length_arg(parser)


ema_length_type = bounded(float, low=0.0, low_open=True, high=MAX_SIGMA_REL)


def add_ema_length_arg(parser: argparse.ArgumentParser) -> None:
    """--ema-length, for `sample`, `eval` and `export`: which power-EMA average to use."""
    parser.add_argument("--ema-length", type=ema_length_type, default=None, metavar="SIGMA_REL",
                        help="for a run trained with --ema-kind power: the width of the weights' average "
                        "(EDM2's sigma_rel, e.g. 0.05 smooths less, 0.15 more), rebuilt from the run's EMA "
                        "snapshots (default: the run's --ema-length)")
