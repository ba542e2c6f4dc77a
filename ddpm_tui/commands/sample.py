"""`ddpm-tui sample RUN_OR_CHECKPOINT`: draw images from a run's latest checkpoint or a .pt file.

EMA weights by default (--raw for the trained weights), any sampler of
core.diffusion.registry's table (DDIM by default), a breed and a guidance scale for
class-conditional runs. Writes one grid PNG (and, with --individual, one PNG per image)
and prints the paths.
"""

from __future__ import annotations

import argparse
import re
import secrets
import sys
from pathlib import Path

from core.diffusion.registry import DEFAULT_GUIDANCE, MAX_IMAGES, MAX_SEED
from ddpm_tui.commands._common import (CLIError, add_command, add_sampling_args, add_source_arg, bounded,
                                       positive_int)

GRID_LIMIT = 1024  # images kept for the grid PNG; --individual writes every image as it is drawn
# Never written over, with or without --force: what a run or a dataset cannot lose.
PROTECTED_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".json", ".jsonl", ".log", ".sqlite")


_seed = bounded(int, low=0, high=MAX_SEED)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers, "sample", run,
        help="draw images from a run or a checkpoint file",
        description="Draw images from a run's latest checkpoint (by run name) or from a .pt file. "
        "Writes a grid PNG (default: into the run's samples/ folder) and prints the paths.",
    )
    add_source_arg(p)
    p.add_argument("--raw", action="store_true", help="use the trained weights instead of the EMA weights")
    add_sampling_args(p)
    p.add_argument("--n", type=bounded(int, low=1, high=MAX_IMAGES), default=16,
                   help=f"number of images, at most {MAX_IMAGES} (default: 16)")
    p.add_argument("--batch-size", type=positive_int, default=32,
                   help="images drawn at a time; any --n runs in this much memory (default: 32)")
    p.add_argument("--seed", type=_seed, default=None, help="random seed (default: a new one, printed)")
    p.add_argument("--breed", metavar="NAME", help="draw this breed (class-conditional runs)")
    p.add_argument("--out", metavar="PATH", help="grid PNG to write (default: the run's samples/ folder)")
    p.add_argument("--individual", action="store_true", help="also write one PNG per image")
    p.add_argument("--force", action="store_true",
                   help="replace an existing file that is not an image ddpm-tui wrote (never a checkpoint, "
                        "config or dataset image)")
    p.add_argument("--nrow", type=positive_int, default=None, help="images per grid row (default: square-ish)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar; print only the paths written")


def resolve_source(source: str, workspace) -> tuple[Path, Path | None]:
    """(checkpoint path, run folder or None) for a run name or a .pt path."""
    from core.training import runs

    path = Path(source).expanduser()
    if path.is_file():
        run_dir = None
        if path.parent.name == runs.CHECKPOINTS_DIR and (path.parent.parent / runs.CONFIG_FILE).is_file():
            run_dir = path.parent.parent
        return path, run_dir
    if path.is_dir() and (path / runs.CHECKPOINTS_DIR).is_dir():
        run_dir = path
    else:
        run_dir = workspace.run_dir(source) if "/" not in source and source not in (".", "..") else None
    if run_dir is None or not run_dir.is_dir():
        known = ", ".join(r.name for r in runs.list_runs(workspace.runs_dir)) or "none"
        raise CLIError(f"{source!r} is neither a checkpoint file nor a run in {workspace.runs_dir} (runs: {known})")
    ckpt = runs.latest_checkpoint(run_dir)
    if ckpt is None:
        raise CLIError(f"run {run_dir.name!r} has no checkpoint yet (it saves every --save_frequency epochs)")
    return ckpt, run_dir


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:40] or "x"


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except (ValueError, OSError):
        return False
    return True


def check_output(path: Path, *, force: bool, workspace, checkpoint: Path) -> None:
    """Refuse to write ``path`` over anything the user would lose (issue 12): a checkpoint,
    a config, a dataset image never; any other existing file that is not an image ddpm-tui
    wrote only with --force."""
    from PIL import Image

    from core.io.grid import written_by_ddpm_tui
    from core.training.runs import CHECKPOINTS_DIR

    known = Image.registered_extensions()
    if path.suffix.lower() in PROTECTED_SUFFIXES or path.suffix.lower() not in known:
        raise CLIError(f"--out {path}: not an image file name; give one ending in .png (nothing written)")
    for folder in (workspace.data_dir, workspace.quarantine_dir):
        if _inside(path, folder):
            raise CLIError(f"--out {path} is inside the dataset folder {folder}; never writing over dataset images")
    if path.parent.name == CHECKPOINTS_DIR:
        raise CLIError(f"--out {path} is inside a run's checkpoints folder; write samples elsewhere")
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir():
        raise CLIError(f"--out {path} is a folder; give a file name such as {path / 'dogs.png'}")
    try:
        if path.samefile(checkpoint):
            raise CLIError(f"--out {path} is the checkpoint being sampled; never writing over it")
    except OSError:
        pass
    if not path.is_file():
        raise CLIError(f"--out {path} exists and is not a regular file (nothing written)")
    if not written_by_ddpm_tui(path) and not force:
        raise CLIError(f"{path} exists and is not an image ddpm-tui wrote; use --force to replace it (nothing written)")


def _load(args: argparse.Namespace, workspace):
    """(checkpoint path, run folder or None, device, Sampleable) for the command line's source."""
    from core.training import runs
    from core.diffusion.checkpoint import CheckpointError
    from core.diffusion.device import resolve_device
    from core.diffusion.sampling import load_for_sampling

    ckpt_path, run_dir = resolve_source(args.source, workspace)
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if args.raw and args.ema_length is not None:
        raise CLIError("--ema-length picks one of the EMA averages; leave out --raw")
    try:
        loaded = load_for_sampling(ckpt_path, "raw" if args.raw else "ema", args.ema_length)
    except CheckpointError as exc:
        raise CLIError(str(exc)) from None
    if not loaded.classes and run_dir is not None:
        loaded.classes = [str(c) for c in (runs.read_config(run_dir) or {}).get("classes") or []]
    return ckpt_path, run_dir, device, loaded


def _request(args: argparse.Namespace, loaded, ckpt_path: Path):
    """(SampleRequest, each image's label or None) from the command line; a new seed if none."""
    from core.diffusion.sampling import SampleRequest, resolve_labels

    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    try:
        guidance = args.guidance if args.guidance is not None else DEFAULT_GUIDANCE
        request = SampleRequest(n=args.n, sampler=args.sampler, steps=args.steps, eta=args.eta,
                                guidance=guidance, breed=args.breed, seed=seed,
                                weights="raw" if args.raw else "ema", amp=args.amp, batch_size=args.batch_size,
                                ema_length=args.ema_length)
        return request, resolve_labels(request, loaded.model.config.num_classes, loaded.classes)
    except ValueError as exc:
        raise CLIError(f"{ckpt_path}: {exc}") from None


def _grid_path(args: argparse.Namespace, request, labels, loaded, ckpt_path: Path, run_dir: Path | None) -> Path:
    """--out, or a name in the run's samples/ folder that says what was drawn."""
    from core.diffusion.sampling import sampler_tag
    from core.training import runs

    if args.out:
        out = Path(args.out).expanduser()
        return out.with_suffix(".png") if out.suffix == "" and not out.is_dir() else out
    if args.breed is not None:
        names = loaded.classes or [str(i) for i in range(loaded.model.config.num_classes)]
        breed_tag = f"_{_slug(names[labels[0]])}" if labels else ""
    else:
        breed_tag = "_breeds" if labels is not None else ""
    folder = runs.samples_dir(run_dir) if run_dir is not None else ckpt_path.parent
    g = f"_g{request.guidance:g}" if labels is not None and request.guidance != 1.0 else ""
    tag = sampler_tag(request, loaded.diffusion.max_sampler_steps)
    weights = loaded.weights + (f"{args.ema_length:g}" if args.ema_length is not None else "")
    return folder / f"sample_step{loaded.step:07d}_{weights}_{tag}{breed_tag}{g}_seed{request.seed}.png"


def _draw(args: argparse.Namespace, loaded, request, device, out: Path, individual: list[Path]) -> list[Path]:
    """Generate with a progress bar; write the grid and each image (as drawn: one batch in
    memory) to temp names, published together once all are written; the paths written."""
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    from core.diffusion.sampling import generate
    from core.io.atomic import StagedFiles
    from core.io.grid import grid_writer

    grid_parts: list[torch.Tensor] = []
    kept = 0
    bar = Progress("[bold]{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), disable=args.quiet)
    with bar, StagedFiles() as files:
        task = bar.add_task("denoising", total=None)
        for step in generate(loaded, request, device=device):
            bar.update(task, total=step.total * step.batches, completed=step.batch * step.total + step.index + 1)
            if step.images is None:
                continue
            if kept < GRID_LIMIT:
                grid_parts.append(step.images[: GRID_LIMIT - kept])
                kept += len(grid_parts[-1])
            for i, image in enumerate(step.images if individual else ()):
                _stage(files, individual[step.first + i], grid_writer(image[None], out, padding=0))
        _stage(files, out, grid_writer(torch.cat(grid_parts), out, nrow=args.nrow))
        published = files.publish()
    return [published[-1], *published[:-1]]  # the grid first, as before


class _WriteError(Exception):
    """A file of the set could not be written; nothing of the set was left behind."""

    def __init__(self, path: Path, exc: OSError) -> None:
        super().__init__(f"cannot write {path}: {exc.strerror or exc}")


def _stage(files, path: Path, write) -> None:
    try:
        files.stage(path, write)
    except OSError as exc:
        raise _WriteError(path, exc) from None


def run(args: argparse.Namespace, workspace) -> int:
    from core.diffusion.sampling import SamplingError, ignored_settings, sampler_tag

    ckpt_path, run_dir, device, loaded = _load(args, workspace)
    request, labels = _request(args, loaded, ckpt_path)
    out = _grid_path(args, request, labels, loaded, ckpt_path, run_dir)
    individual = [out.with_name(f"{out.stem}_{i:03d}{out.suffix}") for i in range(args.n)] if args.individual else []
    for path in [out, *individual]:
        check_output(path, force=args.force, workspace=workspace, checkpoint=ckpt_path)

    for note in ignored_settings(args.sampler, labels is not None, eta=args.eta, guidance=args.guidance):
        print(f"note: {note}", file=sys.stderr)
    if not args.quiet:
        guidance = request.guidance if labels is not None else 1.0
        print(f"sampling {args.n} image(s) from {ckpt_path} (step {loaded.step}, {loaded.weights_note} weights), "
              f"{sampler_tag(request, loaded.diffusion.max_sampler_steps)}, seed {request.seed}"
              + (f", guidance {guidance:g}" if labels is not None else ""))
    try:
        paths = _draw(args, loaded, request, device, out, individual)
    except (SamplingError, ValueError) as exc:
        raise CLIError(f"{ckpt_path}: {exc}") from None
    except _WriteError as exc:
        what = f"the grid and {args.n} images" if individual else "the grid"
        raise CLIError(f"{exc}; nothing written ({what} are written all together or not at all)") from None
    except OSError as exc:
        raise CLIError(f"cannot write {exc.filename or out}: {exc.strerror or exc}") from None
    if args.n > GRID_LIMIT and not args.quiet:
        print(f"the grid shows the first {GRID_LIMIT} of {args.n} images" +
              ("" if args.individual else "; --individual writes every image"))
    for path in paths:
        print(path)
    return 0
