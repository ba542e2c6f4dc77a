"""Sample quality per CPU minute: our recipes against lucidrains' denoising-diffusion-pytorch.

    python -m bench.quality [--minutes 10] [--data DIR] [--n 500] [--image-size 32]
                            [--arms classic,fast,peer] [--sweep] [--out DIR] [--smoke]

Arms train one after another for the same wall-clock minutes on this machine, then draw
``--n`` samples each, scored against the training images with the evaluation's FID, KID and
precision/recall (core.quality.evaluate; dataset features unless Inception weights are on disk):
- ``classic``: the product's trainer with ``--recipe classic`` (the original project's training;
  ``seed`` is its former name) on the ``small`` preset (the issue's measured baseline, batch 16);
- ``fast``: the product's trainer with ``--recipe fast`` on the ``res-small`` preset;
  ``RECIPE@PRESET`` picks another network (e.g. ``fast@res-tiny``); ``~LR`` after an arm sets
  its learning rate (``fast~6e-4``, ``peer~3e-4``: a learning-rate sweep, ours and the peer's alike);
- ``peer``: ``Unet(dim=32, dim_mults=(1, 2, 4))`` in its ``GaussianDiffusion`` with the
  README's defaults (v prediction, sigmoid schedule, T=1000), batch 32, the README Trainer's
  Adam (lr 8e-5, betas 0.9/0.99), gradient clipping at 1 and EMA (0.995 every 10 steps) as
  its Trainer does; same images, no flips (our arms run with --no-flip too).
Ours sample from the EMA weights with DDIM-50 through the product's sampling; the peer with
its DDIM (sampling_timesteps=50). ``--sweep`` adds FID against sampling steps (10, 20, 50,
100) for each sampler on the ``fast`` arm's model. The peer needs the ``bench`` extra
(``pip install -e '.[bench]'``); nothing outside bench/ imports it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from core.diffusion.registry import current_name

CLASSIC_PRESET = "small"
FAST_PRESET = "res-small"
DEFAULT_ARMS = "classic,fast,peer"
SWEEP_STEPS = (10, 20, 50, 100)
PEER = {"dim": 32, "dim_mults": (1, 2, 4), "batch": 32, "lr": 8e-5, "betas": (0.9, 0.99),
        "grad_clip": 1.0, "ema_decay": 0.995, "ema_every": 10}


class BenchError(Exception):
    """Something the user can fix; one line."""


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str  # as given on the command line
    recipe: str  # "classic" | "fast" | "peer"
    preset: str | None  # our network (None for the peer)
    lr: float | None = None  # "~LR" on the command line: the arm's learning rate instead of its recipe's

    @property
    def slug(self) -> str:
        """The arm's name as a run and file name."""
        return self.name.replace("@", "-").replace("~", "-lr")


def parse_arms(text: str, *, smoke: bool = False) -> list[Arm]:
    """``smoke``: the tiny presets by default (plumbing checks, not figures). A recipe arm
    is any recipe of core.training.options.RECIPES (a recipe without its own default preset
    takes the fast arm's)."""
    from core.training.options import RECIPES

    defaults = {"classic": "tiny", "fast": "res-tiny"} if smoke else {"classic": CLASSIC_PRESET, "fast": FAST_PRESET}
    arms = []
    for spec in (s.strip() for s in text.split(",")):
        if not spec:
            continue
        head, tilde, lr_text = spec.partition("~")
        lr = None
        if tilde:
            try:
                lr = float(lr_text)
            except ValueError:
                lr = -1.0
            if not (lr > 0 and lr < 1):
                raise BenchError(f"arm {spec!r}: the learning rate after '~' must be a number in (0, 1)")
        recipe, _, preset = head.partition("@")
        if current_name(recipe) != recipe:  # a former name ("seed"): the arm is named as today
            recipe = current_name(recipe)
            spec = recipe + spec[len(head.partition("@")[0]):]
        if recipe == "peer":
            if preset:
                raise BenchError(f"arm {spec!r}: the peer's network is fixed (Unet(dim=32, dim_mults=(1, 2, 4)))")
            arms.append(Arm(spec, "peer", None, lr))
        elif recipe in RECIPES:  # any recipe of core.training.options (classic, fast, edm, ...)
            from core.diffusion.unet import PRESETS

            preset = preset or defaults.get(recipe, defaults["fast"])
            if preset not in PRESETS:
                raise BenchError(f"arm {spec!r}: unknown preset {preset!r}; known: {', '.join(PRESETS)}")
            arms.append(Arm(spec, recipe, preset, lr))
        else:
            raise BenchError(f"unknown arm {spec!r}; use {', '.join(RECIPES)}, peer, RECIPE@PRESET, each optionally ~LR")
    if not arms:
        raise BenchError("no arms given")
    if len({a.name for a in arms}) != len(arms):
        raise BenchError(f"an arm is listed twice in {text!r}")
    return arms


def peer_available() -> bool:
    try:
        import denoising_diffusion_pytorch  # noqa: F401
        import ema_pytorch  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------- scoring


class Scorer:
    """The one place that scores samples: core.quality.evaluate's real-side features, built once."""

    def __init__(self, data: Path, image_size: int, cache_dir: Path, *, features: str, feature_seconds: float | None):
        from core.quality.evaluate import EvalError, Evaluator

        try:
            self.evaluator = Evaluator(data, image_size=image_size, features=features, cache_dir=cache_dir,
                                       feature_seconds=feature_seconds)
        except EvalError as exc:
            raise BenchError(str(exc)) from None
        self.features = self.evaluator.features

    def __call__(self, samples: torch.Tensor) -> dict[str, float]:
        """samples: (N, C, H, W) float in [-1, 1]."""
        return self.evaluator.score(samples)


# ---------------------------------------------------------------------------- our arms


def _train_config(arm: Arm, data: Path, args) -> dict[str, Any]:
    cfg: dict[str, Any] = {"data": str(data), "run": arm.slug, "preset": arm.preset, "image_size": args.image_size,
                           "flip": False, "device": "cpu", "max_time": args.minutes * 60, "seed": args.seed}
    if args.smoke:
        cfg.update(max_steps=args.smoke_steps, batch_size=4, samples=0, log_every=1)
    from core.training.options import resolve

    # As `ddpm-tui train --recipe R` does: the recipe's values, then the explicit ones.
    if arm.lr is not None:
        cfg["lr"] = arm.lr
    return resolve({**cfg, "recipe": arm.recipe})


def train_ours(arm: Arm, data: Path, run_dir: Path, args) -> dict[str, Any]:
    from core.diffusion.checkpoint import load_checkpoint
    from core.training.runs import LAST_CHECKPOINT, checkpoints_dir
    from core.training.train import TrainConfig, TrainError, train

    try:
        config = TrainConfig.from_dict(_train_config(arm, data, args))
        config.validate()
        status = train(config, run_dir)
    except (TrainError, ValueError) as exc:
        raise BenchError(f"arm {arm.name}: {exc}") from None
    if status.get("state") == "failed":
        raise BenchError(f"arm {arm.name}: training failed: {status.get('message')}")
    path = checkpoints_dir(run_dir) / LAST_CHECKPOINT
    ckpt = load_checkpoint(path)
    extra = ckpt.get("extra") or {}
    seconds = float(extra.get("train_seconds") or 0.0)
    images = int(extra.get("images_seen") or 0)
    return {"checkpoint": path, "steps": int(ckpt["step"]), "batch": int(extra.get("batch_size") or 0),
            "seconds": seconds, "images_per_s": images / seconds if seconds > 0 else float("nan"),
            "parameters": sum(v.numel() for v in ckpt["model"].values())}


def sample_ours(checkpoint: Path, n: int, sampler: str, steps: int, seed: int) -> torch.Tensor:
    """n images (N, C, H, W) in [-1, 1] from the EMA weights, through the product's sampling."""
    from core.diffusion.sampling import SampleRequest, generate_images

    request = SampleRequest(n=n, sampler=sampler, steps=steps, seed=seed, weights="ema", unconditional=True)
    images, _weights = generate_images(str(checkpoint), request)
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # uint8 (N, H, W, C) -> [-1, 1]


def our_samplers() -> tuple[str, ...]:
    from core.diffusion.registry import SAMPLER_SPECS

    return tuple(SAMPLER_SPECS)


# ---------------------------------------------------------------------------- the peer


def load_images(data: Path, image_size: int) -> torch.Tensor:
    """The training images as (N, 3, S, S) uint8, decoded as our trainer decodes them."""
    from core.data.dataset import DataOptions, ImageFolderDataset

    return ImageFolderDataset(data, DataOptions(image_size=image_size, flip=False)).images


def train_peer(images: torch.Tensor, seconds: float, args, lr: float | None = None) -> dict[str, Any]:
    """The peer's Trainer loop (Adam, clipping, EMA), bounded by wall-clock time."""
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet
    from ema_pytorch import EMA

    from core.diffusion.device import autocast_context, autocast_dtype

    torch.manual_seed(args.seed)
    model = Unet(dim=PEER["dim"], dim_mults=PEER["dim_mults"])
    diffusion = GaussianDiffusion(model, image_size=args.image_size, timesteps=1000,
                                  sampling_timesteps=args.sample_steps)
    opt = torch.optim.Adam(diffusion.parameters(), lr=lr or PEER["lr"], betas=PEER["betas"])
    ema = EMA(diffusion, beta=PEER["ema_decay"], update_every=PEER["ema_every"])
    dtype = autocast_dtype("cpu", args.peer_amp)
    batch = 4 if args.smoke else PEER["batch"]
    gen = torch.Generator().manual_seed(args.seed)
    steps = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds and not (args.smoke and steps >= args.smoke_steps):
        idx = torch.randint(0, len(images), (batch,), generator=gen)
        x = images[idx].float() / 255.0  # the peer normalises [0, 1] -> [-1, 1] itself
        with autocast_context("cpu", dtype):
            loss = diffusion(x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(diffusion.parameters(), PEER["grad_clip"])
        opt.step()
        opt.zero_grad()
        ema.update()
        steps += 1
    elapsed = time.monotonic() - start
    return {"ema": ema.ema_model.eval(), "steps": steps, "batch": batch, "seconds": elapsed,
            "images_per_s": steps * batch / elapsed if elapsed > 0 else float("nan"),
            "parameters": sum(p.numel() for p in model.parameters())}


def sample_peer(diffusion, n: int, seed: int, batch: int = 100) -> torch.Tensor:
    torch.manual_seed(seed)
    out = [diffusion.sample(batch_size=min(batch, n - lo)) for lo in range(0, n, batch)]
    return torch.cat(out).float() * 2 - 1  # [0, 1] -> [-1, 1]


# ---------------------------------------------------------------------------- the run


def ensure_data(args, work: Path) -> Path:
    if args.data:
        data = Path(args.data).expanduser()
        if not data.is_dir():
            raise BenchError(f"--data {data}: not a folder")
        return data
    from core.data.demo import make_demo_dataset

    data = work / "demo"
    per_class = 6 if args.smoke else 300
    print(f"demo dataset: {per_class} images per class into {data}", flush=True)
    make_demo_dataset(data, per_class=per_class, size=max(args.image_size, 32), seed=args.seed)
    return data


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(_fmt(r.get(c, "")).rjust(w) for c, w in zip(columns, widths)))


def run(args) -> dict[str, Any]:
    from core.io.grid import save_grid

    arms = parse_arms(args.arms, smoke=args.smoke)
    if any(a.recipe == "peer" for a in arms) and not peer_available():
        raise BenchError("the peer arm needs denoising-diffusion-pytorch: pip install -e '.[bench]'")
    if args.sweep and not any(a.recipe == "fast" for a in arms):
        raise BenchError("--sweep needs a fast arm (its model is the one swept)")
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    data = ensure_data(args, work)
    scorer = None
    if not args.no_score:  # before any training: a missing metric must not cost 30 minutes
        scorer = Scorer(data, args.image_size, work / "cache", features=args.features,
                        feature_seconds=2.0 if args.smoke else None)
        print(f"scoring: {scorer.features} features against the images in {data}", flush=True)
    print(f"arms: {', '.join(a.name for a in arms)}; {args.minutes:g} min each on {torch.get_num_threads()} "
          f"threads; {args.n} samples each (DDIM-{args.sample_steps})", flush=True)

    rows: list[dict[str, Any]] = []
    fast_ckpt = None
    peer_images = None
    for arm in arms:
        print(f"== {arm.name}: training", flush=True)
        if arm.recipe == "peer":
            if peer_images is None:
                peer_images = load_images(data, args.image_size)
            result = train_peer(peer_images, args.minutes * 60, args, arm.lr)
            print(f"   {result['steps']} steps; sampling {args.n}", flush=True)
            samples = sample_peer(result.pop("ema"), args.n, args.seed)
            network = f"Unet(dim={PEER['dim']}, dim_mults={PEER['dim_mults']})"
        else:
            run_dir = work / "runs" / arm.slug
            if run_dir.exists():  # a fresh run each time: no resuming an earlier benchmark
                shutil.rmtree(run_dir)
            result = train_ours(arm, data, run_dir, args)
            print(f"   {result['steps']} steps; sampling {args.n}", flush=True)
            samples = sample_ours(result.pop("checkpoint"), args.n, "ddim", args.sample_steps, args.seed)
            if arm.recipe == "fast" and fast_ckpt is None:
                fast_ckpt = run_dir / "checkpoints" / "last.pt"
            network = arm.preset
        grid = save_grid(samples[:64], out / f"{arm.slug}.png")
        row = {"arm": arm.name, "network": network, **result, "grid": str(grid)}
        if scorer is not None:
            row.update(scorer(samples))
        rows.append(row)
        print(f"   {json.dumps({k: v for k, v in row.items() if k != 'grid'}, default=str)}", flush=True)

    sweep_rows: list[dict[str, Any]] = []
    if args.sweep and fast_ckpt is not None:
        from core.diffusion.registry import sampler_spec

        # samplers that run all T steps (ddpm) only with --sweep-ddpm
        samplers = [s for s in our_samplers() if sampler_spec(s).uses_steps or args.sweep_ddpm]
        for sampler in samplers:
            for steps in args.sweep_steps:
                t0 = time.perf_counter()
                samples = sample_ours(fast_ckpt, args.sweep_n or args.n, sampler, steps, args.seed)
                row = {"sampler": sampler, "steps": steps, "seconds": time.perf_counter() - t0}
                if scorer is not None:
                    row.update(scorer(samples))
                sweep_rows.append(row)
                print(f"   sweep {json.dumps(row)}", flush=True)
                if not sampler_spec(sampler).uses_steps:
                    break  # it runs all T steps whatever is asked

    print()
    columns = ["arm", "network", "parameters", "steps", "batch", "images_per_s"]
    if scorer is not None:
        columns += ["fid", "kid", "precision", "recall"]
        by_name = {r["arm"]: r for r in rows}
        for ref in ("peer", "classic"):
            if ref in by_name:
                for r in rows:
                    r[f"fid/{ref}"] = r["fid"] / by_name[ref]["fid"] if by_name[ref]["fid"] > 0 else float("nan")
                columns.append(f"fid/{ref}")
    print_table(rows, columns)
    if sweep_rows:
        print("\nFID against sampling steps, fast arm's EMA model:")
        print_table(sweep_rows, ["sampler", "steps", "seconds"] + (["fid", "kid"] if scorer is not None else []))
    print(f"\ngrids: {', '.join(r['grid'] for r in rows)}")
    results = {"arms": rows, "sweep": sweep_rows, "minutes": args.minutes, "n": args.n, "sweep_n": args.sweep_n or args.n,
               "image_size": args.image_size, "data": str(data), "torch": torch.__version__,
               "threads": torch.get_num_threads(), "features": scorer.features if scorer else None}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="training wall-clock minutes per arm (default 10)")
    p.add_argument("--data", default="", help="folder of class folders (default: the demo set, generated)")
    p.add_argument("--n", type=int, default=500, help="samples per arm (default 500)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--arms", default=DEFAULT_ARMS, help=f"comma-separated: classic, fast, peer, RECIPE@PRESET; ~LR after an arm sets its "
                   f"learning rate, e.g. fast~6e-4,peer~3e-4 (default {DEFAULT_ARMS})")
    p.add_argument("--sample-steps", type=int, default=50, help="DDIM steps for each arm's samples (default 50)")
    p.add_argument("--sweep", action="store_true", help="also FID against sampling steps for every sampler (fast arm)")
    p.add_argument("--sweep-steps", default=",".join(map(str, SWEEP_STEPS)))
    p.add_argument("--sweep-ddpm", action="store_true", help="include ddpm (all T steps: slow) in --sweep")
    p.add_argument("--sweep-n", type=int, default=0, help="samples per sweep point (default: --n)")
    p.add_argument("--features", default="auto", help="feature net for the metrics: auto, inception, dataset")
    p.add_argument("--peer-amp", choices=("auto", "bf16", "off"), default="auto",
                   help="the peer's autocast (default auto: bf16 where the CPU has it, as our arms)")
    p.add_argument("--no-score", action="store_true", help="train, sample and save grids only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="output folder (default: a new temporary folder)")
    p.add_argument("--smoke", action="store_true", help="seconds, not minutes: a few steps, a few samples")
    p.add_argument("--smoke-steps", type=int, default=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.sweep_steps = tuple(int(s) for s in args.sweep_steps.split(",") if s.strip())
    except ValueError:
        p.error(f"--sweep-steps: {args.sweep_steps!r} is not a list of integers")
    if args.smoke:
        args.minutes = min(args.minutes, 0.5)
        args.n = min(args.n, 12)
        args.sample_steps = min(args.sample_steps, 3)
        args.sweep_steps = (2,)
        args.image_size = 16
    if args.minutes <= 0 or args.n < 2 or args.sample_steps < 1 or any(s < 1 for s in args.sweep_steps):
        p.error("--minutes must be > 0, --n >= 2, --sample-steps and --sweep-steps >= 1")
    if not args.out:
        args.out = tempfile.mkdtemp(prefix="ddpm-tui-quality-")
    try:
        run(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
