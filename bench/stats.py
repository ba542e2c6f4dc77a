"""Speed of `data stats` and `data scan` on a generated dataset, first run vs rerun;
optionally (--thresholds) the figures behind the curation thresholds.

    python -m bench.stats                      # 3000 files, 12 breeds
    python -m bench.stats --files 14000 --stats-only   # stats at the issue's size
    python -m bench.stats --thresholds         # collage / near-duplicate figures

Prints medians over repeats and ratios against a baseline measured in the same run (the
machine is shared and noisy): stats with a cold cache vs a warm one; a scan decoding
everything with 1 thread vs 2 threads vs 2 processes; a rerun with nothing changed and
with 1% of the files changed vs the first scan.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import fmt_seconds, median, time_repeats
from core.data.curation import ScanOptions, dataset_stats, near_pairs, scan_dataset
from core.data.image_features import analysis_view, collage_score
from core.data.demo import CLASSES, render


def make_dataset(root: Path, files: int, size: int) -> None:
    """``files`` JPEGs of ``size`` px over 12 breeds of unequal size (1:3 imbalance)."""
    names = sorted(CLASSES)
    weights = np.linspace(1.0, 3.0, 12)
    counts = np.floor(weights / weights.sum() * files).astype(int)
    counts[-1] += files - counts.sum()
    k = 0
    for b, n in enumerate(counts):
        folder = root / f"breed_{b:02d}"
        folder.mkdir(parents=True)
        for i in range(n):
            render(names[k % len(names)], k, size=size).save(folder / f"{i:05d}.jpg", quality=88)
            k += 1


def fresh(path: Path) -> None:
    if path.exists():
        path.unlink()


def bench_speed(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-stats-"))
    try:
        data = tmp / "dogs"
        t0 = time.perf_counter()
        make_dataset(data, args.files, args.size)
        print(f"dataset: {args.files} JPEGs of {args.size}x{args.size} px in 12 breeds "
              f"(generated in {fmt_seconds(time.perf_counter() - t0)})")

        cache = tmp / "stats.json"
        cold = time_repeats(lambda: (fresh(cache), dataset_stats(data, cache_path=cache)), args.repeats, warmup=1)
        warm = time_repeats(lambda: dataset_stats(data, cache_path=cache), args.repeats, warmup=1)
        print(f"stats  cold cache (header reads)  median {fmt_seconds(median(cold))}")
        print(f"stats  warm cache (stat only)     median {fmt_seconds(median(warm))}   "
              f"x{median(cold) / median(warm):.1f} faster")

        if args.stats_only:
            return
        # First scans on a subset (full decode is the slow part), one per configuration.
        subset = tmp / "subset"
        shutil.copytree(data, subset, ignore=lambda d, names: [n for n in names if n.endswith(".jpg") and int(n[:5]) >= args.scan_per_breed])
        n_sub = sum(1 for _ in subset.rglob("*.jpg"))
        rp = tmp / "r.json"
        feats = tmp / "f.json"
        results = {}
        for label, opts in [("1 thread", ScanOptions(workers=1)), ("2 threads", ScanOptions(workers=2, pool="thread")),
                            ("2 processes", ScanOptions(workers=2, pool="process"))]:
            results[label] = time_repeats(lambda: (fresh(feats), scan_dataset(subset, report_path=rp, options=opts, cache_path=feats)),
                                          args.repeats, warmup=0)
        base = median(results["1 thread"])
        for label, times in results.items():
            print(f"scan   first run, {n_sub} files, {label:11s} median {fmt_seconds(median(times))}   "
                  f"x{base / median(times):.2f} vs 1 thread   ({median(times) / n_sub * 1e3:.1f} ms/file)")

        # Full set: first scan once, then reruns.
        start = time.perf_counter()
        scan_dataset(data, report_path=rp, cache_path=feats)
        first = time.perf_counter() - start
        rerun = time_repeats(lambda: scan_dataset(data, report_path=rp, cache_path=feats), args.repeats, warmup=0)
        files = sorted(data.rglob("*.jpg"))
        touched = files[:: 100]

        def touch_and_scan() -> None:
            for p in touched:
                os.utime(p)  # new mtime: must be decoded again
            scan_dataset(data, report_path=rp, cache_path=feats)

        changed = time_repeats(touch_and_scan, args.repeats, warmup=0)
        print(f"scan   first run, all {len(files)} files (2 threads)  {fmt_seconds(first)}")
        print(f"scan   rerun, nothing changed       median {fmt_seconds(median(rerun))}   x{first / median(rerun):.0f} faster")
        print(f"scan   rerun, {len(touched)} files changed (1%) median {fmt_seconds(median(changed))}   "
              f"x{first / median(changed):.0f} faster")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _test_generators():
    """The photo-like, dog-like and collage generators of tests/core/test_curation.py."""
    path = Path(__file__).resolve().parent.parent / "tests" / "core" / "test_curation.py"
    spec = importlib.util.spec_from_file_location("curation_corpus", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def held_out_photo(seed: int, w: int, h: int):
    """A photo-like image from a generator the tests never use (so thresholds tuned on
    the tests' images are checked on images they were not tuned on): a multi-octave
    value-noise colour field, a soft subject blob, a random texture strength, blur and
    sensor noise."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed + 880_000)
    field = np.zeros((h, w, 3), np.float32)
    for octave, weight in ((3, 1.0), (7, 0.5), (17, 0.25), (41, 0.12 * rng.uniform(0, 3))):
        cells = rng.uniform(0, 255, (octave, octave, 3)).astype(np.uint8)
        layer = np.asarray(Image.fromarray(cells).resize((w, h), Image.Resampling.BICUBIC), np.float32)
        field += weight * (layer - 128)
    field = field / 1.6 + rng.uniform(60, 190, 3)
    im = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    cx, cy, r = w * rng.uniform(0.3, 0.7), h * rng.uniform(0.3, 0.7), min(w, h) * rng.uniform(0.15, 0.35)
    d.ellipse([cx - r * rng.uniform(0.8, 1.6), cy - r, cx + r * rng.uniform(0.8, 1.6), cy + r],
              fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))
    arr = np.asarray(im, np.float32) + rng.normal(0, rng.uniform(2, 12), (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _jpeg(im, q: int):
    from PIL import Image

    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=q)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def bench_thresholds(args: argparse.Namespace) -> None:
    """The threshold figures on two corpora: the tests' generated images (what the
    thresholds were tuned on) and the held-out generator above."""
    g = _test_generators()
    corpora = {
        "tests' images": lambda i, w, h: (g.natural_image if i % 2 else g.dog_image)(1000 + i, w, h),
        "held-out images": held_out_photo,
    }
    for name, photo in corpora.items():
        print(f"\n== {name} ==")
        _thresholds_on(photo, g.collage, args.samples, np.random.default_rng(0))
    big_p = np.random.default_rng(1).integers(0, 2**63, 14000, dtype=np.int64).astype(np.uint64)
    big_d = np.random.default_rng(2).integers(0, 2**63, 14000, dtype=np.int64).astype(np.uint64)
    start = time.perf_counter()
    near_pairs(big_p, big_d, 10, 16)
    print(f"\nnear-duplicate search over 14000 hashes (all pairs, numpy popcount): {fmt_seconds(time.perf_counter() - start)}")


def _thresholds_on(photo, collage, n: int, rng: np.random.Generator) -> None:
    from PIL import Image

    clean = []
    for i in range(n):
        w, h = int(rng.integers(120, 400)), int(rng.integers(100, 400))
        clean.append(_jpeg(photo(i, w, h), int(rng.integers(60, 95))))
    thr = ScanOptions().collage_threshold
    cs = np.array([collage_score(np.asarray(im)) for im in clean])  # as the scan scores it: full size
    print(f"collage score, {n} photo-like images (120-400 px, JPEG q60-95): median {np.median(cs):.2f}, "
          f"p95 {np.quantile(cs, .95):.2f}, max {cs.max():.2f}; flagged at {thr}: {(cs >= thr).sum()}")
    _entropy_and_grey(clean, n, rng)
    layouts = [(2, 2), (3, 3), (1, 2), (2, 1), (2, 3)]
    scores: dict[str, list[float]] = {"grid": [], "single split": []}
    for i in range(n):
        rows, cols = layouts[i % len(layouts)]
        tiles = [photo(5000 + i * 20 + k, 150, 130) for k in range(rows * cols)]
        im = collage(tiles, rows, cols, tile=int(rng.integers(60, 160)), gutter=int(rng.choice([0, 0, 2, 5, 10])))
        if i % 3 == 0:
            f = rng.uniform(0.5, 1.0)
            im = im.resize((max(64, int(im.width * f)), max(64, int(im.height * f))), Image.Resampling.LANCZOS)
        scores["single split" if 1 in (rows, cols) else "grid"].append(collage_score(np.asarray(_jpeg(im, 80))))
    for kind, vals in scores.items():
        v = np.array(vals)
        print(f"collage score, {len(v)} {kind} collages (tiles 60-160 px, gutters 0-10, 1/3 resized): "
              f"min {v.min():.2f}, p05 {np.quantile(v, .05):.2f}, median {np.median(v):.2f}; flagged {(v >= thr).sum()}/{len(v)}")
    _near_duplicates(clean, rng)


def _entropy_and_grey(clean: list, n: int, rng: np.random.Generator) -> None:
    from PIL import Image

    from core.data.image_features import _entropy_bits

    def ent_chroma(im) -> tuple[float, float]:
        arr = np.asarray(analysis_view(im))
        chroma = float((arr.max(axis=2).astype(np.int16) - arr.min(axis=2)).mean())
        return _entropy_bits(np.asarray(analysis_view(im).convert("L"))), chroma

    photo = np.array([ent_chroma(im) for im in clean])
    flat = []
    for _ in range(n):
        level = rng.uniform(20, 235, 3)
        arr = np.clip(level + rng.normal(0, rng.uniform(0.5, 4.0), (128, 128, 3)), 0, 255).astype(np.uint8)
        flat.append(ent_chroma(_jpeg(Image.fromarray(arr), int(rng.integers(60, 95))))[0])
    grey = np.array([ent_chroma(_jpeg(im.convert("L").convert("RGB"), int(rng.integers(60, 95))))[1] for im in clean])
    muted = np.array([ent_chroma(_jpeg(Image.blend(im.convert("L").convert("RGB"), im, 0.1), 90))[1] for im in clean])
    print(f"entropy (bits), photo-like images: min {photo[:, 0].min():.2f}, median {np.median(photo[:, 0]):.2f}; "
          f"flat colour + noise (sigma 0.5-4, JPEG): max {max(flat):.2f}, median {np.median(flat):.2f}  "
          f"(threshold {ScanOptions().min_entropy})")
    print(f"channel spread, photo-like: min {photo[:, 1].min():.1f}; grey photos saved as RGB JPEG: max {grey.max():.2f}; "
          f"photos at 10% saturation: min {muted.min():.1f}, median {np.median(muted):.1f}  "
          f"(threshold {ScanOptions().max_gray_chroma})")


def _near_duplicates(clean: list, rng: np.random.Generator) -> None:
    import imagehash
    from PIL import Image, ImageEnhance

    def hashes(im) -> tuple[int, int]:
        gray = analysis_view(im).convert("L")  # as the scan hashes it
        return int(str(imagehash.phash(gray)), 16), int(str(imagehash.dhash(gray)), 16)

    H = np.array([hashes(im) for im in clean], dtype=np.uint64)
    iu = np.triu_indices(len(H), 1)
    dp = np.bitwise_count(H[:, 0][:, None] ^ H[:, 0][None, :])[iu]
    dd = np.bitwise_count(H[:, 1][:, None] ^ H[:, 1][None, :])[iu]
    near_p, near_d = [], []
    for im in clean:
        w, h = im.size
        c, s = rng.uniform(0.0, 0.06), rng.uniform(0.5, 1.0)
        t = im.crop((int(w * c), int(h * c), w - int(w * c), h - int(h * c)))
        t = _jpeg(t.resize((max(32, int(w * s)), max(32, int(h * s))), Image.Resampling.BILINEAR), int(rng.integers(40, 90)))
        if rng.random() < 0.25:
            t = ImageEnhance.Brightness(t).enhance(rng.uniform(0.85, 1.15))
        a, b = hashes(im), hashes(t)
        near_p.append(bin(a[0] ^ b[0]).count("1"))
        near_d.append(bin(a[1] ^ b[1]).count("1"))
    np_, nd_ = np.array(near_p), np.array(near_d)
    print(f"pHash distance, {len(dp)} pairs of distinct images: min {dp.min()}, p0.1 {np.quantile(dp, .001):.0f}, "
          f"p1 {np.quantile(dp, .01):.0f}, median {np.median(dp):.0f}")
    print(f"pHash distance, {len(np_)} near copies (crop 0-6%, scale 50-100%, JPEG q40-90, 1/4 brightness +-15%): "
          f"median {np.median(np_):.0f}, p95 {np.quantile(np_, .95):.0f}, max {np_.max()}")
    print("  pHash<=P and dHash<=D: false pairs among distinct / near copies caught")
    for P in (8, 10, 12, 14):
        row = "  ".join(f"D{D}: {((dp <= P) & (dd <= D)).sum()}/{((np_ <= P) & (nd_ <= D)).sum()}" for D in (12, 16, 20))
        print(f"  P{P:2d}  {row}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=3000)
    p.add_argument("--size", type=int, default=160, help="image side in px (default 160)")
    p.add_argument("--scan-per-breed", type=int, default=60, help="files per breed in the first-scan comparison")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--stats-only", action="store_true", help="time `data stats` only (e.g. with --files 14000)")
    p.add_argument("--thresholds", action="store_true", help="print the threshold figures instead of speeds")
    p.add_argument("--samples", type=int, default=150, help="images per group for --thresholds")
    args = p.parse_args()
    if args.thresholds:
        bench_thresholds(args)
    else:
        bench_speed(args)


if __name__ == "__main__":
    main()
