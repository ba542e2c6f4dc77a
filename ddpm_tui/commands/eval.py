"""`ddpm-tui eval RUN_OR_CHECKPOINT`: FID, KID ± std, precision, recall (and class accuracy
or entropy) of a checkpoint's samples against its run's training images.

Results are printed and appended to the run's eval.jsonl; an evaluation already there for
the same checkpoint and settings is shown again instead of being recomputed.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from core.diffusion.registry import DEFAULT_GUIDANCE, EMA_SWEEP, MAX_IMAGES, MAX_SEED, default_steps, sampler_spec
from core.io.safe_text import shown
from ddpm_tui.commands._common import (CLIError, add_command, add_sampling_args, add_source_arg, bounded,
                                       ema_length_type, positive_int)

CPU_NOTICE_WORK = 10_000  # images x steps above which a CPU evaluation takes minutes: say so first

LABELS = {"fid": "FID", "kid": "KID", "precision": "precision", "recall": "recall",
          "class_accuracy": "class accuracy", "class_entropy": "class entropy (nats)", "copy_rate": "copy rate"}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers, "eval", _run_or_write_stats,
        help="measure sample quality (FID, KID, precision/recall) of a run or checkpoint",
        description="Sample N images from a run's latest checkpoint (or a .pt file) and compare them with the "
        "run's training images: FID, KID ± std, precision, recall, and class accuracy for conditional runs. "
        "Appends to the run's eval.jsonl; an identical earlier evaluation is reused.",
    )
    add_source_arg(p, optional=True)  # --write-stats takes none
    add_sampling_args(p)
    p.add_argument("--n", type=int, default=1000,
                   help=f"number of generated images, 2..{MAX_IMAGES} (default: 1000; on a CPU ~20 min for "
                   "a small model: --n 200 is quicker and noisier)")
    p.add_argument("--seed", type=bounded(int, low=0, high=MAX_SEED), default=0, help="sampling seed (default: 0, so evaluations compare)")
    p.add_argument("--raw", action="store_true", help="judge the trained weights instead of the EMA weights")
    p.add_argument("--features", choices=("auto", "inception", "dataset"), default="auto",
                   help="feature net: inception (weights on disk), dataset (a small CNN trained on the run's "
                   "breeds, cached); auto = inception when its weights are present (default)")
    p.add_argument("--fid-weights", metavar="PATH", help="InceptionV3 weights file (default: torch's hub cache)")
    p.add_argument("--data", metavar="DIR", help="real images to compare with (default: the run's dataset)")
    p.add_argument("--batch-size", type=positive_int, default=100, help="images per sampling batch (default: 100)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--sweep-ema", nargs="?", const=",".join(f"{x:g}" for x in EMA_SWEEP), default=None,
                   type=_lengths, metavar="LIST",
                   help="for a run trained with --ema-kind power: evaluate the EMA weights at each of these "
                   "comma-separated lengths (sigma_rel), same seed, and print a table (default LIST: "
                   f"{','.join(f'{x:g}' for x in EMA_SWEEP)})")
    p.add_argument("--trend", action="store_true",
                   help="print the run's quality trend from its eval.jsonl (KID slope per hour and per 1,000 "
                   "steps, and whether it is improving, flat or getting worse) without sampling")
    _add_stats_args(p)


def _lengths(text: str) -> list[float]:
    """--sweep-ema's LIST: comma-separated sigma_rel, each checked as --ema-length is."""
    values = [ema_length_type(part.strip()) for part in str(text).split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} names no length")
    return list(dict.fromkeys(values))


def _add_stats_args(p: argparse.ArgumentParser) -> None:
    """Standard FID statistics (pytorch-fid / clean-fid .npz: mu, sigma of Inception pool3)."""
    p.add_argument("--ref-stats", metavar="FILE.npz",
                   help="FID against these statistics instead of the run's images (Inception features; FID only, "
                   "not appended to eval.jsonl)")
    p.add_argument("--write-stats", nargs=2, metavar=("DIR", "FILE.npz"),
                   help="write the statistics of the images in DIR to FILE.npz and stop (no RUN_OR_CHECKPOINT)")
    p.add_argument("--image-size", type=positive_int, default=64,
                   help="with --write-stats: the size images are read at, as a run's training images (default: 64)")
    p.add_argument("--force", action="store_true", help="with --write-stats: replace an existing FILE.npz")


def _progress_bar():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    return Progress("[bold]{task.description:<32}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), transient=True)


def _run_or_write_stats(args: argparse.Namespace, workspace) -> int:
    """`eval --write-stats DIR FILE.npz` needs no checkpoint; every other eval needs one."""
    if args.write_stats:
        return write_stats(args, workspace)
    if args.source is None:
        raise CLIError("eval needs a RUN_OR_CHECKPOINT (or --write-stats DIR FILE.npz)")
    return show_trend(args, workspace) if args.trend else run(args, workspace)


def show_trend(args: argparse.Namespace, workspace) -> int:
    """--trend: the verdict on the run's evaluations so far (core.quality.trend); nothing sampled."""
    from pathlib import Path

    from core.quality.eval_log import read_eval
    from core.quality.trend import trend
    from core.training import runs

    path = Path(args.source).expanduser()
    if path.is_file() and path.parent.name == runs.CHECKPOINTS_DIR:
        path = path.parent.parent  # a checkpoint: its run's evaluations
    run_dir = path if path.is_dir() else workspace.run_dir(args.source) if "/" not in args.source else None
    if run_dir is None or not run_dir.is_dir():
        raise CLIError(f"{args.source!r} is not a run in {workspace.runs_dir} nor a run folder")
    result = trend(read_eval(run_dir)[0])
    if args.json:
        print(json.dumps({"run": str(run_dir), "text": result.text, "short": result.short,
                          **{k: v for k, v in asdict(result).items() if k not in ("latest", "best")}}, indent=2))
        return 0
    print(f"run {shown(run_dir.name)}: {result.text}")
    for line in result.detail():
        print(f"  {line}")
    return 0


def run(args: argparse.Namespace, workspace) -> int:
    from core.diffusion.device import resolve_device
    from core.diffusion.sampling import ignored_settings
    from core.training import runs
    from core.quality.evaluate import EvalError, EvalSettings
    from ddpm_tui.commands.sample import resolve_source

    guidance = args.guidance if args.guidance is not None else DEFAULT_GUIDANCE
    if (args.raw or args.ema_length is not None) and args.sweep_ema:
        raise CLIError(f"--sweep-ema evaluates the EMA averages itself; leave out {'--raw' if args.raw else '--ema-length'}")
    if args.raw and args.ema_length is not None:
        raise CLIError("--ema-length picks one of the EMA averages; leave out --raw")
    settings = EvalSettings(n=args.n, sampler=args.sampler, steps=args.steps, eta=args.eta,
                            guidance=guidance, seed=args.seed, weights="raw" if args.raw else "ema",
                            ema_length=args.ema_length)
    try:
        settings.validate()
    except EvalError as exc:
        raise CLIError(f"--n: {exc}" if "n must" in str(exc) else str(exc)) from None
    ckpt_path, run_dir = resolve_source(args.source, workspace)
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    kwargs = dict(run_dir=run_dir, run_config=runs.read_config(run_dir) if run_dir is not None else None,
                  settings=settings, data_dir=args.data, features=args.features,
                  fid_weights=args.fid_weights, cache_dir=workspace.cache_dir, device=device,
                  amp=args.amp, batch_size=args.batch_size)
    if args.ref_stats:  # the real side is the file; its FIDs do not belong among the run's
        kwargs.update(run_dir=None, evaluator=_reference_side(args, device))
    _notice_before(args, device)  # after every check of the arguments, before the work
    if args.sweep_ema:
        return _sweep(args, ckpt_path, run_dir, kwargs)
    result = _evaluate(args, ckpt_path, kwargs)

    if args.guidance is not None and result.settings.guidance != settings.guidance:
        _notes(ignored_settings(settings.sampler, conditional=False, guidance=args.guidance))
    _print_result(args, result, settings, ckpt_path, run_dir)
    return 0


def _evaluate(args: argparse.Namespace, ckpt_path, kwargs: dict):
    """evaluate_checkpoint with a progress bar (none under --json); EvalError as CLIError."""
    from core.quality.evaluate import EvalError, evaluate_checkpoint

    try:
        if args.json:
            return evaluate_checkpoint(ckpt_path, **kwargs)
        with _progress_bar() as bar:
            task = bar.add_task("starting", total=None)

            def progress(done: int, total: int, what: str) -> None:
                bar.update(task, description=what, completed=done, total=total)

            return evaluate_checkpoint(ckpt_path, progress=progress, **kwargs)
    except EvalError as exc:
        raise CLIError(str(exc)) from None


def _sweep(args: argparse.Namespace, ckpt_path, run_dir, kwargs: dict) -> int:
    """--sweep-ema: one evaluation per length (each recorded in eval.jsonl with its ema_length),
    then a table of FID and KID by length."""
    base = kwargs["settings"]
    rows = []
    for length in args.sweep_ema:
        settings = type(base)(**{**asdict(base), "ema_length": length})
        result = _evaluate(args, ckpt_path, {**kwargs, "settings": settings})
        rows.append((length, result))
    if args.json:
        print(json.dumps({"checkpoint": str(ckpt_path), "step": rows[0][1].step, "features": rows[0][1].features,
                          "rows": [{"ema_length": length, "reused": r.reused, **r.values} for length, r in rows]},
                         indent=2))
        return 0
    where = f"run {shown(run_dir.name)}" if run_dir is not None else shown(str(ckpt_path))
    print(f"{where}, step {rows[0][1].step}, {base.n} images, seed {base.seed}, {rows[0][1].features} features")
    print(f"  {'ema_length':<12}{'FID':>10}{'KID':>12}{'KID std':>10}")
    for length, r in rows:
        v = r.values
        print(f"  {length:<12g}{v.get('fid', float('nan')):>10.4g}{v.get('kid', float('nan')):>12.4g}"
              f"{v.get('kid_std', float('nan')):>10.2g}" + ("  (reused)" if r.reused else ""))
    if run_dir is not None and not args.ref_stats:
        print(f"recorded in {run_dir / 'eval.jsonl'} (each with its ema_length)")
    return 0


def _print_result(args: argparse.Namespace, result, settings, ckpt_path, run_dir) -> None:
    values = result.values
    if args.json:
        print(json.dumps({"checkpoint": str(ckpt_path), "step": result.step, "features": result.features,
                          "reused": result.reused, "seconds": round(result.seconds, 3),
                          "settings": asdict(result.settings),
                          **({"ref_stats": args.ref_stats} if args.ref_stats else {}),
                          **values}, indent=2))
        return
    where = f"run {shown(run_dir.name)}" if run_dir is not None else shown(str(ckpt_path))
    head = (f"{where}, step {result.step}, {settings.n} images, {settings.sampler}"
            f"{settings.steps if sampler_spec(settings.sampler).uses_steps else ''}, {result.settings.weights}"
            f"{f' (sigma_rel {settings.ema_length:g})' if settings.ema_length is not None else ''} weights, "
            f"{result.features} features" + (f" against {shown(args.ref_stats)}" if args.ref_stats else ""))
    print(head + (" (reused from eval.jsonl)" if result.reused else f" ({result.seconds:.0f} s)"))
    for metric, label in LABELS.items():
        if metric not in values:
            continue
        text = f"{values[metric]:.4g}" if metric != "copy_rate" else _copy_text(result.records, values[metric])
        if metric == "kid":
            text += f" ± {values.get('kid_std', 0.0):.2g}"
        print(f"  {label:<22}{text}")
    if any(r.get("real") == "holdout" for r in result.records):
        print("  (FID, KID, precision and recall against the run's held-out images: never trained on)")
    if result.features == "dataset":
        print("  (dataset features: this FID is on the dataset net's own scale; compare it only with other "
              "dataset-feature FIDs of this dataset, never with published Inception FIDs)")
    if run_dir is not None and not result.reused and not args.ref_stats:
        print(f"appended to {run_dir / 'eval.jsonl'}")


def _copy_text(records: list[dict], rate: float) -> str:
    """'3% (pixels 1%); beagle 0%, pug 6%': the copy rate, as its record has it."""
    record = next((r for r in records if r.get("metric") == "copy_rate"), {})
    text = f"{rate:.0%}"
    if isinstance(record.get("pixel_rate"), (int, float)):
        text += f" (in pixels: {record['pixel_rate']:.0%})"
    per_class = record.get("per_class")
    if isinstance(per_class, dict) and per_class:
        text += "; " + ", ".join(f"{shown(str(k))} {v:.0%}" for k, v in per_class.items()
                                 if isinstance(v, (int, float)))
    if isinstance(record.get("rule"), str):
        text += f"\n  {'':<22}(a copy: {shown(record['rule'])})"
    return text


def _notes(lines: list[str]) -> None:
    for line in lines:
        print(f"note: {line}", file=sys.stderr)


def _notice_before(args: argparse.Namespace, device) -> None:
    """Before minutes of work, one line each: settings this sampler ignores, and how long a CPU takes."""
    from core.diffusion.sampling import ignored_settings

    _notes(ignored_settings(args.sampler, conditional=True, eta=args.eta))
    steps = (args.steps or default_steps(args.sampler)) if sampler_spec(args.sampler).uses_steps else 1000
    if str(getattr(device, "type", device)) == "cpu" and args.n * steps > CPU_NOTICE_WORK:
        _notes([f"{args.n} images x {steps} steps on the CPU can take tens of minutes (1000 x 50 took ~20 min "
                "for a tiny model); the bar shows the time left, and --n 200 gives a quicker, noisier figure"])


def _reference_side(args: argparse.Namespace, device):
    """--ref-stats: an evaluator whose real side is the statistics file (Inception only)."""
    from core.quality.evaluate import EvalError
    from core.quality.fid_stats import StatsEvaluator

    if args.features == "dataset":
        raise CLIError("--ref-stats holds Inception statistics; leave out --features dataset")
    try:
        return StatsEvaluator(args.ref_stats, fid_weights=args.fid_weights, device=device)
    except EvalError as exc:
        raise CLIError(str(exc)) from None


def write_stats(args: argparse.Namespace, workspace) -> int:
    """--write-stats DIR FILE.npz: the Inception pool3 statistics of DIR's images."""
    from pathlib import Path

    from core.diffusion.device import resolve_device
    from core.quality.evaluate import EvalError
    from core.quality.fid_stats import StatsError, dataset_stats, write_stats as write_npz

    if args.source is not None:
        raise CLIError("--write-stats takes no RUN_OR_CHECKPOINT (it reads DIR's images)")
    if args.features == "dataset":
        raise CLIError("--write-stats writes Inception statistics; leave out --features dataset")
    folder, out = Path(args.write_stats[0]).expanduser(), Path(args.write_stats[1]).expanduser()
    if out.suffix.lower() != ".npz":
        raise CLIError(f"--write-stats {out}: give a file name ending in .npz (nothing written)")
    if out.exists() and not args.force:
        raise CLIError(f"{out} already exists; use --force to replace it (nothing written)")
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    try:
        with _progress_bar() as bar:
            task = bar.add_task("starting", total=None)
            mu, sigma, n, key = dataset_stats(
                folder, image_size=args.image_size, fid_weights=args.fid_weights, cache_dir=workspace.cache_dir,
                device=device, progress=lambda done, total, what: bar.update(task, description=what,
                                                                             completed=done, total=total))
        write_npz(out, mu, sigma, n=n, feature_key=key, overwrite=args.force)
    except EvalError as exc:
        raise CLIError(str(exc)) from None
    except StatsError as exc:
        raise CLIError(f"{out}: {exc}") from None
    print(f"wrote the Inception statistics of {n} images in {shown(str(folder))} "
          f"({args.image_size}px, {mu.shape[0]}-d) to {shown(str(out))}")
    return 0
