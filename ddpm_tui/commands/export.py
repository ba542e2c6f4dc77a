"""`ddpm-tui export RUN_OR_CHECKPOINT`: the EMA (or --raw) weights as a ``.safetensors`` file
with the model and diffusion configs (and a conditional run's breeds) in its metadata.

The weights are those `sample` would draw with: the checkpoint's model is rebuilt (every
shape checked) and its state written, so `sample`, `eval` and `train --init-from` read the
file back bit for bit. Written atomically; an existing file is replaced only with --force.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ddpm_tui.commands._common import CLIError, add_command, add_ema_length_arg, add_source_arg


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers, "export", run,
        help="write a run's weights as .safetensors (readable without pickle)",
        description="Write the EMA weights (--raw: the trained weights) of a run's latest checkpoint, or of a "
        ".pt file, as a .safetensors file with the model and diffusion configs (and the breeds of a "
        "conditional run) in its metadata. sample, eval and train --init-from read it like a checkpoint.",
    )
    add_source_arg(p)
    p.add_argument("--raw", action="store_true", help="export the trained weights instead of the EMA weights")
    add_ema_length_arg(p)
    p.add_argument("--out", metavar="FILE",
                   help="file to write, ending in .safetensors (default: the run's exports/ folder, "
                        "or beside the checkpoint)")
    p.add_argument("--force", action="store_true", help="replace an existing file")


def default_out(ckpt_path: Path, run_dir: Path | None, step: int, weights: str) -> Path:
    """<run>/exports/<run>-step<N>-<ema|raw>.safetensors, or <checkpoint>-<ema|raw>.safetensors beside it."""
    from core.diffusion.safetensors_file import SUFFIX

    if run_dir is not None:
        return run_dir / "exports" / f"{run_dir.name}-step{step:07d}-{weights}{SUFFIX}"
    return ckpt_path.with_name(f"{ckpt_path.stem}-{weights}{SUFFIX}")


def run(args: argparse.Namespace, workspace) -> int:
    from core.diffusion.checkpoint import CheckpointError, build_model_from_checkpoint, load_checkpoint
    from core.diffusion.safetensors_file import SUFFIX, WeightsFileError, write_weights
    from core.training import runs
    from ddpm_tui.commands.sample import resolve_source

    ckpt_path, run_dir = resolve_source(args.source, workspace)
    out = Path(args.out).expanduser() if args.out else None
    if out is not None and out.suffix.lower() != SUFFIX:
        raise CLIError(f"--out {out}: give a file name ending in {SUFFIX} (nothing written)")
    if args.raw and args.ema_length is not None:
        raise CLIError("--ema-length picks one of the EMA averages; leave out --raw")
    try:
        ckpt = load_checkpoint(ckpt_path)
        use_ema = not args.raw and (bool(ckpt.get("ema")) or args.ema_length is not None)
        model, diffusion = build_model_from_checkpoint(ckpt, use_ema=use_ema, ema_length=args.ema_length)
    except CheckpointError as exc:
        raise CLIError(str(exc)) from None
    weights = "ema" if use_ema else "raw"
    step = int(ckpt.get("step") or 0)
    classes = [str(c) for c in ((ckpt.get("extra") or {}).get("classes") or [])]
    if not classes and run_dir is not None:
        classes = [str(c) for c in (runs.read_config(run_dir) or {}).get("classes") or []]
    out = out or default_out(ckpt_path, run_dir, step, weights + (f"{args.ema_length:g}" if args.ema_length else ""))
    if out.exists() and out.resolve() == ckpt_path.resolve():
        raise CLIError(f"--out {out} is the checkpoint being exported; never writing over it")
    try:
        write_weights(out, model.state_dict(), model_config=model.config.to_dict(),
                      diffusion_config=diffusion.config.to_dict(), weights=weights, step=step,
                      classes=classes if model.config.num_classes else [], overwrite=args.force)
    except WeightsFileError as exc:
        raise CLIError(f"{out}: {exc}") from None
    note = "" if use_ema or args.raw else " (this checkpoint has no EMA weights)"
    print(f"exported the {'EMA' if use_ema else 'raw'} weights{note} of {ckpt_path} (step {step}) to {out}")
    return 0
