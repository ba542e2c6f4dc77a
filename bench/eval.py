"""The scale of the sample-quality metrics, and what `ddpm-tui eval` costs.

    python -m bench.eval                       # the demo set (generated: 5 classes x 300, 32 px)
    python -m bench.eval --data DIR --size 64  # any folder of breed folders

Splits the real images into two random disjoint halves A and B and scores against A:
B itself (should be near 0), B Gaussian-blurred, and uniform noise; the ordering must be
halves < blurred < noise. Then times an evaluation: the tiny preset (untrained: the time
does not depend on the weights) sampling ``--time-n`` images with DDIM ``--time-steps``,
plus the feature net and metrics at n = 1000, and extrapolates the whole at n = 1000 with
50 DDIM steps (sampling time is linear in images x steps). Feature nets: the dataset net
by default (trained here, or reused from --cache), Inception with --features inception.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from bench.common import fmt_seconds
from core.data.dataset import DataOptions, ImageFolderDataset
from core.data.demo import make_demo_dataset
from core.quality.evaluate import EvalSettings, Evaluator, generate_images


def blurred(images: torch.Tensor, radius: float) -> torch.Tensor:
    out = []
    for img in images.permute(0, 2, 3, 1).numpy():
        out.append(np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius))))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def row(name: str, values: dict) -> str:
    pr = f"{values.get('precision', float('nan')):9.3f} {values.get('recall', float('nan')):7.3f}"
    return f"{name:<28}{values['fid']:10.3f} {values['kid']:9.4f} ± {values['kid_std']:.4f} {pr}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="folder of breed folders (default: the generated demo set)")
    p.add_argument("--size", type=int, default=32, help="image size (default: 32, what the demo trains at)")
    p.add_argument("--features", choices=("dataset", "inception"), default="dataset")
    p.add_argument("--fid-weights", type=Path, help="InceptionV3 weights file (with --features inception)")
    p.add_argument("--cache", type=Path, help="cache folder for the feature net (default: a temp folder)")
    p.add_argument("--blur", type=float, default=None, help="blur radius in px (default: size / 32)")
    p.add_argument("--time-n", type=int, default=100, help="images sampled for the timing (default: 100)")
    p.add_argument("--time-steps", type=int, default=10, help="DDIM steps for the timing (default: 10)")
    p.add_argument("--skip-time", action="store_true", help="only the metric's scale")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    try:
        run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path) -> None:
    data = args.data
    if data is None:
        data = tmp / "demo"
        make_demo_dataset(data, per_class=300, size=max(args.size, 16))
    cache = args.cache or tmp / "cache"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; data {data} at {args.size} px")

    t0 = time.perf_counter()
    ev = Evaluator(data, image_size=args.size, features=args.features, fid_weights=args.fid_weights, cache_dir=cache)
    setup = time.perf_counter() - t0
    real = ImageFolderDataset(data, DataOptions(image_size=args.size, flip=False), cache_dir=cache)
    print(f"{len(real)} images, {len(real.classes)} classes; {ev.features} features "
          f"({ev.real_features.shape[1]}-d); feature net + real features: {fmt_seconds(setup)}"
          + (" (cached)" if getattr(ev.net, "cached", False) else ""))

    order = torch.randperm(len(real), generator=torch.Generator().manual_seed(0))
    half = len(real) // 2
    a, b = real.images[order[:half]], real.images[order[half:2 * half]]
    ev.real_features, _ = ev.net.embed(a)  # score against half A only
    radius = args.blur if args.blur is not None else args.size / 32
    noise = torch.randint(0, 256, b.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    print(f"\nagainst half A ({half} images)        FID       KID               precision  recall")
    results = {}
    for name, imgs in (("half B (real)", b), (f"half B blurred (r={radius:g} px)", blurred(b, radius)),
                       ("uniform noise", noise)):
        results[name] = ev.score(imgs)
        print(row(name, results[name]))
    fids = [v["fid"] for v in results.values()]
    print("ordering halves < blurred < noise:", "yes" if fids[0] < fids[1] < fids[2] else "NO")

    if args.skip_time:
        return
    from core.diffusion.process import Diffusion, DiffusionConfig
    from core.diffusion.unet import UNet, get_preset

    torch.manual_seed(0)
    model = UNet(get_preset("tiny", image_size=args.size)).eval()
    diffusion = Diffusion(DiffusionConfig(T=1000))
    settings = EvalSettings(n=args.time_n, steps=args.time_steps)
    t0 = time.perf_counter()
    samples = generate_images(model, diffusion, settings.n, settings)
    sampling = time.perf_counter() - t0
    fake = torch.cat([real.images] * (1000 // len(real) + 1))[:1000]
    t0 = time.perf_counter()
    ev.score(fake)
    scoring = time.perf_counter() - t0
    per_image_step = sampling / (settings.n * settings.steps)
    print(f"\ntiny preset, {args.size} px, CPU: sampling {settings.n} images x {settings.steps} DDIM steps "
          f"{fmt_seconds(sampling)} ({per_image_step * 1e3:.2f} ms per image-step)")
    print(f"features + FID/KID/PR for n=1000: {fmt_seconds(scoring)}")
    print(f"eval n=1000, DDIM 50 (extrapolated): {fmt_seconds(per_image_step * 1000 * 50 + scoring)} "
          f"= sampling {fmt_seconds(per_image_step * 1000 * 50)} + metrics {fmt_seconds(scoring)}")
    assert samples.shape[0] == settings.n
    in_process_vs_subprocess(data, cache, tmp, args.size, model, diffusion)


def in_process_vs_subprocess(data: Path, cache: Path, tmp: Path, size: int, model, diffusion) -> None:
    """What `--eval-every` would pay per evaluation in the trainer's process (the real side
    built once) vs starting `ddpm-tui eval` on the checkpoint (imports, checkpoint, dataset
    and cached features loaded again). Same small n both ways."""
    import subprocess
    import sys

    from core.diffusion.checkpoint import save_checkpoint
    from core.diffusion.ema import EMA
    from core.training.runs import checkpoints_dir, write_config

    run_dir = tmp / "ws" / "runs" / "r"
    save_checkpoint(checkpoints_dir(run_dir) / "last.pt", model_config=model.config, diffusion_config=diffusion.config,
                    model_state=model.state_dict(), ema_state=EMA(model).state_dict(), step=1)
    write_config(run_dir, {"preset": "tiny", "image_size": size, "data": str(data)})
    (tmp / "ws" / "cache").mkdir(parents=True, exist_ok=True)
    for f in cache.iterdir():  # the subprocess finds the feature net and real features cached
        (tmp / "ws" / "cache" / f.name).symlink_to(f)
    ev = Evaluator(data, image_size=size, features="dataset", cache_dir=cache)
    settings = EvalSettings(n=20, steps=2)
    t0 = time.perf_counter()
    ev.evaluate(model, diffusion, settings, step=1)
    inproc = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ddpm_tui", "--workspace", str(tmp / "ws"), "eval", "r", "--n", "20",
                    "--steps", "2", "--features", "dataset", "--device", "cpu", "--json"],
                   check=True, capture_output=True)
    sub = time.perf_counter() - t0
    print(f"one evaluation (n=20, DDIM 2): in-process {fmt_seconds(inproc)}, "
          f"as a separate `ddpm-tui eval` process {fmt_seconds(sub)} (+{fmt_seconds(sub - inproc)} start-up)")


if __name__ == "__main__":
    main()
