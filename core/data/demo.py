"""An offline demo dataset: a few classes of procedurally drawn pictures.

So a newcomer without internet (or before scraping) can run the whole loop: stats, train
the ``tiny`` preset for a few minutes on a CPU, and sample images that clearly look like
the classes. Each class has its own shape and colour scheme, varied in position, scale,
orientation, colour and background, with a little sensor noise; files are 64x64 JPEGs in
``<out_dir>/<class>/<class>_0000.jpg`` (the scraper's ``data/<dataset>/<breed>/`` layout).

Deterministic: each image's random stream is derived from (seed, class, index) only, so the
same seed gives byte-identical files, and asking for more images per class keeps the first
ones unchanged.
"""

from __future__ import annotations

import io
import math
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from core.io.atomic import atomic_write_bytes, fsync_dir

Progress = Callable[[int, int, str], None]

DEFAULT_PER_CLASS = 300
DEFAULT_SIZE = 64
JPEG_QUALITY = 92
SUPERSAMPLE = 2  # draw at 2x and downsample: smooth edges like a photo's

Colour = tuple[int, int, int]


def _jitter(rng: random.Random, colour: Colour, amount: int = 25) -> Colour:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in colour)  # type: ignore[return-value]


def _gradient(size: int, top: Colour, bottom: Colour) -> Image.Image:
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    arr = np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t
    return Image.fromarray(np.repeat(arr, size, axis=1).astype(np.uint8))


def _ellipse(d: ImageDraw.ImageDraw, cx: float, cy: float, rx: float, ry: float, fill: Colour) -> None:
    d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=fill)


def _ground(d: ImageDraw.ImageDraw, rng: random.Random, S: int, lo: float, hi: float, fill: Colour) -> float:
    """Fill below a sloped, wavy skyline (no straight full-width edge: a photo's ground
    is never one pixel row, and the collage detector looks for exactly that). Returns its
    mean height."""
    y0 = S * rng.uniform(lo, hi)
    slope = rng.uniform(-0.25, 0.25)
    amp, freq, phase = S * rng.uniform(0.03, 0.08), rng.uniform(1.0, 3.0), rng.uniform(0, 2 * math.pi)
    pts = [(x, y0 + slope * (x - S / 2) + amp * math.sin(freq * 2 * math.pi * x / S + phase)) for x in range(0, S + 8, 8)]
    d.polygon([(0, S), *pts, (S, S)], fill=fill)
    return y0


def _scenery(im: Image.Image, rng: random.Random, S: int) -> None:
    """1-3 large, faint blobs (clouds, rocks, light patches) somewhere in the background, so
    two pictures of a class do not share one layout (perceptual hashes would call them
    near duplicates)."""
    d = ImageDraw.Draw(im)
    for _ in range(rng.randint(1, 3)):
        cx, cy = rng.uniform(0, S), rng.uniform(0, S)
        rx, ry = S * rng.uniform(0.1, 0.3), S * rng.uniform(0.06, 0.18)
        base = im.getpixel((int(min(S - 1, max(0, cx))), int(min(S - 1, max(0, cy)))))
        shift = rng.choice((-1, 1)) * rng.randint(25, 55)
        _ellipse(d, cx, cy, rx, ry, tuple(max(0, min(255, c + shift)) for c in base[:3]))


# ---------------------------------------------------------------------------- the classes
# Each painter gets a random stream and a square canvas side S and returns the picture.


def _sunflower(rng: random.Random, S: int) -> Image.Image:
    im = _gradient(S, _jitter(rng, (70, 130, 220)), _jitter(rng, (170, 210, 250)))
    _scenery(im, rng, S)
    d = ImageDraw.Draw(im)
    _ground(d, rng, S, 0.55, 0.9, _jitter(rng, (90, 160, 70), 30))
    cx, cy = S * rng.uniform(0.25, 0.75), S * rng.uniform(0.22, 0.6)
    r = S * rng.uniform(0.09, 0.2)
    d.line([(cx, cy), (cx + rng.uniform(-0.15, 0.15) * S, S)], fill=_jitter(rng, (50, 140, 50)), width=max(2, S // 24))
    petal = _jitter(rng, (250, 205, 30), 20)
    n = rng.randint(10, 14)
    turn = rng.uniform(0, math.pi)
    for k in range(n):
        a = turn + 2 * math.pi * k / n
        _ellipse(d, cx + math.cos(a) * r * 1.3, cy + math.sin(a) * r * 1.3, r * 0.45, r * 0.45, petal)
    _ellipse(d, cx, cy, r, r, _jitter(rng, (110, 65, 25), 20))
    return im


def _ladybug(rng: random.Random, S: int) -> Image.Image:
    im = _gradient(S, _jitter(rng, (60, 150, 60)), _jitter(rng, (30, 100, 35)))
    _scenery(im, rng, S)
    d = ImageDraw.Draw(im)
    vein = _jitter(rng, (90, 180, 90))
    for _ in range(rng.randint(2, 4)):  # leaf veins: short diagonal strokes
        x, y = S * rng.uniform(0, 1), S * rng.uniform(0, 1)
        a, length = rng.uniform(0, math.pi), S * rng.uniform(0.2, 0.6)
        d.line([(x, y), (x + math.cos(a) * length, y + math.sin(a) * length)], fill=vein, width=max(1, S // 40))
    cx, cy = S * rng.uniform(0.28, 0.72), S * rng.uniform(0.3, 0.7)
    r = S * rng.uniform(0.15, 0.3)
    up = rng.random() < 0.5
    hy = cy - r * 0.95 if up else cy + r * 0.95
    _ellipse(d, cx, hy, r * 0.45, r * 0.4, (20, 20, 20))
    _ellipse(d, cx, cy, r, r * 0.9, _jitter(rng, (215, 30, 30), 20))
    d.line([(cx, cy - r * 0.9), (cx, cy + r * 0.9)], fill=(25, 20, 20), width=max(1, S // 48))
    for _ in range(rng.randint(4, 7)):
        a, rr = rng.uniform(0, 2 * math.pi), rng.uniform(0.2, 0.7) * r
        _ellipse(d, cx + math.cos(a) * rr, cy + math.sin(a) * rr * 0.9, r * 0.13, r * 0.13, (15, 15, 15))
    return im


def _snowman(rng: random.Random, S: int) -> Image.Image:
    im = _gradient(S, _jitter(rng, (15, 25, 70)), _jitter(rng, (50, 70, 130)))
    _scenery(im, rng, S)
    d = ImageDraw.Draw(im)
    if rng.random() < 0.6:  # the moon
        m = S * rng.uniform(0.05, 0.1)
        _ellipse(d, S * rng.uniform(0.1, 0.9), S * rng.uniform(0.08, 0.35), m, m, (250, 245, 200))
    ground = _ground(d, rng, S, 0.72, 0.92, _jitter(rng, (230, 235, 245), 10))
    for _ in range(rng.randint(10, 25)):  # snowflakes
        _ellipse(d, rng.uniform(0, S), rng.uniform(0, ground), S / 90, S / 90, (240, 240, 250))
    cx = S * rng.uniform(0.25, 0.75)
    r = S * rng.uniform(0.1, 0.18)
    white = _jitter(rng, (245, 245, 250), 8)
    y = ground - r * 0.8
    _ellipse(d, cx, y, r, r, white)
    y2 = y - r * 1.5
    _ellipse(d, cx, y2, r * 0.72, r * 0.72, white)
    y3 = y2 - r * 1.05
    _ellipse(d, cx, y3, r * 0.5, r * 0.5, white)
    for dx in (-0.18, 0.18):
        _ellipse(d, cx + dx * r, y3 - 0.1 * r, r * 0.07, r * 0.07, (10, 10, 10))
    side = 1 if rng.random() < 0.5 else -1
    d.polygon([(cx, y3), (cx + side * r * 0.6, y3 + 0.08 * r), (cx, y3 + 0.15 * r)], fill=(240, 120, 20))
    d.rectangle([cx - r * 0.4, y3 - r * 0.9, cx + r * 0.4, y3 - r * 0.45], fill=(20, 20, 25))
    return im


def _goldfish(rng: random.Random, S: int) -> Image.Image:
    im = _gradient(S, _jitter(rng, (40, 180, 200)), _jitter(rng, (10, 70, 120)))
    _scenery(im, rng, S)
    d = ImageDraw.Draw(im)
    for _ in range(rng.randint(3, 7)):  # bubbles
        x, y, r = rng.uniform(0, S), rng.uniform(0, S), S * rng.uniform(0.015, 0.04)
        d.ellipse([x - r, y - r, x + r, y + r], outline=(200, 240, 255), width=max(1, S // 64))
    if rng.random() < 0.7:  # sand or weed at the bottom
        _ground(d, rng, S, 0.8, 0.95, _jitter(rng, (200, 180, 120), 25))
    cx, cy = S * rng.uniform(0.3, 0.7), S * rng.uniform(0.28, 0.68)
    rx = S * rng.uniform(0.15, 0.27)
    ry = rx * rng.uniform(0.5, 0.65)
    body = _jitter(rng, (250, 130, 20), 20)
    left = rng.random() < 0.5  # which way it swims
    sgn = -1 if left else 1
    tail_x = cx - sgn * rx * 0.8
    d.polygon([(tail_x, cy), (tail_x - sgn * rx * 0.7, cy - ry * 1.2), (tail_x - sgn * rx * 0.7, cy + ry * 1.2)], fill=body)
    _ellipse(d, cx, cy, rx, ry, body)
    d.polygon([(cx, cy - ry * 0.8), (cx - sgn * rx * 0.5, cy - ry * 1.7), (cx + sgn * rx * 0.2, cy - ry * 0.8)], fill=body)
    _ellipse(d, cx + sgn * rx * 0.55, cy - ry * 0.2, ry * 0.22, ry * 0.22, (255, 255, 255))
    _ellipse(d, cx + sgn * rx * 0.58, cy - ry * 0.2, ry * 0.11, ry * 0.11, (10, 10, 10))
    return im


def _cactus(rng: random.Random, S: int) -> Image.Image:
    im = _gradient(S, _jitter(rng, (250, 150, 60)), _jitter(rng, (250, 210, 130)))
    _scenery(im, rng, S)
    d = ImageDraw.Draw(im)
    sun_x = S * rng.uniform(0.1, 0.9)
    sun_r = S * rng.uniform(0.05, 0.1)
    _ellipse(d, sun_x, S * rng.uniform(0.12, 0.4), sun_r, sun_r, (255, 240, 170))
    sand = _ground(d, rng, S, 0.68, 0.88, _jitter(rng, (215, 180, 110), 20))
    green = _jitter(rng, (40, 130, 50), 20)
    cx = S * rng.uniform(0.25, 0.75)
    w = S * rng.uniform(0.07, 0.13)
    top = S * rng.uniform(0.3, 0.45)  # a trunk spanning the frame would read as a collage seam
    d.rounded_rectangle([cx - w, top, cx + w, sand + S * 0.03], radius=w, fill=green)
    for side in (-1, 1):
        if rng.random() < 0.85:
            ay = S * rng.uniform(0.4, 0.6)
            ax = cx + side * w * 2.2
            d.rounded_rectangle([min(cx, ax) - w * 0.45, ay - w * 0.45, max(cx, ax) + w * 0.45, ay + w * 0.45], radius=w * 0.45, fill=green)
            d.rounded_rectangle([ax - w * 0.45, ay - S * rng.uniform(0.12, 0.2), ax + w * 0.45, ay + w * 0.45], radius=w * 0.45, fill=green)
    return im


CLASSES: dict[str, Callable[[random.Random, int], Image.Image]] = {
    "cactus": _cactus,
    "goldfish": _goldfish,
    "ladybug": _ladybug,
    "snowman": _snowman,
    "sunflower": _sunflower,
}


# ---------------------------------------------------------------------------- writing


def render(class_name: str, index: int, *, size: int = DEFAULT_SIZE, seed: int = 0, attempt: int = 0) -> Image.Image:
    """One picture of ``class_name``; a pure function of (class, index, size, seed,
    attempt). ``attempt`` > 0 draws another picture for the same slot (see _Judge)."""
    painter = CLASSES[class_name]
    key = f"ddpm-demo:{seed}:{class_name}:{index}" + (f":{attempt}" if attempt else "")
    rng = random.Random(key)  # str seeds are stable across runs
    S = size * SUPERSAMPLE
    im = painter(rng, S)
    if rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    im = im.reduce(SUPERSAMPLE)  # box filter over each 2x2 block: cheap anti-aliasing
    noise_rng = np.random.default_rng([seed, sorted(CLASSES).index(class_name), index, attempt])
    arr = np.asarray(im, dtype=np.float32) + noise_rng.normal(0.0, 3.0, (size, size, 3))
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))


def make_demo_dataset(
    out_dir: Path | str,
    *,
    per_class: int = DEFAULT_PER_CLASS,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, int]:
    """Write ``per_class`` JPEGs for each class into ``out_dir/<class>/``; returns the
    number written per class.

    A new (missing or empty) ``out_dir`` is built whole in a hidden temp folder beside it
    and renamed into place, so a failure (a full disk, Ctrl-C) leaves no partial dataset
    behind and the next run starts clean. Into an existing folder, files of the same name
    are replaced (atomically), other files are left alone, and an identical existing file
    is not rewritten."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    out_dir = Path(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        return _write_classes(out_dir, per_class, size, seed, progress)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        counts = _write_classes(tmp, per_class, size, seed, progress)
        if out_dir.is_dir():
            out_dir.rmdir()  # empty (checked above); fails, keeping both, if it filled up meanwhile
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # ours, and partial
        raise
    fsync_dir(out_dir.parent)
    return counts


class _Judge:
    """Would the scan flag this picture? The set is meant to pass ``data scan`` with the
    default rules, so a picture that reads as a collage, or as a near duplicate of an
    earlier picture of its class, is drawn again (next ``attempt``). Judged on the
    decoded JPEG, the bytes the scan will read, with a margin below each limit. Only
    earlier pictures of the same class count: image i depends on images < i, so asking
    for more per class keeps the first ones."""

    MAX_ATTEMPTS = 50

    def __init__(self) -> None:
        from core.data import curation, image_features

        self.features = image_features.image_features
        d = curation.ScanOptions()
        self.collage = d.collage_threshold - 0.15
        self.near_p, self.near_d = d.near_phash + 2, d.near_dhash + 2
        self.ph: list[int] = []
        self.dh: list[int] = []

    def new_class(self) -> None:
        self.ph, self.dh = [], []

    def accept(self, jpeg: bytes) -> bool:
        ft = self.features(Image.open(io.BytesIO(jpeg)).convert("RGB"))
        p, d = int(ft["phash"], 16), int(ft["dhash"], 16)
        if ft["collage"] >= self.collage:
            return False
        if any((p ^ q).bit_count() <= self.near_p and (d ^ e).bit_count() <= self.near_d
               for q, e in zip(self.ph, self.dh)):
            return False
        self.ph.append(p)
        self.dh.append(d)
        return True


def draw_jpeg(judge: _Judge, name: str, index: int, size: int, seed: int) -> bytes:
    """The JPEG of slot ``index``: the first attempt the judge accepts."""
    for attempt in range(_Judge.MAX_ATTEMPTS):
        buf = io.BytesIO()
        render(name, index, size=size, seed=seed, attempt=attempt).save(buf, "JPEG", quality=JPEG_QUALITY)
        if judge.accept(buf.getvalue()):
            break
    return buf.getvalue()  # never seen: 50 rejections in a row; keep the last one


def _write_classes(out_dir: Path, per_class: int, size: int, seed: int, progress: Progress | None) -> dict[str, int]:
    total = per_class * len(CLASSES)
    done = 0
    counts: dict[str, int] = {}
    every = max(1, total // 100)
    judge = _Judge()
    for name in sorted(CLASSES):
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        judge.new_class()
        for i in range(per_class):
            data = draw_jpeg(judge, name, i, size, seed)
            path = folder / f"{name}_{i:04d}.jpg"
            try:
                same = path.stat().st_size == len(data) and path.read_bytes() == data
            except OSError:
                same = False
            if not same:
                atomic_write_bytes(path, data)
            done += 1
            if progress is not None and (done % every == 0 or done == total):
                progress(done, total, f"drawing {name}")
        counts[name] = per_class
    return counts
