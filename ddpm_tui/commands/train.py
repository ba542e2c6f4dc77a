"""`ddpm-tui train`: train a run in the workspace (or continue it), with a live progress display.

Accepts the seed's flags with the seed's defaults and meanings (--batch_size 16, --examples,
--T 1000, --device, --lr 0.0003, --epochs 500, --samples 10, --save_frequency 10), both
spellings of the two-word ones, plus the trainer's own options. Starting a run whose
folder exists continues it: options not given on the command line keep the run's values.
Works the same under `torchrun --nproc_per_node N -m ddpm_tui train --run-name NAME ...`
(--run-name: torchrun's parser would take --run as an abbreviation of its --run-path).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from ddpm_tui.commands._common import CLIError, add_workspace_arg

# The defaults shown in --help; tests check they equal core.train.TrainConfig's (the parser
# itself leaves unset options out, so a resumed run keeps its own values).
DEFAULTS: dict[str, Any] = {
    "preset": "seed", "image_size": 64, "schedule": "linear", "T": 1000, "lr": 3e-4,
    "batch_size": 16, "epochs": 500, "samples": 10, "save_frequency": 10, "save_every_steps": 0,
    "keep_milestones": 0, "ema_decay": 0.995, "grad_clip": 0.0, "amp": "auto", "workers": 0, "seed": 0,
    "max_steps": 0, "max_time": 0.0, "label_dropout": 0.1, "resize": "squash", "log_every": 10,
    "sample_steps": 25, "device": "auto",
}
PRESET_NAMES = ("seed", "small", "tiny")
SCHEDULE_NAMES = ("linear", "cosine")
AMP_MODES = ("auto", "bf16", "off")
RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([smhd]?)\s*$", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """'90', '90s', '30m', '1.5h', '2d' -> seconds (argparse type)."""
    match = _DURATION_RE.match(str(text))
    if not match:
        raise argparse.ArgumentTypeError(f"bad duration {text!r}: use seconds or e.g. 30m, 1.5h, 2d")
    value = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2).lower()]
    return value


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
            if low is not None and high is not None:
                where = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            elif low is not None:
                where = f"{'>' if low_open else '>='} {low:g}"
            else:
                where = f"{'<' if high_open else '<='} {high:g}"
            raise argparse.ArgumentTypeError(f"{text!r} must be {where}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


_positive_int = bounded(int, low=1)
_non_negative_int = bounded(int, low=0)
_fraction = bounded(float, low=0.0, high=1.0, high_open=True)
_positive_float = bounded(float, low=0.0, low_open=True)
_non_negative_float = bounded(float, low=0.0)


def register(subparsers: argparse._SubParsersAction) -> None:
    d = DEFAULTS
    p = subparsers.add_parser(
        "train",
        help="train a DDPM run (continues the run if it exists)",
        description="Train a DDPM on a folder of breed folders. Writes runs/NAME/ in the workspace: "
        "config.json, status.json, metrics.jsonl, checkpoints/, samples/, train.log. Starting an "
        "existing run continues it from its last checkpoint, keeping its options unless given here. "
        "Ctrl-C or SIGTERM finishes the step, saves and stops. Under torchrun, trains on all ranks (DDP).",
    )
    add_workspace_arg(p)
    S = argparse.SUPPRESS  # unset options stay unset (see DEFAULTS)
    g = p.add_argument_group("run and data")
    g.add_argument("--run", "--run-name", dest="run", metavar="NAME", default=S,
                   help="run name (default: a new timestamped name); under torchrun write --run-name, "
                   "since torchrun's own parser takes --run for its --run-path")
    g.add_argument("--resume", action="store_true", help="require that the run exists (it is continued either way)")
    g.add_argument("--data", metavar="DIR", default=S, help="folder of breed folders (default: WORKSPACE/data/dogs)")
    g.add_argument("--image-size", "--image_size", dest="image_size", type=_positive_int, default=S, metavar="PX",
                   help=f"image side in pixels (default: {d['image_size']})")
    g.add_argument("--resize", choices=("squash", "crop"), default=S,
                   help="squash to a square (the seed) or crop the centre square (default: squash)")
    g.add_argument("--no-flip", dest="flip", action="store_false", default=S, help="no random horizontal flips")
    g.add_argument("--workers", type=_non_negative_int, default=S, metavar="N",
                   help="image-decoding workers (default: 0 = one per CPU)")
    g.add_argument("--examples", action="store_true",
                   help="write examples.png (training images) and forward_diffusion.png into the run folder")

    g = p.add_argument_group("model and diffusion")
    g.add_argument("--preset", choices=PRESET_NAMES, default=S,
                   help=f"network size: seed (the seed's 93M UNet), small, tiny (default: {d['preset']})")
    g.add_argument("--T", type=_positive_int, default=S, metavar="STEPS",
                   help=f"diffusion steps for training and sampling (default: {d['T']})")
    g.add_argument("--schedule", choices=SCHEDULE_NAMES, default=S, help=f"beta schedule (default: {d['schedule']})")
    g.add_argument("--conditional", action="store_true", default=S,
                   help="condition on the breed (enables --breed and --guidance when sampling)")
    g.add_argument("--label-dropout", "--label_dropout", dest="label_dropout", type=_fraction, default=S,
                   metavar="P", help=f"share of labels dropped for classifier-free guidance (default: {d['label_dropout']})")

    g = p.add_argument_group("optimisation")
    g.add_argument("--batch_size", "--batch-size", dest="batch_size", type=_positive_int, default=S, metavar="N",
                   help=f"training batch size per process (default: {d['batch_size']})")
    g.add_argument("--lr", type=_positive_float, default=S, help=f"Adam learning rate (default: {d['lr']})")
    g.add_argument("--epochs", type=_positive_int, default=S, help=f"epochs to run (default: {d['epochs']})")
    g.add_argument("--ema-decay", "--ema_decay", dest="ema_decay", type=_fraction, default=S, metavar="D",
                   help=f"EMA decay (default: {d['ema_decay']})")
    g.add_argument("--grad-clip", "--grad_clip", dest="grad_clip", type=_non_negative_float, default=S,
                   metavar="NORM", help="clip the gradient norm (default: 0 = off, as in the seed)")
    g.add_argument("--seed", type=_non_negative_int, default=S, help=f"random seed (default: {d['seed']})")
    g.add_argument("--max-steps", "--max_steps", dest="max_steps", type=_non_negative_int, default=S, metavar="N",
                   help="finish at this global step (default: 0 = no limit)")
    g.add_argument("--max-time", "--max_time", dest="max_time", type=parse_duration, default=S, metavar="DUR",
                   help="stop after this long, e.g. 90m or 8h; the run can be continued (default: no limit)")

    g = p.add_argument_group("saving and samples")
    g.add_argument("--samples", type=_non_negative_int, default=S, metavar="N",
                   help=f"images per sample grid (default: {d['samples']})")
    g.add_argument("--save_frequency", "--save-frequency", dest="save_frequency", type=_positive_int, default=S,
                   metavar="EPOCHS", help=f"epochs between checkpoints and sample grids (default: {d['save_frequency']})")
    g.add_argument("--save-every-steps", "--save_every_steps", dest="save_every_steps", type=_non_negative_int,
                   default=S, metavar="N", help="also checkpoint every N steps (default: 0 = off)")
    g.add_argument("--keep-milestones", "--keep_milestones", dest="keep_milestones", type=int, default=S,
                   metavar="N", help="keep N epoch_NNNN.pt checkpoints besides last.pt (-1 all; default: 0)")
    g.add_argument("--sample-steps", "--sample_steps", dest="sample_steps", type=_positive_int, default=S,
                   metavar="N", help=f"DDIM steps for the sample grids (default: {d['sample_steps']})")
    g.add_argument("--log-every", "--log_every", dest="log_every", type=_positive_int, default=S, metavar="N",
                   help=f"steps per metrics line (default: {d['log_every']})")

    g = p.add_argument_group("hardware")
    g.add_argument("--device", default=S, help="auto (CUDA, then MPS, then CPU), cuda, cuda:1, mps or cpu (default: auto)")
    g.add_argument("--amp", choices=AMP_MODES, default=S,
                   help="bf16 autocast: auto = where the device does it fast (default: auto)")
    g.add_argument("--channels-last", "--channels_last", dest="channels_last", action="store_true", default=S,
                   help="channels_last memory format (often faster on GPUs)")
    g.add_argument("--compile", action="store_true", default=S, help="torch.compile the network (opt-in)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress display (for scripts and the studio)")
    p.set_defaults(func=run)


OPTION_KEYS = tuple(DEFAULTS) + ("data", "flip", "conditional", "channels_last", "compile")


def _timestamp_name() -> str:
    return time.strftime("run-%Y%m%d-%H%M%S")


def build_config(args: argparse.Namespace, workspace, run_dir: Path) -> Any:
    """The run's TrainConfig: the saved one (existing run) or the defaults, then the options
    given on this command line."""
    from core import runs
    from core.train import TrainConfig

    saved = runs.read_config(run_dir)
    if saved is not None:
        try:
            config = TrainConfig.from_dict(saved)
        except (TypeError, ValueError) as exc:
            raise CLIError(f"{run_dir / runs.CONFIG_FILE}: {exc}") from None
    else:
        config = TrainConfig(data=str(workspace.dataset_dir()))
    given = {k: getattr(args, k) for k in OPTION_KEYS if hasattr(args, k)}
    if "data" in given:
        given["data"] = str(Path(given["data"]).expanduser().resolve())
    for key, value in given.items():
        setattr(config, key, value)
    config.run = run_dir.name
    config.cache_dir = str(workspace.cache_dir)
    return config


def run(args: argparse.Namespace, workspace) -> int:
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    name = getattr(args, "run", None)
    if name is None:
        if args.resume:
            raise CLIError("--resume needs --run NAME")
        if world_size > 1:
            raise CLIError("under torchrun pass --run-name NAME so every rank writes the same run")
        name = _timestamp_name()
    if not RUN_NAME_RE.match(name):
        raise CLIError(f"run name {name!r}: use letters, digits, '.', '_' or '-' (at most 64, not starting with . _ -)")
    run_dir = workspace.run_dir(name)
    if args.resume and not run_dir.is_dir():
        known = ", ".join(sorted(p.name for p in workspace.runs_dir.glob("*") if p.is_dir())) or "none"
        raise CLIError(f"no run named {name!r} to resume in {workspace.runs_dir} (runs: {known})")

    from core.train import LOGGER_NAME, TrainError, train  # torch is imported here

    config = build_config(args, workspace, run_dir)
    if not Path(config.data).is_dir():
        raise CLIError(f"dataset folder {config.data} does not exist; scrape one with `ddpm-tui scrape` "
                       "or pass --data DIR")
    quiet = args.quiet or rank != 0
    with _Display(name, quiet, LOGGER_NAME) as display:
        try:
            final = train(config, run_dir, progress=display.update, examples=args.examples and rank == 0)
        except TrainError as exc:
            raise CLIError(str(exc)) from None
        display.finish(final)
    state = final.get("state")
    message = final.get("message", "")
    if state == "failed":
        print(f"ddpm-tui: training failed: {message}", file=sys.stderr)
        return 1
    if not quiet:
        display.console.print(f"[bold]{state}[/]: {message}")
        display.console.print(f"run folder: {run_dir}")
        if state == "stopped":
            display.console.print(f"continue with: ddpm-tui train --run {name}")
    return 0


class _Display:
    """A Rich progress display fed by train()'s progress events, plus the trainer's log
    lines above it. Quiet: nothing but errors on stderr (train.log has everything)."""

    def __init__(self, run_name: str, quiet: bool, logger_name: str) -> None:
        from rich.console import Console

        self.run_name = run_name
        self.quiet = quiet
        self.logger_name = logger_name
        self.console = Console(stderr=False)
        self.progress = None
        self.task = None
        self.load_task = None
        self._handler = None
        self._propagate = True
        self._started = False

    def __enter__(self) -> "_Display":
        import logging

        logger = logging.getLogger(self.logger_name)
        self._propagate = logger.propagate
        logger.propagate = False  # no second copy through the root logger
        if self.quiet:
            handler: logging.Handler = logging.StreamHandler(sys.stderr)
            handler.setLevel(logging.ERROR)
            handler.setFormatter(logging.Formatter("ddpm-tui: %(message)s"))
        else:
            from rich.logging import RichHandler
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                       TimeElapsedColumn)

            self.progress = Progress(
                SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("{task.fields[eta]}"),
                console=self.console, transient=False,
            )
            handler = RichHandler(console=self.console, show_path=False, show_time=False, markup=False)
            handler.setLevel(logging.INFO)
        self._handler = handler
        logger.addHandler(handler)
        return self

    def __exit__(self, *exc: object) -> None:
        import logging

        logger = logging.getLogger(self.logger_name)
        if self._handler is not None:
            logger.removeHandler(self._handler)
        logger.propagate = self._propagate
        if self.progress is not None and self._started:
            self.progress.stop()

    def finish(self, final: dict[str, Any]) -> None:
        """Leave the bar showing where training ended, not the last phase it went through."""
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=final.get("step", 0),
                                 description=f"{final.get('state', 'done')} {self.run_name}")

    def update(self, event: dict[str, Any]) -> None:
        if self.progress is None:
            return
        if not self._started:  # started on the first event: an early error prints nothing else
            self.progress.start()
            self._started = True
        kind = event.get("event")
        if kind == "loading":
            if self.load_task is None:
                self.load_task = self.progress.add_task("loading images", total=event.get("total") or None,
                                                        info="", eta="")
            self.progress.update(self.load_task, completed=event.get("done", 0), total=event.get("total") or None)
        elif kind == "step":
            if self.load_task is not None:
                self.progress.update(self.load_task, visible=False)
                self.load_task = None
            if self.task is None:
                self.task = self.progress.add_task(f"train {self.run_name}", total=event.get("total_steps"),
                                                   info="", eta="")
            loss = event.get("loss")
            epoch = event.get("epoch") or 0.0
            loss_text = f"{loss:.4f}" if isinstance(loss, float) else "skipped (NaN)"
            info = f"epoch {epoch:.2f}/{event.get('epochs')}  loss {loss_text}  "
            info += f"{event.get('images_per_s', 0):.1f} img/s"
            eta = event.get("eta_s")
            eta_text = f"ETA {_fmt_eta(eta)}" if isinstance(eta, (int, float)) else ""
            self.progress.update(self.task, completed=event["step"], total=event.get("total_steps"),
                                 info=info, eta=eta_text, description=f"train {self.run_name}")
        elif kind in ("saving", "sampling") and self.task is not None:
            self.progress.update(self.task, description=f"{kind} {self.run_name}")
        # "wrote" and "bad_files" events also reach the log, which this display shows.


def _fmt_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
