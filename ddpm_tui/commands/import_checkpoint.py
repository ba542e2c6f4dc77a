"""`ddpm-tui import-checkpoint model_state.pth`: wrap a state dict written by the train.py of
dogs-image-generator-DDPM (the original project) into a new run (config.json + checkpoints/last.pt, EMA = the weights), so it can be
sampled with `ddpm-tui sample RUN` and fine-tuned with `ddpm-tui train --run RUN`.
`import-seed`, its former name, is still accepted."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from core.diffusion.registry import SCHEDULE_NAMES
from ddpm_tui.commands._common import RUN_NAME_RE, CLIError, add_command


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers, "import-checkpoint", run,
        aliases=["import-seed"],  # its former name
        help="turn the original project's model_state.pth into a run",
        description="Wrap a model_state.pth written by the train.py of dogs-image-generator-DDPM (the "
        "original project) into a new run, so it can be sampled and fine-tuned. The original saved only "
        "the weights: give the --T and --schedule it was trained with. (Formerly import-seed.)",
    )
    p.add_argument("state_dict", metavar="MODEL_STATE.pth", help="the original's saved state dict")
    p.add_argument("--run", metavar="NAME", help="name of the new run (default: imported-<timestamp>)")
    p.add_argument("--T", type=int, default=1000, help="diffusion steps the original was trained with (default: 1000)")
    p.add_argument("--schedule", choices=SCHEDULE_NAMES, default="linear",
                   help="beta schedule the original was trained with (default: linear)")
    p.add_argument("--data", metavar="DIR", help="dataset to record for fine-tuning (default: WORKSPACE/data/dogs)")


def load_original_state_dict(path: Path) -> dict:
    """The tensors of the original's ``model_state.pth``; CLIError naming the file otherwise."""
    import torch

    from core.diffusion.checkpoint import CheckpointError, safe_torch_load

    try:
        obj = safe_torch_load(path)
    except CheckpointError as exc:
        reason = str(exc)
        if reason.startswith(("no such file", "refused")):
            raise CLIError(f"{path}: {reason}") from None
        if reason.startswith("not a PyTorch checkpoint file"):
            reason = reason.replace("checkpoint file", "state dict", 1)
        else:
            reason = f"not a PyTorch state dict ({reason})"
        raise CLIError(f"{path}: {reason}") from None
    if isinstance(obj, dict) and obj.get("format") == "ddpm-tui-checkpoint":
        raise CLIError(f"{path}: already a ddpm-tui checkpoint; sample or train it directly")
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CLIError(f"{path}: not a state dict of the original project (expected a dict of tensors from its train.py)")
    return obj


def run(args: argparse.Namespace, workspace) -> int:
    from core.training import runs
    from core.diffusion.checkpoint import CheckpointError, save_checkpoint
    from core.diffusion.process import DiffusionConfig
    from core.diffusion.ema import EMA
    from core.training.train import TrainConfig
    from core.diffusion.unet import count_parameters, from_original_state_dict

    name = args.run or time.strftime("imported-%Y%m%d-%H%M%S")
    if not RUN_NAME_RE.match(name):
        raise CLIError(f"run name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
    run_dir = workspace.run_dir(name)
    if run_dir.exists():
        raise CLIError(f"run {name!r} already exists in {workspace.runs_dir}; pick another --run")
    try:
        diffusion_config = DiffusionConfig(T=args.T, schedule=args.schedule)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    source = Path(args.state_dict).expanduser().resolve()
    state = load_original_state_dict(source)
    try:
        model = from_original_state_dict(state)
    except ValueError as exc:
        raise CLIError(f"{source}: {exc}") from None
    del state
    data = str(Path(args.data).expanduser().resolve()) if args.data else str(workspace.dataset_dir())
    config = TrainConfig(data=data, run=name, preset="classic", image_size=model.config.image_size,
                         schedule=args.schedule, T=args.T, cache_dir=str(workspace.cache_dir))

    run_dir.mkdir(parents=True)
    try:
        save_checkpoint(
            runs.checkpoints_dir(run_dir) / runs.LAST_CHECKPOINT,
            model_config=model.config, diffusion_config=diffusion_config, model_state=model.state_dict(),
            ema_state=EMA(model, decay=config.ema_decay).state_dict(), optimizer_state=None, step=0, epoch=0,
            extra={"imported_from": str(source), "classes": [], "pos": 0},
        )
        runs.write_config(run_dir, {**config.to_dict(), "model": model.config.to_dict(),
                                    "diffusion": diffusion_config.to_dict(), "classes": [],
                                    "imported_from": str(source)})
        runs.write_status(run_dir, state="stopped", step=0, epoch=0,
                          message=f"imported from {source.name}; sample it or continue with "
                                  f"`ddpm-tui train --run {name}`")
    except (CheckpointError, OSError) as exc:
        shutil.rmtree(run_dir, ignore_errors=True)  # the folder this command just made, nothing else
        raise CLIError(f"could not write run {name!r}: {exc}") from None
    print(f"imported {source} ({count_parameters(model):,} parameters, T={args.T}, {args.schedule}) "
          f"as run {name!r}: {run_dir}")
    print(f"sample: ddpm-tui sample {name}    fine-tune: ddpm-tui train --run {name} --data DIR")
    return 0
