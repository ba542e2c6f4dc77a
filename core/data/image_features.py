"""What the dataset scan measures on one image: size, an exact pixel hash, perceptual
hashes (pHash, dHash), grey-level entropy, colourfulness and a collage score. The rules
that turn these into flags live in core.data.curation; core.data.demo also measures its
drawings here so that its own scan passes them."""

from __future__ import annotations

import hashlib
import math

import numpy as np
from PIL import Image

from core.data.images import ImageLoadError, load_rgb

FEATURE_VERSION = 2  # bump when analyse_image changes what it measures (2: collage at seam views)
ANALYSIS_MAX_SIDE = 256  # features other than the pixel hash are measured at this size (speed)
COLLAGE_MAX_SIDE = 1024  # seams are looked for at up to this many px across them (see _seam_views)


def _entropy_bits(gray: np.ndarray) -> float:
    hist = np.bincount(gray.ravel(), minlength=256).astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    return float(-(p * np.log2(p)).sum())


def _seam_profile(x: np.ndarray) -> np.ndarray:
    """For an (L, M, 3) float image, how strongly each boundary between row r-1 and r
    (index r, 1..L-1) is a straight seam across the whole width: the share of columns where
    the colour jumps there much more than 4-5 rows away (a tile edge is a step in nearly every
    column; texture and natural edges are not straight across the whole image), or 1.0 at
    the centre of a thin uniform band (a gutter) with busy rows on both sides."""
    L, M = x.shape[:2]
    d = np.abs(np.diff(x, axis=0)).max(axis=2)  # (L-1, M): jump between row r and r+1
    # Average along the seam direction (7 columns): a straight seam survives, noise does not.
    k = min(7, M)
    c = np.cumsum(np.pad(d, ((0, 0), (1, 0))), axis=1)
    d = (c[:, k:] - c[:, :-k]) / k
    n = d.shape[0]
    dp = np.pad(d, ((5, 5), (0, 0)), mode="edge")
    # Rows 4-5 away: far enough that both edges of a thin gutter (or a seam smeared by
    # resizing) do not hide each other, near enough to be the same tile's texture.
    around = np.maximum.reduce([dp[0:n], dp[1 : n + 1], dp[9 : n + 9], dp[10 : n + 10]])
    if n >= 120:
        # ... unless those rows are the far edge of a gutter 3-5 px wide: then rows 7-8
        # away. Not in small images (the 64 px demo pictures), where 8 rows is another
        # part of the picture: measured, 29 instead of 6 of the demo set's 1,500 flagged.
        dq = np.pad(d, ((8, 8), (0, 0)), mode="edge")
        farther = np.maximum.reduce([dq[0:n], dq[1 : n + 1], dq[15 : n + 15], dq[16 : n + 16]])
        around = np.minimum(around, farther)
    step = (d >= 10.0) & (d >= 2.0 * around + 3.0)
    # A seam smeared over up to three rows, or a gutter's two edges, count once per column.
    near = step.copy()
    near[1:] |= step[:-1]
    near[:-1] |= step[1:]
    prof = np.zeros(L + 1)
    prof[1:L] = near.mean(axis=1)

    # Gutters: rows of one flat colour across the width (>= 90% of pixels within 10 levels of
    # the row's median; JPEG ringing spoils the rest), a band at most 8% of the side thick,
    # with busy rows within 3 rows on both sides (a sky touching the frame is not a gutter).
    med = np.median(x, axis=1, keepdims=True)
    flat = (np.abs(x - med).max(axis=2) < 10.0).mean(axis=1)  # (L,)
    is_flat = (flat >= 0.9).tolist()
    # A band is one colour: a white gutter next to a flat blue sky is two bands.
    same_colour = [False] + (np.abs(np.diff(med[:, 0, :], axis=0)).max(axis=1) < 12.0).tolist()
    r = 0
    while r < L:
        if not is_flat[r]:
            r += 1
            continue
        start = r
        r += 1
        while r < L and is_flat[r] and same_colour[r]:
            r += 1
        end = r  # band is [start, end)
        if start >= 3 and end <= L - 3 and end - start <= max(2, 0.08 * L):
            # ... and the band's colour differs from the rows just outside it in most
            # columns: a gutter borders tiles along its whole length, a patch of sky
            # between two objects does not.
            colour = med[(start + end) // 2]
            above = (np.abs(x[max(0, start - 4) : start] - colour).max(axis=2) > 12.0).any(axis=0).mean()
            below = (np.abs(x[end : end + 4] - colour).max(axis=2) > 12.0).any(axis=0).mean()
            if min(above, below) >= 0.6:
                prof[(start + end) // 2] = max(prof[(start + end) // 2], min(above, below))
    return prof


def _axis_score(prof: np.ndarray, L: int) -> tuple[float, float]:
    """(grid, free): how well seams sit at the 1/n grid lines of an n-tile split
    (n = 2, 3, 4; the weakest line counts), and the strongest seam anywhere in the middle 70%."""
    tol = max(2, int(round(0.03 * L)))
    grid = 0.0
    for n in (2, 3, 4):
        lines = []
        for k in range(1, n):
            c = int(round(k * L / n))
            lines.append(prof[max(1, c - tol) : min(L, c + tol + 1)].max())
        grid = max(grid, min(lines))
    lo, hi = int(0.15 * L), int(math.ceil(0.85 * L))
    free = float(prof[lo:hi].max()) if hi > lo else 0.0
    return float(grid), free


def _seam_views(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two float views of an (H, W, 3) image, each shrunk only *along* the seams it is
    for: horizontal seams are looked for at full height (up to COLLAGE_MAX_SIDE) with rows
    averaged down to ANALYSIS_MAX_SIDE columns, vertical seams the other way round. A box
    filter along a seam keeps a 1-px gutter a uniform 1-px line (and averages texture
    away), where shrinking across it would blend the gutter into the tiles (a 300x200
    grid with 1-2 px gutters scored 0.97 at full size and 0.0 at 256x171)."""
    H, W = x.shape[:2]
    im = Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)) if x.dtype != np.uint8 else Image.fromarray(x)
    across_h, across_w = min(H, COLLAGE_MAX_SIDE), min(W, COLLAGE_MAX_SIDE)
    rows = im.resize((min(W, ANALYSIS_MAX_SIDE), across_h), Image.Resampling.BOX)
    cols = im.resize((across_w, min(H, ANALYSIS_MAX_SIDE)), Image.Resampling.BOX)
    return np.asarray(rows, dtype=np.float32), np.asarray(cols, dtype=np.float32)


def collage_score(rgb: np.ndarray) -> float:
    """0..1: how much an (H, W, 3) uint8/float image looks like photos tiled in a grid.

    Per axis, ``_seam_profile`` + ``_axis_score`` give ``grid`` (seams on the 1/n lines)
    and ``free`` (the strongest seam anywhere in the middle). The score is the largest of:
    * both axes split (2x2, 3x3, 2x3...): (m - 0.3) / 0.7 with m = min over axes of
      max(grid, 0.8 free);
    * one axis split on a grid line (2x1, 1x2): (grid - 0.5) / 0.5, as a real straight
      horizon or a long object edge on a plain background reaches grid ~0.7 on its own;
    A single seam off the grid lines is not enough on its own: a clean horizon does that
    (one generated photo reached free = 0.84, a demo picture's wavy sand line 1.0); off-grid
    seams only count on the second axis of a two-axis split (unequal tiles).

    Measured on 150 generated photo-like images (sizes 120-400 px, JPEG q60-95) vs 150
    collages (2x2/3x3/1x2/2x1/2x3, tiles 60-160 px, gutters 0-10 px, a third resized):
    photos max 0.29 (none flagged); collages flagged at 0.5: 56-58/60 single splits,
    87-89/90 grids (two random draws); the demo set's 64 px clip-art pictures: 6/1500
    (0 since the demo generator redraws them). ``python -m bench.stats --thresholds``
    reprints these figures.

    Images over ANALYSIS_MAX_SIDE are scored on ``_seam_views`` too (the larger score
    counts). Measured (textured tiles as in tests/core/test_curation.py, JPEG q88, 486 grids 2x3/3x2/3x3,
    300-1200 px, gutters 1-4 px white/light grey/black, half shrunk to 200 px): every grid
    whose gutters are still >= 0.9 px wide after all resizing scored >= 0.5 (the 256 px
    score missed 84 of a similar 324; issue 12's 3x2 300x200 grid: 0.97 full size, 0.0 at
    256 px); sub-pixel gutters
    (0.17-0.67 px) are missed; 360 textured photos 300-1000 px: max < 0.3. A mid-grey
    gutter on tiles of the same mean grey is missed (chroma subsampling tints it)."""
    x = np.asarray(rgb)
    H, W = x.shape[:2]
    if min(H, W) < 48:
        return 0.0
    if max(H, W) <= ANALYSIS_MAX_SIDE:
        return _grid_score(x.astype(np.float32), x.astype(np.float32))
    small = np.asarray(analysis_view(Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))), dtype=np.float32)
    if min(small.shape[:2]) < 48:
        return 0.0  # a banner: odd_aspect already says it; its short side has no room for tiles
    # Gutters of 1-2 px survive only in the views shrunk along the seams; wider ones are
    # found as well at the analysis size (as before): the larger of the two.
    return max(_grid_score(*_seam_views(x)), _grid_score(small, small))


def _grid_score(rows_view: np.ndarray, cols_view: np.ndarray) -> float:
    """collage_score's formula on a view for horizontal seams and one for vertical seams."""
    gy, fy = _axis_score(_seam_profile(rows_view), rows_view.shape[0])  # horizontal seams (split rows)
    cols_t = np.ascontiguousarray(cols_view.transpose(1, 0, 2))
    gx, fx = _axis_score(_seam_profile(cols_t), cols_t.shape[0])  # vertical seams
    two_axis = (min(max(gy, 0.8 * fy), max(gx, 0.8 * fx)) - 0.3) / 0.7
    one_axis = (max(gy, gx) - 0.5) / 0.5
    return round(float(np.clip(max(two_axis, one_axis), 0.0, 1.0)), 4)


def analysis_view(im: Image.Image) -> Image.Image:
    """The image at most ANALYSIS_MAX_SIDE px (box filter): what entropy, chroma, hashes
    and the collage score are measured on."""
    w, h = im.size
    if max(w, h) <= ANALYSIS_MAX_SIDE:
        return im
    scale = ANALYSIS_MAX_SIDE / max(w, h)
    return im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BOX)


def analyse_image(path: str) -> dict:
    """Every feature the rules need, for one file; never raises for a bad image."""
    try:
        return _analyse(path)
    except ImageLoadError as exc:
        return {"error": exc.reason, "detail": exc.detail}
    except MemoryError:
        return {"error": "decompression_bomb", "detail": "out of memory while decoding"}
    except Exception as exc:  # noqa: BLE001  one odd file (e.g. malformed EXIF) must not stop a scan
        return {"error": "unreadable", "detail": f"{type(exc).__name__}: {exc}"[:200]}


def _analyse(path: str) -> dict:
    return image_features(load_rgb(path))


def image_features(im: Image.Image) -> dict:
    """What the rules measure on one decoded RGB image (also used by core.data.demo to
    draw a set that its own scan passes)."""
    import imagehash  # heavy import (scipy); only the scan needs it

    w, h = im.size
    pixels = np.asarray(im)
    # Exact duplicates: the decoded pixels, so a re-save with other metadata still matches.
    pixel_hash = hashlib.blake2b(pixels.tobytes(), digest_size=16, person=f"{w}x{h}".encode()[:16]).hexdigest()
    small = analysis_view(im)
    arr = np.asarray(small)
    gray = small.convert("L")
    chroma = float((arr.max(axis=2).astype(np.int16) - arr.min(axis=2)).mean())
    return {
        "width": w,
        "height": h,
        "pixel_hash": pixel_hash,
        "phash": str(imagehash.phash(gray)),
        "dhash": str(imagehash.dhash(gray)),
        "entropy": round(_entropy_bits(np.asarray(gray)), 4),
        "chroma": round(chroma, 4),
        "collage": collage_score(pixels),  # its own views: gutters do not survive analysis_view
    }
