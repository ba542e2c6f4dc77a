"""`ddpm-tui sample RUN_OR_CHECKPOINT`: draw images from a run's latest checkpoint or a .pt file.

EMA weights by default (--raw for the trained weights), DDIM or DDPM, a breed and a
guidance scale for class-conditional runs. Writes one grid PNG (and, with --individual,
one PNG per image) and prints the paths.
"""

from __future__ import annotations

import argparse
import re
import secrets
from pathlib import Path
from typing import Any

from ddpm_tui.commands._common import CLIError, add_workspace_arg
from ddpm_tui.commands.train import bounded


_positive_int = bounded(int, low=1)
_eta = bounded(float, low=0.0, high=1.0)
_guidance = bounded(float, low=0.0, high=100.0)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sample",
        help="draw images from a run or a checkpoint file",
        description="Draw images from a run's latest checkpoint (by run name) or from a .pt file. "
        "Writes a grid PNG (default: into the run's samples/ folder) and prints the paths.",
    )
    add_workspace_arg(p)
    p.add_argument("source", metavar="RUN_OR_CHECKPOINT", help="a run name in the workspace or a checkpoint .pt path")
    p.add_argument("--raw", action="store_true", help="use the trained weights instead of the EMA weights")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim",
                   help="ddim (few steps, default) or ddpm (all T steps, as the seed)")
    p.add_argument("--steps", type=_positive_int, default=50, help="DDIM steps (default: 50; ddpm uses T)")
    p.add_argument("--eta", type=_eta, default=0.0, help="DDIM eta: 0 deterministic, 1 DDPM-like (default: 0)")
    p.add_argument("--n", type=_positive_int, default=16, help="number of images (default: 16)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a new one, printed)")
    p.add_argument("--breed", metavar="NAME", help="draw this breed (class-conditional runs)")
    p.add_argument("--guidance", type=_guidance, default=3.0,
                   help="classifier-free guidance scale for conditional runs (default: 3; 1 = plain conditional)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default: auto)")
    p.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto",
                   help="bf16 autocast where the device does it fast (default: auto)")
    p.add_argument("--out", metavar="PATH", help="grid PNG to write (default: the run's samples/ folder)")
    p.add_argument("--individual", action="store_true", help="also write one PNG per image")
    p.add_argument("--nrow", type=_positive_int, default=None, help="images per grid row (default: square-ish)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar; print only the paths written")
    p.set_defaults(func=run)


def resolve_source(source: str, workspace) -> tuple[Path, Path | None]:
    """(checkpoint path, run folder or None) for a run name or a .pt path."""
    from core import runs

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


def _breed_key(name: str) -> str:
    """'Golden Retriever', 'golden_retriever' and 'golden-retriever' name the same breed."""
    return re.sub(r"[\s_-]+", " ", name.strip().lower())


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:40] or "x"


def run(args: argparse.Namespace, workspace) -> int:
    import torch

    from core.checkpoint import CheckpointError, build_model_from_checkpoint, load_checkpoint
    from core.device import autocast_dtype, resolve_device
    from core.grid import save_grid
    from core.sampling import iter_ddim, iter_ddpm
    from core import runs

    ckpt_path, run_dir = resolve_source(args.source, workspace)
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    try:
        ckpt = load_checkpoint(ckpt_path)
        use_ema = not args.raw and bool(ckpt.get("ema"))
        model, diffusion = build_model_from_checkpoint(ckpt, use_ema=use_ema)
    except CheckpointError as exc:
        raise CLIError(str(exc)) from None
    step = int(ckpt.get("step", 0))
    extra = ckpt.get("extra") or {}
    classes = list(extra.get("classes") or [])
    if not classes and run_dir is not None:
        classes = list((runs.read_config(run_dir) or {}).get("classes") or [])
    del ckpt
    num_classes = model.config.num_classes

    labels: list[int] | None = None
    breed_tag = ""
    if args.breed is not None:
        if num_classes == 0:
            raise CLIError(f"{ckpt_path} is unconditional; --breed needs a run trained with --conditional")
        names = classes or [str(i) for i in range(num_classes)]
        matches = [i for i, b in enumerate(names) if _breed_key(b) == _breed_key(args.breed)]
        if not matches:
            raise CLIError(f"unknown breed {args.breed!r}; this run knows: {', '.join(names)}")
        labels = [matches[0]] * args.n
        breed_tag = f"_{_slug(names[matches[0]])}"
    elif num_classes:
        labels = [i % num_classes for i in range(args.n)]  # one of each breed, in order
        breed_tag = "_breeds"
    guidance = args.guidance if labels is not None else 1.0

    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    amp = autocast_dtype(device, args.amp)
    model = model.to(device)
    diffusion = diffusion.to(device)
    size = model.config.image_size
    shape = (args.n, model.config.in_channels, size, size)
    common: dict[str, Any] = dict(seed=seed, labels=labels, guidance=guidance, device=device, autocast=amp)
    if args.sampler == "ddim":
        steps = min(args.steps, diffusion.T)
        iterator = iter_ddim(model, diffusion, shape, steps=steps, eta=args.eta, **common)
        sampler_tag = f"ddim{steps}" + (f"-eta{args.eta:g}" if args.eta else "")
    else:
        steps = diffusion.T
        iterator = iter_ddpm(model, diffusion, shape, **common)
        sampler_tag = f"ddpm{steps}"

    if args.out:
        out = Path(args.out).expanduser()
        if out.is_dir():
            raise CLIError(f"--out {out} is a folder; give a file name such as {out / 'dogs.png'}")
        if out.suffix == "":
            out = out.with_suffix(".png")
    else:
        folder = runs.samples_dir(run_dir) if run_dir is not None else ckpt_path.parent
        weights = "ema" if use_ema else "raw"
        g = f"_g{guidance:g}" if labels is not None and guidance != 1.0 else ""
        out = folder / f"sample_step{step:07d}_{weights}_{sampler_tag}{breed_tag}{g}_seed{seed}.png"

    weights_note = "EMA" if use_ema else ("raw (no EMA in this checkpoint)" if not args.raw else "raw")
    if not args.quiet:
        print(f"sampling {args.n} image(s) from {ckpt_path} (step {step}, {weights_note} weights), "
              f"{sampler_tag}, seed {seed}" + (f", guidance {guidance:g}" if labels is not None else ""))
    final = None
    try:
        if args.quiet:
            for final in iterator:
                pass
        else:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

            with Progress("[bold]{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          TimeRemainingColumn()) as bar:
                task = bar.add_task("denoising", total=steps)
                for final in iterator:
                    bar.update(task, completed=final.index + 1)
    except torch.OutOfMemoryError:
        raise CLIError(f"out of memory on {device} sampling {args.n} images; try a smaller --n") from None
    assert final is not None
    images = final.x_t
    try:
        written = [save_grid(images, out, nrow=args.nrow)]
        if args.individual:
            for i in range(images.shape[0]):
                written.append(save_grid(images[i : i + 1], out.with_name(f"{out.stem}_{i:03d}{out.suffix}"), padding=0))
    except OSError as exc:
        raise CLIError(f"cannot write {out}: {exc.strerror or exc}") from None
    for path in written:
        print(path)
    return 0
