"""Is loading ever the bottleneck? Images/s of the data pipeline against a training step.

    python -m bench.data [--images 2000] [--presets tiny,small,classic] [--batch 16]

On a synthetic JPEG dataset (generated in a temp dir) it measures, medians over repeats:
  - first build: decoding + resizing every file (1 worker, then a thread pool and a
    process pool over all cores; which pool is faster decides core.data.dataset's default);
  - a rerun that loads the decoded-image cache;
  - ``get_batch`` (gather + flip + scale) at batch 16 and 64, against the original's way
    (torchvision ImageFolder + transforms, decoding each JPEG every epoch) as baseline;
  - the training step (forward + backward + Adam) of each preset, which is what loading
    has to keep up with.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.common import fmt_seconds, median, time_repeats
from core.data.dataset import DataOptions, ImageFolderDataset, decode_files, scan_image_folder


def make_jpegs(root: Path, n: int, size: tuple[int, int], breeds: int = 10, seed: int = 0) -> None:
    """Photo-like JPEGs: smooth colour fields plus a little noise (pure noise would make
    the decoder look slower than it is on real photos)."""
    rng = np.random.default_rng(seed)
    w, h = size
    for i in range(n):
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
        arr = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3), dtype=np.int16)
        path = root / f"breed_{i % breeds:02d}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)


def fmt_rate(r: float) -> str:
    return f"{r:,.0f}" if r >= 100 else f"{r:.2f}"


def rate(n: int, seconds: float) -> str:
    return f"{fmt_rate(n / seconds):>10} img/s"


def line(label: str, n: int, times: list[float], extra: str = "") -> float:
    m = median(times)
    print(f"  {label:<44} {rate(n, m)}   (median {fmt_seconds(m)} of {len(times)}){extra}")
    return n / m


def bench_decode(root: Path, n: int, repeats: int) -> dict[str, float]:
    print(f"\nFirst build: decode + resize to 64x64, {n} files, {os.cpu_count()} cores")
    paths = [p for p, _ in scan_image_folder(root).samples]
    opts = DataOptions(image_size=64)
    out: dict[str, float] = {}
    out["1 worker"] = line("1 worker (baseline)", n, time_repeats(lambda: decode_files(paths, opts, workers=1), repeats, 0))
    workers = os.cpu_count() or 1
    for pool in ("thread", "process"):
        r = line(f"{pool} pool, {workers} workers", n,
                 time_repeats(lambda: decode_files(paths, opts, workers=workers, pool=pool), repeats, 0))
        out[pool] = r
        print(f"  {'':<44} {r / out['1 worker']:10.2f}x the 1-worker rate")
    return out


def bench_cache(root: Path, cache: Path, n: int, repeats: int) -> tuple[ImageFolderDataset, float]:
    print("\nDataset build with and without the decoded-image cache")
    opts = DataOptions(image_size=64)
    shutil.rmtree(cache, ignore_errors=True)
    cold = []
    for _ in range(repeats):
        shutil.rmtree(cache, ignore_errors=True)
        t0 = time.perf_counter()
        ImageFolderDataset(root, opts, cache_dir=cache)
        cold.append(time.perf_counter() - t0)
    cold_rate = line("first build (decode all, write cache)", n, cold)
    warm = time_repeats(lambda: ImageFolderDataset(root, opts, cache_dir=cache), repeats, 1)
    warm_rate = line("rerun (cache hit, nothing decoded)", n, warm,
                     f"   {n / median(warm) / cold_rate:.1f}x the first build")
    ds = ImageFolderDataset(root, opts, cache_dir=cache)
    assert ds.stats["decoded"] == 0, ds.stats
    size = ds.cache_path.stat().st_size if ds.cache_path else 0
    print(f"  cache file {size / 1e6:.1f} MB for {len(ds)} images at 64x64")
    return ds, warm_rate


def bench_batches(ds: ImageFolderDataset, root: Path, repeats: int) -> dict[int, float]:
    print("\nBatches of 64x64 images in [-1, 1] with random flips")
    out: dict[int, float] = {}
    n = len(ds)
    original_rate = None
    try:
        from torchvision import datasets, transforms

        original_tf = transforms.Compose([
            transforms.Resize((64, 64)), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
            transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ])
        folder = datasets.ImageFolder(str(root), transform=original_tf)
        k = min(256, len(folder))
        idx = torch.randperm(len(folder))[:k].tolist()

        def original_way() -> None:  # what the original's DataLoader does per epoch (0 workers)
            torch.stack([folder[i][0] for i in idx])

        original_rate = line("original way: ImageFolder + transforms (baseline)", k, time_repeats(original_way, repeats, 1))
    except ImportError:
        print("  (torchvision missing: no baseline of the original)")
    for batch in (16, 64):
        gen = torch.Generator().manual_seed(0)
        batches = [torch.randint(0, n, (batch,), generator=gen) for _ in range(200)]

        def run() -> None:
            for b in batches:
                ds.get_batch(b, gen)

        r = line(f"get_batch, batch {batch}", batch * len(batches), time_repeats(run, repeats, 1))
        out[batch] = r
        if original_rate:
            print(f"  {'':<44} {r / original_rate:10,.0f}x the original's way")
    return out


def bench_train_step(presets: list[str], batch: int, repeats: int) -> dict[str, float]:
    try:
        from core.diffusion.device import autocast_context, autocast_dtype
        from core.diffusion.process import Diffusion, DiffusionConfig
        from core.diffusion.unet import UNet, count_parameters, get_preset
    except ImportError as exc:
        print(f"\nTraining step: skipped ({exc})")
        return {}
    device = torch.device("cpu")
    dtype = autocast_dtype(device, "auto")
    print(f"\nTraining step (forward + backward + Adam), batch {batch}, 64x64, CPU, "
          f"autocast {dtype or 'fp32'}, {torch.get_num_threads()} threads")
    out = {}
    for name in presets:
        torch.manual_seed(0)
        model = UNet(get_preset(name, image_size=64)).to(device)
        diffusion = Diffusion(DiffusionConfig(T=1000)).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=3e-4)
        x0 = torch.rand(batch, 3, 64, 64) * 2 - 1
        gen = torch.Generator().manual_seed(0)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with autocast_context(device, dtype):
                loss = diffusion.training_loss(model, x0, generator=gen)
            loss.backward()
            opt.step()

        reps = repeats if name != "classic" else max(2, repeats // 2)
        out[name] = line(f"{name} ({count_parameters(model) / 1e6:.1f} M params)", batch,
                         time_repeats(step, reps, 1))
        del model, opt
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.data", description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000, help="synthetic JPEGs to generate (default 2000)")
    p.add_argument("--size", default="200x150", help="their size WxH (default 200x150)")
    p.add_argument("--presets", default="tiny,small,classic", help="training-step presets ('' to skip)")
    p.add_argument("--batch", type=int, default=16, help="training batch size (default 16, the original's)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per figure (default 3)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads < 0:
        p.error("--threads must be >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    presets = [s.strip() for s in args.presets.split(",") if s.strip()]
    try:
        from core.diffusion.unet import PRESETS

        unknown = [name for name in presets if name not in PRESETS]
        if unknown:
            p.error(f"unknown preset(s) {', '.join(unknown)}; known: {', '.join(PRESETS)}")
    except ImportError:
        pass  # reported when the training step is skipped
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        p.error(f"--size must look like 200x150, got {args.size!r}")
    if args.images < 1 or args.repeats < 1 or args.batch < 1:
        p.error("--images, --repeats and --batch must be positive")

    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        root, cache = Path(tmp) / "dogs", Path(tmp) / "cache"
        t0 = time.perf_counter()
        make_jpegs(root, args.images, (w, h))
        print(f"{args.images} synthetic JPEGs of {w}x{h} in {time.perf_counter() - t0:.1f} s; "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, load average "
              f"{os.getloadavg()[0]:.1f}")
        decode = bench_decode(root, args.images, args.repeats)
        ds, cached = bench_cache(root, cache, args.images, args.repeats)
        batches = bench_batches(ds, root, args.repeats)
        steps = bench_train_step(presets, args.batch, args.repeats) if presets else {}

    print("\nSummary (images/s, medians)")
    best_pool = max(("thread", "process"), key=lambda k: decode[k])
    print(f"  first-build decode: {decode[best_pool]:,.0f} ({best_pool} pool; "
          f"thread/process = {decode['thread'] / decode['process']:.2f})")
    print(f"  cached dataset load: {cached:,.0f}")
    print(f"  get_batch: {batches[16]:,.0f} at batch 16, {batches[64]:,.0f} at batch 64")
    for name, r in steps.items():
        print(f"  train step {name:<6} {fmt_rate(r):>8}   -> get_batch is {batches[16] / r:,.0f}x faster; "
              f"first-build decode {decode[best_pool] / r:,.1f}x")
    if "classic" in steps:
        print(f"  one classic-preset epoch of 14,000 images here: {fmt_seconds(14000 / steps['classic'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
