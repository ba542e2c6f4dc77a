"""Sample quality per CPU minute: our recipes against lucidrains' denoising-diffusion-pytorch.

    python -m bench.quality [--minutes 10] [--data SET|DIR | --suite SET,SET,...] [--n 500]
                            [--image-size 32] [--arms classic,fast,peer] [--peer-lrs LR,LR,...]
                            [--repeat K] [--ema-lengths L,L,...] [--sampler dpmpp2m] [--sample-steps 20]
                            [--sweep] [--out DIR] [--smoke]

Arms train one after another for the same wall-clock minutes on this machine, then draw
``--n`` samples each, scored against the training images with the evaluation's FID, KID and
precision/recall (core.quality.evaluate; dataset features unless Inception weights are on disk).
An arm is ``RECIPE@PRESET~LR/BATCH``, each part after the recipe optional:
- ``RECIPE``: any recipe of core.training.options.RECIPES, trained by the product's trainer as
  ``ddpm-tui train --recipe RECIPE`` does; ``classic`` (the original project's training; ``seed``
  is its former name) defaults to the ``small`` preset (the issue's measured baseline, batch 16),
  every other recipe to ``res-small``; ``@PRESET`` picks another network (``fast@res-tiny``);
- ``peer``: ``Unet(dim=32, dim_mults=(1, 2, 4))`` in its ``GaussianDiffusion`` with the
  README's defaults (v prediction, sigmoid schedule, T=1000), batch 32, the README Trainer's
  Adam (lr 8e-5, betas 0.9/0.99), gradient clipping at 1 and EMA (0.995 every 10 steps) as
  its Trainer does; same images, no flips (our arms run with --no-flip too);
- ``~LR`` sets an arm's learning rate, ``/BATCH`` its batch (``fast~6e-4/64``, ``peer~3e-4/64``);
  ``+OPTION=VALUE`` (repeatable) any other training option of ours (``fast+ema_kind=exp``).
``--peer-lrs 8e-5,3e-4,1e-3`` turns each peer arm without ``~LR`` into one arm per rate; the
``fid/peer`` column divides by the peer arm with the best FID on that set (named above the
table), ``fid/classic`` by the ``classic`` arm. ``--repeat K`` runs the whole arm list K times,
interleaved (a, b, a, b), and the table shows each arm's median and its individual FIDs.

Data: ``--data`` takes a folder of class folders or a dev set of bench/devsets.py (``demo``:
coloured shapes, the default; ``strokes``: thin grayscale glyphs, 10 classes; ``textures``:
colour textures, 8 classes), drawn into OUT/work/<set>/ (1,500 images); ``--suite demo,strokes``
runs the same arms on each set in turn and prints a table per set; OUT/results.json holds them all.

Ours sample from the EMA weights with ``--sampler``-``--sample-steps`` (by default the
product's: DPM-Solver++(2M) at 20 steps) through the product's sampling; ``--ema-lengths 0.05,0.1`` adds a row per length for each of
our arms (``fast@ema0.05``) drawn with the post-hoc EMA at that sigma_rel. The peer samples with
its DDIM (sampling_timesteps=--peer-sample-steps, 50). ``--sweep`` adds FID against sampling steps (10,
20, 50, 100) for each sampler on the ``fast`` arm's model. The peer needs the ``bench`` extra
(``pip install -e '.[bench]'``); nothing outside bench/ imports it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from core.diffusion.registry import DEFAULT_SAMPLER, SAMPLER_SPECS, default_steps
from bench.quality_arms import (CLASSIC_PRESET, FAST_PRESET, Arm, BenchError, parse_arms,  # noqa: F401
                                parse_lengths, print_summary, print_table, schedule, slug, summarise)

DEFAULT_ARMS = "classic,fast,peer"
SWEEP_STEPS = (10, 20, 50, 100)
SET_IMAGES = 1500  # images per generated dev set (the demo set's 5 classes x 300, as measured before)
PEER = {"dim": 32, "dim_mults": (1, 2, 4), "batch": 32, "lr": 8e-5, "betas": (0.9, 0.99),
        "grad_clip": 1.0, "ema_decay": 0.995, "ema_every": 10}


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
    if arm.batch is not None:
        cfg["batch_size"] = arm.batch
    cfg.update(arm.options)
    return resolve({**cfg, "recipe": arm.recipe})


def train_ours(arm: Arm, data: Path, run_dir: Path, args) -> dict[str, Any]:
    from core.diffusion.checkpoint import ema_kind, load_checkpoint
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
            "parameters": sum(v.numel() for v in ckpt["model"].values()), "ema_kind": ema_kind(ckpt)}


def sample_ours(checkpoint: Path, n: int, sampler: str, steps: int, seed: int,
                ema_length: float | None = None) -> torch.Tensor:
    """n images (N, C, H, W) in [-1, 1] from the EMA weights, through the product's sampling;
    ``ema_length``: the post-hoc EMA at that sigma_rel (passed only when given, so this runs
    where SampleRequest has no ema_length too)."""
    from core.diffusion.sampling import SampleRequest, generate_images

    extra = {} if ema_length is None else {"ema_length": ema_length}
    try:
        request = SampleRequest(n=n, sampler=sampler, steps=steps, seed=seed, weights="ema", unconditional=True,
                                **extra)
    except TypeError:
        raise BenchError("--ema-lengths: this checkout's SampleRequest has no ema_length (post-hoc EMA)") from None
    try:
        images, _weights = generate_images(str(checkpoint), request)
    except ValueError as exc:
        raise BenchError(f"sampling {checkpoint}: {exc}") from None
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # uint8 (N, H, W, C) -> [-1, 1]


def has_ema_length() -> bool:
    import dataclasses

    from core.diffusion.sampling import SampleRequest

    return "ema_length" in {f.name for f in dataclasses.fields(SampleRequest)}


def our_samplers() -> tuple[str, ...]:
    from core.diffusion.registry import SAMPLER_SPECS

    return tuple(SAMPLER_SPECS)


# ---------------------------------------------------------------------------- the peer


def load_images(data: Path, image_size: int) -> torch.Tensor:
    """The training images as (N, 3, S, S) uint8, decoded as our trainer decodes them."""
    from core.data.dataset import DataOptions, ImageFolderDataset

    return ImageFolderDataset(data, DataOptions(image_size=image_size, flip=False)).images


def train_peer(images: torch.Tensor, seconds: float, args, lr: float | None = None,
               batch: int | None = None) -> dict[str, Any]:
    """The peer's Trainer loop (Adam, clipping, EMA), bounded by wall-clock time."""
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet
    from ema_pytorch import EMA

    from core.diffusion.device import autocast_context, autocast_dtype

    torch.manual_seed(args.seed)
    model = Unet(dim=PEER["dim"], dim_mults=PEER["dim_mults"])
    diffusion = GaussianDiffusion(model, image_size=args.image_size, timesteps=1000,
                                  sampling_timesteps=args.peer_sample_steps)
    opt = torch.optim.Adam(diffusion.parameters(), lr=lr or PEER["lr"], betas=PEER["betas"])
    ema = EMA(diffusion, beta=PEER["ema_decay"], update_every=PEER["ema_every"])
    dtype = autocast_dtype("cpu", args.peer_amp)
    batch = batch or (4 if args.smoke else PEER["batch"])
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


def resolve_data(spec: str, args, work: Path) -> tuple[str, Path]:
    """A dev-set name (drawn into OUT/work/<name>/) or a folder of class folders: (label, folder)."""
    from bench.devsets import DEVSETS, classes_of, make_devset

    if spec in DEVSETS:
        data = work / spec
        per_class = 6 if args.smoke else max(1, SET_IMAGES // len(classes_of(spec)))
        print(f"dev set {spec}: {per_class} images per class into {data}", flush=True)
        try:
            make_devset(spec, data, per_class, max(args.image_size, 32), args.seed)
        except ValueError as exc:
            raise BenchError(str(exc)) from None
        return spec, data
    data = Path(spec).expanduser()
    if not data.is_dir():
        raise BenchError(f"--data {spec}: neither a dev set ({', '.join(DEVSETS)}) nor a folder")
    return data.name, data


def _sets(args, work: Path) -> list[tuple[str, Path]]:
    specs = [s.strip() for s in (args.suite or args.data or "demo").split(",") if s.strip()]
    if not specs:
        raise BenchError("--suite: no sets given")
    sets: list[tuple[str, Path]] = []
    for spec in specs:
        label, data = resolve_data(spec, args, work)
        while label in {name for name, _ in sets}:  # two folders of one name
            label += "+"
        sets.append((label, data))
    return sets


def _draw(arm: Arm, k: int, data: Path, args, ctx: dict[str, Any]) -> tuple[dict[str, Any], list]:
    """Train ``arm`` (repeat ``k``) and draw its samples: (result, [(label, samples)])."""
    if arm.recipe == "peer":
        if ctx.get("images") is None:
            ctx["images"] = load_images(data, args.image_size)
        result = train_peer(ctx["images"], args.minutes * 60, args, arm.lr, arm.batch)
        print(f"   {result['steps']} steps; sampling {args.n}", flush=True)
        result["network"] = f"Unet(dim={PEER['dim']}, dim_mults={PEER['dim_mults']})"
        return result, [(arm.name, sample_peer(result.pop("ema"), args.n, args.seed))]
    run_dir = ctx["runs"] / (f"{arm.slug}-r{k}" if args.repeat > 1 else arm.slug)
    if run_dir.exists():  # a fresh run each time: no resuming an earlier benchmark
        shutil.rmtree(run_dir)
    result = train_ours(arm, data, run_dir, args)
    print(f"   {result['steps']} steps; sampling {args.n}", flush=True)
    ckpt = result.pop("checkpoint")
    if arm.recipe == "fast" and ctx.get("fast") is None:
        ctx["fast"] = ckpt
    result["network"] = arm.preset
    draws = [(arm.name, sample_ours(ckpt, args.n, args.sampler, args.sample_steps, args.seed))]
    # Post-hoc lengths exist for a power EMA only (an arm with +ema_kind=exp, or classic, has none).
    lengths = args.ema_lengths if result.get("ema_kind") == "power" else ()
    for length in lengths:
        draws.append((f"{arm.name}@ema{length:g}",
                      sample_ours(ckpt, args.n, args.sampler, args.sample_steps, args.seed, ema_length=length)))
    return result, draws


def run_arm(arm: Arm, k: int, label: str, data: Path, args, ctx: dict[str, Any]) -> list[dict[str, Any]]:
    """One training of ``arm`` on set ``label``: a scored row per draw (the run's EMA, each --ema-lengths)."""
    from core.io.grid import save_grid

    print(f"== {label}: {arm.name}" + (f" (repeat {k + 1}/{args.repeat})" if args.repeat > 1 else "") + ": training",
          flush=True)
    result, draws = _draw(arm, k, data, args, ctx)
    rows = []
    for name, samples in draws:
        grid = save_grid(samples[:64], ctx["out"] / f"{slug(name)}{f'-r{k}' if args.repeat > 1 else ''}.png")
        row = {"arm": name, "recipe": arm.recipe, "repeat": k, **result, "grid": str(grid)}
        if ctx["scorer"] is not None:
            row.update(ctx["scorer"](samples))
        rows.append(row)
        print(f"   {json.dumps({k: v for k, v in row.items() if k != 'grid'}, default=str)}", flush=True)
    return rows


def run_sweep(checkpoint: Path, args, scorer) -> list[dict[str, Any]]:
    """FID against sampling steps for every sampler on one model."""
    from core.diffusion.registry import sampler_spec

    rows: list[dict[str, Any]] = []
    # samplers that run all T steps (ddpm) only with --sweep-ddpm
    for sampler in [s for s in our_samplers() if sampler_spec(s).uses_steps or args.sweep_ddpm]:
        for steps in args.sweep_steps:
            t0 = time.perf_counter()
            samples = sample_ours(checkpoint, args.sweep_n or args.n, sampler, steps, args.seed)
            row = {"sampler": sampler, "steps": steps, "seconds": time.perf_counter() - t0}
            if scorer is not None:
                row.update(scorer(samples))
            rows.append(row)
            print(f"   sweep {json.dumps(row)}", flush=True)
            if not sampler_spec(sampler).uses_steps:
                break  # it runs all T steps whatever is asked
    return rows


def run_set(label: str, data: Path, arms: list[Arm], args, out: Path, scorer) -> dict[str, Any]:
    """Every arm (--repeat times, interleaved) on one set; prints its table."""
    ctx: dict[str, Any] = {"scorer": scorer, "out": out / label, "runs": out / "work" / "runs" / label}
    ctx["out"].mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for k, arm in schedule(arms, args.repeat):
        rows += run_arm(arm, k, label, data, args, ctx)
    sweep = run_sweep(ctx["fast"], args, scorer) if args.sweep and ctx.get("fast") else []
    summary = summarise(rows)
    print_summary(label, summary, scored=scorer is not None, repeat=args.repeat)
    if sweep:
        print(f"\nFID against sampling steps, {label}, fast arm's EMA model:")
        print_table(sweep, ["sampler", "steps", "seconds"] + (["fid", "kid"] if scorer is not None else []))
    print(f"grids: {ctx['out']}", flush=True)
    return {"data": str(data), "features": scorer.features if scorer else None, "arms": rows, "summary": summary,
            "sweep": sweep}


def run(args) -> dict[str, Any]:
    from core.io.atomic import atomic_write_text

    arms = parse_arms(args.arms, smoke=args.smoke, peer_lrs=args.peer_lrs)
    if any(a.recipe == "peer" for a in arms) and not peer_available():
        raise BenchError("the peer arm needs denoising-diffusion-pytorch: pip install -e '.[bench]'")
    if args.sweep and not any(a.recipe == "fast" for a in arms):
        raise BenchError("--sweep needs a fast arm (its model is the one swept)")
    if args.ema_lengths and not has_ema_length():
        raise BenchError("--ema-lengths: this checkout's sampling has no post-hoc EMA (SampleRequest.ema_length)")
    if args.sampler not in our_samplers():
        raise BenchError(f"--sampler {args.sampler!r}: known: {', '.join(our_samplers())}")
    out = Path(args.out).expanduser()
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    sets = _sets(args, work)
    scorers: dict[str, Any] = {}
    for label, data in sets:  # before any training: a missing metric must not cost 30 minutes
        scorers[label] = None if args.no_score else Scorer(data, args.image_size, work / "cache", features=args.features,
                                                           feature_seconds=2.0 if args.smoke else None)
        if scorers[label] is not None:
            print(f"scoring {label}: {scorers[label].features} features against the images in {data}", flush=True)
    print(f"arms: {', '.join(a.name for a in arms)}" + (f" x {args.repeat}, interleaved" if args.repeat > 1 else "")
          + f"; {args.minutes:g} min each on {torch.get_num_threads()} threads; {args.n} samples each (ours "
          f"{args.sampler}-{args.sample_steps}, the peer DDIM-{args.peer_sample_steps})", flush=True)
    results = {"sets": {}, "arms": [a.name for a in arms], "repeat": args.repeat, "ema_lengths": list(args.ema_lengths),
               "sampler": args.sampler, "sample_steps": args.sample_steps, "peer_sample_steps": args.peer_sample_steps, "minutes": args.minutes, "n": args.n,
               "sweep_n": args.sweep_n or args.n, "image_size": args.image_size, "torch": torch.__version__,
               "threads": torch.get_num_threads()}
    for label, data in sets:
        results["sets"][label] = run_set(label, data, arms, args, out, scorers[label])
        atomic_write_text(out / "results.json", json.dumps(results, indent=2, default=str))  # after each set
    print(f"\nresults: {out / 'results.json'}")
    return results


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n\n")[0],
                                epilog="See the module docstring (bench/quality.py) and bench/RESULTS.md.")
    p.add_argument("--minutes", type=float, default=10.0, help="training wall-clock minutes per arm (default 10)")
    p.add_argument("--data", default="", help="a dev set (demo, strokes, textures: drawn into OUT/work/<set>/) "
                   "or a folder of class folders (default: demo)")
    p.add_argument("--suite", default="", help="comma-separated dev sets or folders: the same arms on each in turn, "
                   "a table per set, e.g. demo,strokes,textures (instead of --data)")
    p.add_argument("--n", type=int, default=500, help="samples per arm (default 500)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--arms", default=DEFAULT_ARMS, help="comma-separated RECIPE@PRESET~LR/BATCH, each part after the "
                   "recipe optional: a recipe of core.training.options.RECIPES or peer (fixed network), e.g. "
                   f"classic,fast@res-tiny,fast~6e-4/64,peer~3e-4/64; +OPTION=VALUE sets any training option of ours, "
                   f"e.g. fast+ema_kind=exp (default {DEFAULT_ARMS})")
    p.add_argument("--peer-lrs", default="", help="the peer's learning-rate sweep, e.g. 8e-5,3e-4,1e-3: each peer arm "
                   "without ~LR becomes one arm per rate; fid/peer divides by the best of them")
    p.add_argument("--repeat", type=int, default=1, help="run the whole arm list K times, interleaved (a,b,a,b); "
                   "tables show each arm's median FID and the individual values (default 1)")
    p.add_argument("--ema-lengths", default="", help="also score each of our arms with the post-hoc EMA at these "
                   "sigma_rel values, e.g. 0.05,0.1,0.2 (rows ARM@emaL)")
    p.add_argument("--sampler", default=DEFAULT_SAMPLER,
                   help=f"our arms' sampler (default {DEFAULT_SAMPLER}, the product's; the peer uses its DDIM)")
    p.add_argument("--sample-steps", type=int, default=None,
                   help="our arms' sampling steps (default: the sampler's own, as `ddpm-tui sample`)")
    p.add_argument("--peer-sample-steps", type=int, default=50,
                   help="the peer's DDIM steps (default 50, whatever our arms use)")
    p.add_argument("--sweep", action="store_true", help="also FID against sampling steps for every sampler (fast arm)")
    p.add_argument("--sweep-steps", default=",".join(map(str, SWEEP_STEPS)))
    p.add_argument("--sweep-ddpm", action="store_true", help="include ddpm (all T steps: slow) in --sweep")
    p.add_argument("--sweep-n", type=int, default=0, help="samples per sweep point (default: --n)")
    p.add_argument("--features", default="auto", help="feature net for the metrics: auto, inception, dataset")
    p.add_argument("--peer-amp", choices=("auto", "bf16", "off"), default="auto",
                   help="the peer's autocast (default auto: bf16 where the CPU has it, as our arms)")
    p.add_argument("--no-score", action="store_true", help="train, sample and save grids only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (default: torch's own); 1 lets two benchmarks share 2 cores without contention")
    p.add_argument("--out", default="", help="output folder (default: a new temporary folder)")
    p.add_argument("--smoke", action="store_true", help="seconds, not minutes: a few steps, a few samples")
    p.add_argument("--smoke-steps", type=int, default=2, help=argparse.SUPPRESS)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    try:
        args.sweep_steps = tuple(int(s) for s in args.sweep_steps.split(",") if s.strip())
    except ValueError:
        p.error(f"--sweep-steps: {args.sweep_steps!r} is not a list of integers")
    try:
        args.ema_lengths = parse_lengths(args.ema_lengths)
    except BenchError as exc:
        p.error(str(exc))
    if args.suite and args.data:
        p.error("--suite and --data: give one (--suite lists every set)")
    if args.sample_steps is None:
        args.sample_steps = default_steps(args.sampler) if args.sampler in SAMPLER_SPECS else 1
    if args.smoke:
        args.minutes = min(args.minutes, 0.5)
        args.n = min(args.n, 12)
        args.sample_steps = min(args.sample_steps, 3)
        args.peer_sample_steps = min(args.peer_sample_steps, 3)
        args.sweep_steps = (2,)
        args.image_size = 16
    if args.minutes <= 0 or args.n < 2 or args.sample_steps < 1 or args.peer_sample_steps < 1 or any(s < 1 for s in args.sweep_steps):
        p.error("--minutes must be > 0, --n >= 2, --sample-steps, --peer-sample-steps and --sweep-steps >= 1")
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
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
