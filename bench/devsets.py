"""Development sets of different character, for ``python -m bench.quality --suite``.

A recipe tuned on one set (the demo set's coloured shapes) need not carry to another, so the
quality benchmark can run the same arms on sets unlike each other, each drawn offline and
deterministically (numpy and PIL only, no downloads):

- ``demo``: core.data.demo's coloured shapes on scenery (JPEG);
- ``strokes``: 10 classes of thin-stroke glyphs (digit-like skeletons of lines and arcs, none
  copied from a dataset), white on black, grayscale saved as RGB; each glyph varied by a
  random affine (rotation, shear, scale, translation), a stroke width of 1-3 px, per-point
  jitter and a slight intensity change; drawn 4x larger and box-downsampled;
- ``textures``: 8 classes of colour textures filling the frame (stripes, checkerboard, dots,
  waves, blobs, bricks, rings, grid), each image with its own scale, phase, orientation and
  two colours.

Layout as the demo set's: ``OUT/<class>/<class>_0000.png``. Image i of a class is a pure
function of (set, seed, class, i), so the same seed gives byte-identical files and more
images per class keep the first ones. A new folder is built beside its place and renamed in;
into an existing one each file is written atomically.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from core.io.atomic import atomic_write_bytes, fsync_dir

DEVSETS = ("demo", "strokes", "textures")
STROKE_SS = 4  # strokes are drawn 4x larger, then box-downsampled: anti-aliased thin lines
TEXTURE_SS = 2

Points = list[tuple[float, float]]


# ---------------------------------------------------------------------------- strokes
# Skeletons in a box of about x in [-0.5, 0.5], y in [-0.8, 0.8] (y down); angles in degrees,
# 0 pointing right, 90 down.


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int = 16) -> Points:
    return [(cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a)))
            for a in np.linspace(a0, a1, n)]


GLYPHS: dict[str, list[Points]] = {
    "ring": [_arc(0, 0, 0.42, 0.75, 0, 360, 24)],
    "bar": [[(-0.25, -0.5), (0.05, -0.8), (0.05, 0.8)], [(-0.25, 0.8), (0.35, 0.8)]],
    "swan": [_arc(0, -0.38, 0.42, 0.4, 190, 400) + [(-0.45, 0.8), (0.5, 0.8)]],
    "bumps": [_arc(0, -0.4, 0.38, 0.38, 200, 450) + _arc(0, 0.38, 0.44, 0.4, 270, 520)],
    "fork": [[(0.2, 0.8), (0.2, -0.8), (-0.5, 0.3), (0.5, 0.3)]],
    "flag": [[(0.45, -0.8), (-0.35, -0.8), (-0.4, -0.1)] + _arc(0, 0.32, 0.45, 0.45, 230, 520)],
    "curl": [[(0.35, -0.8), (-0.25, -0.25)] + _arc(0, 0.38, 0.44, 0.4, 200, 560, 24)],
    "bend": [[(-0.45, -0.8), (0.45, -0.8), (-0.1, 0.8)]],
    "eight": [_arc(0, -0.42, 0.33, 0.36, 0, 360), _arc(0, 0.38, 0.42, 0.42, 0, 360)],
    "loop": [_arc(0, -0.4, 0.42, 0.4, 0, 360), [(0.42, -0.4), (0.3, 0.8)]],
}


def _affine(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    theta = math.radians(rng.uniform(-15, 15))
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    shear = np.array([[1.0, rng.uniform(-0.3, 0.3)], [0.0, 1.0]])
    scale = np.diag([rng.uniform(0.8, 1.1), rng.uniform(0.85, 1.1)])
    return rot @ shear @ scale, rng.uniform(-0.12, 0.12, 2)


def render_stroke(name: str, rng: np.random.Generator, size: int) -> Image.Image:
    S = size * STROKE_SS
    matrix, shift = _affine(rng)
    width = rng.uniform(1.0, 3.0) * STROKE_SS
    level = rng.uniform(190, 255)
    im = Image.new("L", (S, S), 0)
    d = ImageDraw.Draw(im)
    for line in GLYPHS[name]:
        pts = np.asarray(line) @ matrix.T + shift + rng.normal(0.0, 0.025, (len(line), 2))
        xy = [(S / 2 + x * S * 0.36, S / 2 + y * S * 0.36) for x, y in pts]
        fill = int(level * rng.uniform(0.9, 1.0))
        d.line(xy, fill=fill, width=max(1, round(width)), joint="curve")
        for x, y in (xy[0], xy[-1]):  # round caps
            d.ellipse([x - width / 2, y - width / 2, x + width / 2, y + width / 2], fill=fill)
    return im.reduce(STROKE_SS).convert("RGB")


# ---------------------------------------------------------------------------- textures
# Each pattern maps rotated, scaled coordinates (u, v, in periods) to a mask in [0, 1].


def _stripes(u, v, rng):
    return (np.sin(2 * np.pi * u + rng.uniform(0, 2 * np.pi)) > 0).astype(np.float32)


def _checker(u, v, rng):
    return ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)


def _dots(u, v, rng):
    r = rng.uniform(0.2, 0.35)
    return (((u % 1) - 0.5) ** 2 + ((v % 1) - 0.5) ** 2 < r * r).astype(np.float32)


def _waves(u, v, rng):
    bend = rng.uniform(0.15, 0.4) * np.sin(2 * np.pi * v / rng.uniform(1.5, 3.0))
    return 0.5 + 0.5 * np.sin(2 * np.pi * (u + bend) + rng.uniform(0, 2 * np.pi))


def _blobs(u, v, rng):
    k = int(rng.integers(3, 7))
    coarse = Image.fromarray(rng.normal(0.0, 1.0, (k, k)).astype(np.float32), mode="F")
    smooth = np.asarray(coarse.resize(u.shape[::-1], Image.Resampling.BICUBIC))
    return (smooth > 0).astype(np.float32)


def _bricks(u, v, rng):
    u, v = u * 0.6, v * 0.6  # a brick is wider than other patterns' periods: legible at 32 px
    row = np.floor(v * 2)
    x = u + 0.5 * (row % 2)
    return (((v * 2) % 1 < 0.15) | (x % 1 < 0.08)).astype(np.float32)


def _rings(u, v, rng):
    cu, cv = rng.uniform(-1, 1, 2)
    return (np.sin(2 * np.pi * np.hypot(u - cu, v - cv) + rng.uniform(0, 2 * np.pi)) > 0).astype(np.float32)


def _grid(u, v, rng):
    t = rng.uniform(0.1, 0.2)
    return ((u % 1 < t) | (v % 1 < t)).astype(np.float32)


TEXTURES: dict[str, Callable] = {"stripes": _stripes, "checker": _checker, "dots": _dots, "waves": _waves,
                                 "blobs": _blobs, "bricks": _bricks, "rings": _rings, "grid": _grid}


def _two_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    while True:
        a, b = rng.integers(0, 256, 3).astype(np.float32), rng.integers(0, 256, 3).astype(np.float32)
        if np.abs(a - b).sum() > 180:
            return a, b


def render_texture(name: str, rng: np.random.Generator, size: int) -> Image.Image:
    S = size * TEXTURE_SS
    period = S * rng.uniform(0.15, 0.4)
    theta = rng.uniform(0, np.pi)
    y, x = np.mgrid[0:S, 0:S].astype(np.float32) - S / 2
    u = (x * np.cos(theta) + y * np.sin(theta)) / period + rng.uniform(0, 1)
    v = (-x * np.sin(theta) + y * np.cos(theta)) / period + rng.uniform(0, 1)
    mask = TEXTURES[name](u, v, rng)[..., None]
    a, b = _two_colours(rng)
    arr = a * (1 - mask) + b * mask + rng.normal(0.0, 4.0, (S, S, 1))
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8)).reduce(TEXTURE_SS)


# ---------------------------------------------------------------------------- writing

RENDERERS: dict[str, tuple[Callable[[str, np.random.Generator, int], Image.Image], tuple[str, ...]]] = {
    "strokes": (render_stroke, tuple(GLYPHS)),
    "textures": (render_texture, tuple(TEXTURES)),
}


def classes_of(name: str) -> tuple[str, ...]:
    if name == "demo":
        from core.data.demo import CLASSES

        return tuple(sorted(CLASSES))
    return RENDERERS[name][1]


def render(name: str, class_name: str, index: int, *, size: int = 32, seed: int = 0) -> Image.Image:
    """Image ``index`` of ``class_name`` in set ``name`` (strokes or textures): a pure function
    of its arguments."""
    painter, classes = RENDERERS[name]
    rng = np.random.default_rng([seed, DEVSETS.index(name), classes.index(class_name), index])
    return painter(class_name, rng, size)


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", optimize=False)
    return buf.getvalue()


def _write(folder: Path, name: str, per_class: int, size: int, seed: int) -> dict[str, int]:
    for cls in classes_of(name):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = folder / cls / f"{cls}_{i:04d}.png"
            data = _png(render(name, cls, i, size=size, seed=seed))
            if not (path.is_file() and path.read_bytes() == data):
                atomic_write_bytes(path, data)
    return {cls: per_class for cls in classes_of(name)}


def make_devset(name: str, out_dir: Path | str, per_class: int, size: int = 32, seed: int = 0) -> dict[str, int]:
    """Write ``per_class`` images of each class of dev set ``name`` into ``out_dir/<class>/``;
    returns the number per class. ValueError for an unknown set or a bad number."""
    if name not in DEVSETS:
        raise ValueError(f"unknown dev set {name!r}; known: {', '.join(DEVSETS)}")
    if per_class < 1 or size < 8 or seed < 0:
        raise ValueError(f"dev set {name}: per_class >= 1, size >= 8 and seed >= 0, got {per_class}, {size}, {seed}")
    if name == "demo":
        from core.data.demo import make_demo_dataset

        return make_demo_dataset(out_dir, per_class=per_class, size=max(size, 16), seed=seed)
    out_dir = Path(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        return _write(out_dir, name, per_class, size, seed)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        counts = _write(tmp, name, per_class, size, seed)
        if out_dir.is_dir():
            out_dir.rmdir()
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(out_dir.parent)
    return counts


def preview(name: str, path: Path | str, *, per_class: int = 8, size: int = 32, seed: int = 0, scale: int = 3) -> Path:
    """A grid PNG: one row per class, ``per_class`` images each, enlarged ``scale`` times."""
    classes = classes_of(name)
    if name == "demo":
        from core.data.demo import render as demo_render

        def draw(cls, i):
            return demo_render(cls, i, size=size, seed=seed)
    else:
        def draw(cls, i):
            return render(name, cls, i, size=size, seed=seed)
    sheet = Image.new("RGB", (per_class * (size + 2), len(classes) * (size + 2)), (128, 128, 128))
    for r, cls in enumerate(classes):
        for i in range(per_class):
            sheet.paste(draw(cls, i), (i * (size + 2), r * (size + 2)))
    sheet = sheet.resize((sheet.width * scale, sheet.height * scale), Image.Resampling.NEAREST)
    atomic_write_bytes(Path(path), _png(sheet))
    return Path(path)


if __name__ == "__main__":  # python -m bench.devsets NAME OUT.png: a preview grid
    import sys

    print(preview(sys.argv[1], sys.argv[2]))
