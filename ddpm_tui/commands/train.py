"""`ddpm-tui train`: train a run in the workspace (or continue it), with a live progress display.

Accepts the flags of the original project's train.py with its defaults and meanings (--batch_size 16, --examples,
--T 1000, --device, --lr 0.0003, --epochs 500, --samples 10, --save_frequency 10), both
spellings of the two-word ones, plus the trainer's own options. Starting a run whose
folder exists continues it: options not given on the command line keep the run's values.
Works the same under `torchrun --nproc_per_node N -m ddpm_tui train --run-name NAME ...`
(--run-name: torchrun's parser would take --run as an abbreviation of its --run-path).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from core.training import events, options
from core.io.safe_text import shown, shown_markup
from ddpm_tui.commands._common import RUN_NAME_RE, CLIError, add_command

parse_duration = options.parse_duration



def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers, "train", run,
        help="train a DDPM run (continues the run if it exists)",
        description="Train a DDPM on a folder of breed folders. Writes runs/NAME/ in the workspace: "
        "config.json, status.json, metrics.jsonl, checkpoints/, samples/, train.log. Starting an "
        "existing run continues it from its last checkpoint, keeping its options unless given here. "
        "Ctrl-C or SIGTERM finishes the step, saves and stops. Under torchrun, trains on all ranks (DDP).",
    )
    g = p.add_argument_group(options.GROUPS[0])
    g.add_argument("--run", "--run-name", dest="run", metavar="NAME", default=argparse.SUPPRESS,
                   help="run name (default: a new timestamped name); under torchrun write --run-name, "
                   "since torchrun's own parser takes --run for its --run-path")
    g.add_argument("--resume", action="store_true", help="require that the run exists (it is continued either way)")
    g.add_argument("--examples", action="store_true",
                   help="write examples.png (training images) and forward_diffusion.png into the run folder")
    options.add_train_arguments(p, {options.GROUPS[0]: g})  # every option, from core/training/options.py
    p.add_argument("--quiet", "-q", action="store_true", help="no progress display (for scripts and the studio)")


def _timestamp_name() -> str:
    return time.strftime("run-%Y%m%d-%H%M%S")


def build_config(args: argparse.Namespace, workspace, run_dir: Path) -> Any:
    """The run's TrainConfig: the saved one (existing run) or the recipe's defaults, then
    the options given on this command line."""
    from core.training import runs
    from core.training.train import TrainConfig

    given = {o.name: getattr(args, o.name) for o in options.OPTIONS if hasattr(args, o.name)}
    if "data" in given:
        given["data"] = str(Path(given["data"]).expanduser().resolve())
    saved = _saved_config(run_dir)
    if given.keys() & {"init_from", "init_from_raw"}:
        given.update(_init_source(given, saved, workspace, run_dir))
    try:
        if saved is None:
            start = {} if given.get("init_from") else _cpu_start(given, args.quiet)  # the source's network
            values = options.resolve({"data": str(workspace.dataset_dir()), **start, **given})
        else:
            values = options.resolve(given, base=TrainConfig.from_dict(saved).to_dict())
        config = TrainConfig.from_dict(values)
        config.check_options()  # a hand-edited config.json ("data": null) is named, not a traceback
    except options.RecipeChange as exc:
        raise CLIError(f"run {run_dir.name!r} {exc}") from None
    except (TypeError, ValueError) as exc:
        where = run_dir / runs.CONFIG_FILE if saved is not None else "options"
        raise CLIError(f"{where}: {exc}") from None
    config.run = run_dir.name
    config.cache_dir = str(workspace.cache_dir)
    return config


def _cpu_start(given: dict[str, Any], quiet: bool) -> dict[str, Any]:
    """A new run given no --preset, on a machine without a CUDA GPU (or --device cpu/mps):
    the CPU start the studio's form proposes too (options.new_run_defaults), said in one line."""
    device = str(given.get("device", options.BY_NAME["device"].default))
    if "preset" in given or device.startswith("cuda"):
        return {}
    if device == "auto":
        import torch

        if torch.cuda.is_available():
            return {}
    recipe = given.get("recipe", options.NEW_RUN_RECIPE)
    if not quiet:
        print(f"no CUDA GPU: starting from the CPU default ({options.cpu_start_text(recipe)}); "
              "pass --preset classic --image-size 64 for the original's network")
    return options.cpu_new_run(recipe)


def _init_source(given: dict[str, Any], saved: dict | None, workspace, run_dir: Path) -> dict[str, Any]:
    """--init-from starts a new run only; its RUN_OR_FILE is recorded as the checkpoint file."""
    from core.training.init_from import resolve_source

    if saved is not None:
        raise CLIError(f"--init-from starts a new run, and run {run_dir.name!r} exists; "
                       "pick a new --run name (an existing run continues from its own checkpoint)")
    if not given.get("init_from"):
        raise CLIError("--init-from-raw needs --init-from RUN_OR_FILE")
    try:
        source = resolve_source(given["init_from"], workspace.runs_dir)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    return {"init_from": str(source), **_source_network(source, given)}


def _source_network(source: Path, given: dict[str, Any]) -> dict[str, Any]:
    """The source's network for what the command line leaves open (preset, image size,
    conditional), so `--init-from RUN` alone continues that network in a new run."""
    from core.diffusion.checkpoint import CheckpointError, load_checkpoint

    try:
        # only the config is wanted: no tensor is read (a classic checkpoint is over a gigabyte)
        model = load_checkpoint(source, map_location="meta").get("model_config") or {}
    except CheckpointError as exc:
        raise CLIError(f"--init-from: {exc}") from None
    out: dict[str, Any] = {}
    if model.get("preset") in options.BY_NAME["preset"].choices:
        out["preset"] = model["preset"]
    if isinstance(model.get("image_size"), int):
        out["image_size"] = model["image_size"]
    out["conditional"] = bool(model.get("num_classes"))
    return {name: value for name, value in out.items() if name not in given}


def _saved_config(run_dir: Path) -> dict | None:
    """config.json of an existing run; None for a new run. A run that has trained (it has a
    checkpoint) but whose config.json is missing or unreadable is refused, naming the file."""
    import json

    from core.training import runs

    path = run_dir / runs.CONFIG_FILE
    has_checkpoint = (runs.checkpoints_dir(run_dir) / runs.LAST_CHECKPOINT).exists()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if has_checkpoint:
            raise CLIError(f"{path} is missing, so run {run_dir.name!r} cannot be continued "
                           "(its options are unknown); start a new --run") from None
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"{path}: cannot read it ({exc})") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CLIError(f"{path} is not valid JSON ({exc}); fix or remove it") from None
    if not isinstance(data, dict):
        raise CLIError(f"{path} is not a JSON object; fix or remove it")
    return data


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
        raise CLIError(f"run name {_short(name)!r}: {options.RUN_NAME_RULE}")
    if workspace.root.exists() and not workspace.root.is_dir():
        raise CLIError(f"workspace {workspace.root} is a file, not a folder")
    run_dir = workspace.run_dir(name)
    if args.resume and not run_dir.is_dir():
        known = ", ".join(sorted(p.name for p in workspace.runs_dir.glob("*") if p.is_dir())) or "none"
        raise CLIError(f"no run named {name!r} to resume in {workspace.runs_dir} (runs: {known})")

    from core.training.train import LOGGER_NAME, TrainError, train  # torch is imported here

    config = build_config(args, workspace, run_dir)
    if Path(config.data).exists() and not Path(config.data).is_dir():
        raise CLIError(f"--data {config.data} is a file, not a folder of breed folders")
    if not Path(config.data).is_dir():
        demo = workspace.dataset_dir("demo")
        offline = (f"--data {demo} (the demo set)" if demo.is_dir()
                   else "`ddpm-tui data demo` for an offline demo set")
        raise CLIError(f"dataset folder {shown(config.data)} does not exist; pass --data DIR, "
                       f"scrape one with `ddpm-tui scrape`, or try {offline}")
    quiet = args.quiet or rank != 0
    with _Display(name, quiet, LOGGER_NAME) as display:
        try:
            final = train(config, run_dir, progress=display.update, examples=args.examples and rank == 0)
        except TrainError as exc:
            raise CLIError(str(exc)) from None
        display.finish(final)
    state = final.get("state")
    message = final.get("message", "")
    if state == events.FAILED:
        print(f"ddpm-tui: training failed: {shown(message)}", file=sys.stderr)
        return 1
    if not quiet:
        display.console.print(f"[bold]{state}[/]: {shown_markup(message)}")
        display.console.print(f"run folder: {shown_markup(run_dir)}")
        if state == events.STOPPED:
            display.console.print(f"continue with: ddpm-tui train --run {name}")
    return 0


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


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
        self.last_fid = ""  # "  FID 4.8 @ 800" once --eval-every has scored the run
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
        from core.training.config import not_reported_by_caller

        handler.addFilter(not_reported_by_caller)  # a refused start is said once, by run()
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

    def finish(self, final: events.RunStatus) -> None:
        """Leave the bar showing where training ended, not the last phase it went through."""
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=final.get("step", 0),
                                 description=f"{final.get('state', 'done')} {self.run_name}")

    def update(self, event: events.ProgressEvent) -> None:
        if self.progress is None:
            return
        if not self._started:  # started on the first event: an early error prints nothing else
            self.progress.start()
            self._started = True
        kind = event.get("event")
        if kind == events.LOADING:
            if self.load_task is None:
                self.load_task = self.progress.add_task("loading images", total=event.get("total") or None,
                                                        info="", eta="")
            self.progress.update(self.load_task, completed=event.get("done", 0), total=event.get("total") or None)
        elif kind == events.STEP:
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
            # A session's first windows (after a resume too) say little of the speed yet.
            window = event.get("session_window", events.SETTLING_WINDOWS)
            settling = " (settling)" if window < events.SETTLING_WINDOWS else ""
            info += f"{event.get('images_per_s', 0):.1f} img/s{settling}{self.last_fid}"
            eta = event.get("eta_s")  # the trainer's: the earlier of the step limit and --max-time
            eta_text = f"ETA {_fmt_eta(eta)}{settling}" if isinstance(eta, (int, float)) else ""
            self.progress.update(self.task, completed=event["step"], total=event.get("total_steps"),
                                 info=info, eta=eta_text, description=f"train {self.run_name}")
        elif kind in (events.SAVING, events.SAMPLING, events.EVALUATING) and self.task is not None:
            self.progress.update(self.task, description=f"{kind} {self.run_name}")
        elif kind == events.EVAL and isinstance(event.get("fid"), float):
            self.last_fid = f"  FID {event['fid']:.3g} @ {event.get('step')}"
        # "wrote" and "bad_files" events also reach the log, which this display shows.


def _fmt_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
