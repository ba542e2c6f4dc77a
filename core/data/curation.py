"""Dataset curation: find the images that would teach the model the wrong thing.

``scan_dataset`` decodes every image once (in parallel), measures a few features per file
and turns them into flags, each with the reason and the measured value:

=================  ==========================================================================
reason             rule (defaults are the DEFAULT_* constants below; all are ScanOptions)
=================  ==========================================================================
empty              0-byte file
not_an_image       Pillow cannot identify it (e.g. a text or HTML file named .jpg)
truncated          the pixel data ends early
unreadable         any other decode error
decompression_bomb more than ``core.data.images.MAX_PIXELS`` pixels (or Pillow's own bomb guard)
too_small          shorter side < ``min_size`` (the training size, 64); the content checks
                   below (except duplicate) are skipped for such thumbnails
odd_aspect         min(w/h, h/w) < ``min_aspect`` (0.35): panoramas, banners
low_information    Shannon entropy of the grey-level histogram < ``min_entropy`` bits (3.5):
                   blank, near-uniform, logo-like images (grayscale and collage are then
                   not checked). Measured: generated photo-like
                   images 4.8-7 bits (median 5.9), the demo set >= 4.6; one flat colour plus
                   sensor noise (sigma 0.5-4) after JPEG: median 1.8, max 3.4.
grayscale          mean over pixels of (max(R,G,B) - min(R,G,B)) < ``max_gray_chroma`` (3.0 of
                   255): grey content, whether stored as L or as RGB. Measured: grey photos
                   saved as RGB JPEG 0.0; colour photos >= 24.8; even at 10% saturation
                   median 8.4 (min 2.4: a washed-out, nearly grey picture).
duplicate          identical decoded RGB pixels (not file bytes) to a kept image
near_duplicate     perceptual-hash Hamming distance to a kept image <= ``near_phash`` (10 of 64
                   bits) AND dHash distance <= ``near_dhash`` (16 of 64 bits). Measured
                   (bench/stats.py --thresholds): 11,175 pairs of distinct generated photos:
                   pHash min 10, 0.1% quantile 16, median 32, and no pair within both limits;
                   150 near copies (crop 0-6%, scale 50-100%, JPEG q40-90, brightness +-15%):
                   median 6, 128-129/150 caught (12/16 would catch 137-142, but also flags
                   4% of the demo set's look-alike drawings vs 2% at 10/16).
collage            collage score >= ``collage_threshold`` (0.5): straight seams or gutters that
                   split the image into a grid (see ``collage_score``); measured at full
                   resolution across the seams (up to 1024 px), not at the analysis size,
                   where 1-2 px gutters blur away
=================  ==========================================================================

Duplicates are grouped within and across breeds; in each group the image with the most
pixels is kept (preferring one with no other flag; tie: the oldest mtime, then the first
path), the others are flagged with ``keep`` naming it. Near duplicates are grouped greedily in that order: an image joins the
closest kept image within the limits, so every flagged image is itself near its keeper
(no chains of small steps).

Features are cached per file (keyed by relative path, size, mtime_ns and FEATURE_VERSION),
so a rerun only decodes new or changed files, and changing a threshold needs no decode.
The report is JSON, written atomically.
"""

from __future__ import annotations

import hashlib
import math
import time
from concurrent.futures import as_completed
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from core.data.stats import BreedStats, DatasetStats, dataset_stats  # noqa: F401  (the scan's callers show stats too)
from core.data.files import DatasetFile, DatasetFolderError, FileCache, list_dataset  # noqa: F401
from core.data.images import ImageLoadError, load_rgb, worker_pool
from core.io.jsonio import read_json, write_json

Progress = Callable[[int, int, str], None]

# ---------------------------------------------------------------------------- defaults

DEFAULT_MIN_SIZE = 64  # training size: anything smaller gets upscaled into mush
DEFAULT_MIN_ASPECT = 0.35  # min(w/h, h/w); 0.35 keeps 2.5:1 wide shots, drops banners
DEFAULT_MIN_ENTROPY = 3.5  # bits of the 256-bin grey histogram (max 8); see the module doc
DEFAULT_MAX_GRAY_CHROMA = 3.0  # mean max-min channel spread, 0..255
DEFAULT_NEAR_PHASH = 10  # Hamming distance of 64-bit pHash
DEFAULT_NEAR_DHASH = 16  # Hamming distance of 64-bit dHash (second opinion)
DEFAULT_COLLAGE_THRESHOLD = 0.5
DEFAULT_WORKERS = 2
DEFAULT_POOL = "thread"  # measured in bench/stats.py: Pillow/numpy/scipy release the GIL

DECODE_REASONS = ("empty", "not_an_image", "truncated", "unreadable", "decompression_bomb")
CONTENT_REASONS = ("too_small", "odd_aspect", "low_information", "grayscale", "collage")
GROUP_REASONS = ("duplicate", "near_duplicate")
REASONS = DECODE_REASONS + CONTENT_REASONS + GROUP_REASONS

REPORT_VERSION = 1
FEATURE_VERSION = 2  # bump when analyse_image changes what it measures (2: collage at seam views)
ANALYSIS_MAX_SIDE = 256  # features other than the pixel hash are measured at this size (speed)
COLLAGE_MAX_SIDE = 1024  # seams are looked for at up to this many px across them (see _seam_views)


class CurationError(Exception):
    """A user-facing curation problem (unreadable report, wrong dataset); one line."""


@dataclass
class ScanOptions:
    min_size: int = DEFAULT_MIN_SIZE
    min_aspect: float = DEFAULT_MIN_ASPECT
    min_entropy: float = DEFAULT_MIN_ENTROPY
    max_gray_chroma: float = DEFAULT_MAX_GRAY_CHROMA
    near_phash: int = DEFAULT_NEAR_PHASH  # < 0 disables near-duplicate detection
    near_dhash: int = DEFAULT_NEAR_DHASH
    collage_threshold: float = DEFAULT_COLLAGE_THRESHOLD  # > 1 disables
    workers: int = DEFAULT_WORKERS
    pool: str = DEFAULT_POOL  # "thread" or "process"

    def __post_init__(self) -> None:
        if self.min_size < 0:
            raise ValueError(f"min_size must be >= 0, got {self.min_size}")
        if not 0.0 <= self.min_aspect <= 1.0:
            raise ValueError(f"min_aspect must be in [0, 1], got {self.min_aspect}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.pool not in ("thread", "process"):
            raise ValueError(f"pool must be 'thread' or 'process', got {self.pool!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ScanOptions":
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Flag:
    path: Path  # absolute path at scan time
    breed: str
    reason: str
    value: float | None  # the measured value the rule compared
    group: str | None = None  # duplicate group id ("dup-3", "near-7")
    keep: Path | None = None  # the image kept in that group (absolute)
    threshold: float | None = None
    detail: str = ""
    rel: str = ""  # path relative to the data dir (what the report stores)


@dataclass
class ScanReport:
    data_dir: Path
    created: str
    options: ScanOptions
    files: dict[str, dict]  # rel -> {size, mtime_ns, width, height}
    flags: list[Flag]
    groups: list[dict] = field(default_factory=list)  # {id, kind, keep, members} (rel paths)
    total: int = 0
    analysed: int = 0  # decoded this run; the rest came from the feature cache
    elapsed_s: float = 0.0

    def flags_by_reason(self) -> dict[str, list[Flag]]:
        out: dict[str, list[Flag]] = {}
        for f in self.flags:
            out.setdefault(f.reason, []).append(f)
        return out

    def to_dict(self) -> dict:
        return {
            "version": REPORT_VERSION,
            "data_dir": str(self.data_dir),
            "created": self.created,
            "options": self.options.to_dict(),
            "total": self.total,
            "analysed": self.analysed,
            "elapsed_s": round(self.elapsed_s, 3),
            "counts": {r: len(v) for r, v in sorted(self.flags_by_reason().items())},
            "flags": [
                {
                    "path": f.rel,
                    "breed": f.breed,
                    "reason": f.reason,
                    "value": f.value,
                    "threshold": f.threshold,
                    "group": f.group,
                    "keep": Path(f.keep).relative_to(self.data_dir).as_posix() if f.keep else None,
                    "detail": f.detail,
                }
                for f in self.flags
            ],
            "groups": self.groups,
            "files": self.files,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ScanReport":
        if not isinstance(d, dict) or d.get("version") != REPORT_VERSION:
            raise ValueError("not a scan report of this version")
        data_dir = Path(d["data_dir"])
        flags = [
            Flag(
                path=data_dir / x["path"],
                breed=x["breed"],
                reason=x["reason"],
                value=x.get("value"),
                group=x.get("group"),
                keep=(data_dir / x["keep"]) if x.get("keep") else None,
                threshold=x.get("threshold"),
                detail=x.get("detail", ""),
                rel=x["path"],
            )
            for x in d["flags"]
        ]
        return cls(
            data_dir=data_dir,
            created=d["created"],
            options=ScanOptions.from_dict(d.get("options", {})),
            files=d.get("files", {}),
            flags=flags,
            groups=d.get("groups", []),
            total=d.get("total", 0),
            analysed=d.get("analysed", 0),
            elapsed_s=d.get("elapsed_s", 0.0),
        )


def load_report(report_path: Path | str, *, strict: bool = False) -> ScanReport | None:
    """The report at ``report_path``; None when there is none (or, unless ``strict``, when
    it is garbled: a rescan rewrites it). ``strict`` raises CurationError for a bad file."""
    report_path = Path(report_path)
    if not report_path.exists():
        return None
    data = read_json(report_path)
    try:
        if data is None:
            raise ValueError("not valid JSON")
        return ScanReport.from_dict(data)
    except (ValueError, KeyError, TypeError) as exc:
        if strict:
            raise CurationError(f"{report_path}: unreadable scan report ({exc}); run `data scan` again") from exc
        return None


def report_name(data_dir: Path | str) -> str:
    """A file name for ``data_dir``'s report: scan-<folder>-<hash of its full path>.json."""
    resolved = str(Path(data_dir).resolve())
    digest = hashlib.sha1(resolved.encode()).hexdigest()[:8]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(resolved).name) or "data"
    return f"scan-{safe}-{digest}.json"


def report_path_for(workspace_root: Path | str, data_dir: Path | str) -> Path:
    """Where the CLI and the studio keep ``data_dir``'s scan report in a workspace."""
    return Path(workspace_root) / "reports" / report_name(data_dir)


def cache_path_for(workspace_root: Path | str, data_dir: Path | str, kind: str) -> Path:
    """``kind`` = "stats" (header cache of dataset_stats) or "features" (scan cache)."""
    return Path(workspace_root) / "cache" / report_name(data_dir).replace("scan-", f"{kind}-", 1)


# ---------------------------------------------------------------------------- per-image features

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


# ---------------------------------------------------------------------------- the scan

def _cache_path_for(report_path: Path) -> Path:
    return report_path.with_name(report_path.stem + ".features.json")


def _analyse_all(todo: list[DatasetFile], cache: FileCache, options: ScanOptions, progress: Progress | None,
                 done: int, total: int) -> None:
    """Measure ``todo`` (in a worker pool when there is more than one) into ``cache``. A
    long first scan saves what it has every 30 s and on Ctrl-C, so it resumes."""
    every = max(1, len(todo) // 200)
    last_save = time.monotonic()
    executor = worker_pool(options.pool, options.workers, "scan") if options.workers > 1 and len(todo) > 1 else None
    try:
        if executor is None:
            results = ((f, analyse_image(f.abspath)) for f in todo)
        else:
            futs = {executor.submit(analyse_image, f.abspath): f for f in todo}
            results = ((futs[fut], fut.result()) for fut in as_completed(futs))
        for i, (f, feat) in enumerate(results, 1):
            cache.put(f, feat)
            if progress is not None and (i % every == 0 or i == len(todo)):
                progress(done + i, total, "analysing images")
            if time.monotonic() - last_save > 30:
                cache.save()
                last_save = time.monotonic()
    except BaseException:
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        cache.save()
        raise
    if executor is not None:
        executor.shutdown()


def scan_dataset(
    data_dir: Path | str,
    *,
    report_path: Path | str,
    options: ScanOptions | None = None,
    progress: Progress | None = None,
    cache_path: Path | str | None = None,
) -> ScanReport:
    """Analyse every image under ``data_dir/<breed>/`` (only new or changed files are
    decoded; features of the others come from ``cache_path``, by default next to the
    report), flag them by ``options`` and write the report atomically to ``report_path``."""
    options = options or ScanOptions()
    start = time.perf_counter()
    data_dir = Path(data_dir).resolve()
    report_path = Path(report_path)
    cache = FileCache(cache_path if cache_path is not None else _cache_path_for(report_path),
                      version=FEATURE_VERSION, data_dir=data_dir)
    _breeds, files = list_dataset(data_dir)
    todo = [f for f in files if cache.get(f) is None]
    if progress is not None:
        progress(len(files) - len(todo), len(files), "analysing images")
    if todo:
        _analyse_all(todo, cache, options, progress, len(files) - len(todo), len(files))
    cache.save(files)
    features = {f.rel: cache.get(f) for f in files}
    flags, groups = flag_files(files, features, options, data_dir)
    report = ScanReport(
        data_dir=data_dir,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        options=options,
        files={
            f.rel: {
                "size": f.size,
                "mtime_ns": f.mtime_ns,
                "width": features[f.rel].get("width"),
                "height": features[f.rel].get("height"),
            }
            for f in files
        },
        flags=flags,
        groups=groups,
        total=len(files),
        analysed=len(todo),
        elapsed_s=time.perf_counter() - start,
    )
    write_json(report_path, report.to_dict())
    return report


# ---------------------------------------------------------------------------- rules

def _hash_int(hexstr: str) -> int:
    return int(hexstr, 16)


def near_pairs(phashes: np.ndarray, dhashes: np.ndarray, max_p: int, max_d: int) -> list[tuple[int, int, int]]:
    """All (i, j, phash distance) with i < j, pHash distance <= max_p and dHash <= max_d.
    Brute force in blocks with numpy popcount: 14,000 images is ~0.1 billion XORs."""
    n = len(phashes)
    out: list[tuple[int, int, int]] = []
    block = 512
    for i0 in range(0, n, block):
        a = phashes[i0 : i0 + block]
        dp = np.bitwise_count(a[:, None] ^ phashes[None, i0:])
        dd = np.bitwise_count(dhashes[i0 : i0 + block][:, None] ^ dhashes[None, i0:])
        ii, jj = np.nonzero((dp <= max_p) & (dd <= max_d))
        for a_i, b_j in zip(ii.tolist(), jj.tolist()):
            i, j = i0 + a_i, i0 + b_j
            if i < j:
                out.append((i, j, int(dp[a_i, b_j])))
    return out


def flag_files(
    files: list[DatasetFile], features: dict[str, dict], options: ScanOptions, data_dir: Path
) -> tuple[list[Flag], list[dict]]:
    """Apply the rules to measured features (no I/O): per-file flags, then duplicate groups."""
    flags: list[Flag] = []

    def add(f: DatasetFile, reason: str, value: float | None, threshold: float | None, detail: str, **kw: Any) -> None:
        flags.append(Flag(f.path, f.breed, reason, value, threshold=threshold, detail=detail, rel=f.rel, **kw))

    ok, tiny = _content_flags(files, features, options, add)
    # Keep, in each duplicate group, a file with no other problem (so quarantining the
    # collages, say, cannot take the only copy left), then the most pixels, then the oldest.
    problem = {fl.rel for fl in flags}

    def priority(f: DatasetFile) -> tuple:
        ft = features[f.rel]
        return (f.rel in problem, -ft["width"] * ft["height"], f.mtime_ns, f.rel)

    groups: list[dict] = []
    losers = _exact_groups(ok, features, priority, groups, add)
    if options.near_phash >= 0:
        # Flat images and thumbnails have meaningless perceptual hashes (exact duplicates
        # above still cover them).
        cand = [f for f in ok if f.rel not in losers and f.rel not in tiny
                and features[f.rel]["entropy"] >= options.min_entropy]
        _near_groups(sorted(cand, key=priority), features, options, groups, add)
    flags.sort(key=lambda fl: (fl.rel, fl.reason))
    return flags, groups


def _content_flags(files: list[DatasetFile], features: dict[str, dict], options: ScanOptions,
                   add: Callable[..., None]) -> tuple[list[DatasetFile], set[str]]:
    """Per-file rules; the decodable files and the rel paths of the thumbnails."""
    ok: list[DatasetFile] = []
    tiny: set[str] = set()
    for f in files:
        ft = features[f.rel]
        if ft.get("error"):
            add(f, ft["error"], None, None, ft.get("detail", ""))
            continue
        ok.append(f)
        w, h = ft["width"], ft["height"]
        aspect = min(w / h, h / w)
        if aspect < options.min_aspect:
            add(f, "odd_aspect", round(aspect, 4), options.min_aspect, f"{w}x{h}")
        if min(w, h) < options.min_size:
            add(f, "too_small", float(min(w, h)), options.min_size, f"{w}x{h}, shorter side < {options.min_size}")
            tiny.add(f.rel)
            continue  # a thumbnail's entropy, colour and hashes say little: unusable is enough
        if ft["entropy"] < options.min_entropy:
            # A flat image's colour and layout mean nothing: one reason is enough.
            add(f, "low_information", ft["entropy"], options.min_entropy, "grey-level entropy in bits")
            continue
        if ft["chroma"] < options.max_gray_chroma:
            add(f, "grayscale", ft["chroma"], options.max_gray_chroma, "mean channel spread (0-255)")
        if ft["collage"] >= options.collage_threshold:
            add(f, "collage", ft["collage"], options.collage_threshold, "seams/gutters on a grid")
    return ok, tiny


def _exact_groups(ok: list[DatasetFile], features: dict[str, dict], priority: Callable, groups: list[dict],
                  add: Callable[..., None]) -> set[str]:
    """Groups of identical decoded pixels (the first by ``priority`` kept); the flagged rels.
    The file layer lists each real file once, so a member is never its own keeper."""
    by_hash: dict[str, list[DatasetFile]] = {}
    for f in ok:
        by_hash.setdefault(features[f.rel]["pixel_hash"], []).append(f)
    losers: set[str] = set()
    for members in by_hash.values():
        if len(members) < 2:
            continue
        members.sort(key=priority)
        gid = f"dup-{len(groups) + 1}"
        keep = members[0]
        groups.append({"id": gid, "kind": "duplicate", "keep": keep.rel, "members": [m.rel for m in members]})
        for m in members[1:]:
            losers.add(m.rel)
            add(m, "duplicate", 0.0, 0.0, f"same pixels as {keep.rel}", group=gid, keep=keep.path)
    return losers


def _near_groups(cand: list[DatasetFile], features: dict[str, dict], options: ScanOptions, groups: list[dict],
                 add: Callable[..., None]) -> None:
    """Greedy: in priority order, an image joins the closest earlier keeper within the
    limits; otherwise it is a keeper. No chains: every flagged image is itself within the
    limits of the image kept instead of it."""
    if len(cand) < 2:
        return
    ph = np.array([_hash_int(features[f.rel]["phash"]) for f in cand], dtype=np.uint64)
    dh = np.array([_hash_int(features[f.rel]["dhash"]) for f in cand], dtype=np.uint64)
    neighbours: dict[int, list[tuple[int, int]]] = {}
    for i, j, dist in near_pairs(ph, dh, options.near_phash, options.near_dhash):
        neighbours.setdefault(j, []).append((dist, i))  # i < j: i has priority
    keeper_group: dict[int, dict] = {}
    for j in range(len(cand)):
        near = sorted((d, i) for d, i in neighbours.get(j, []) if i in keeper_group)
        if not near:
            keeper_group[j] = {}
            continue
        dist, i = near[0]
        g = keeper_group[i]
        if not g:
            g.update(id=f"near-{len(groups) + 1}", kind="near_duplicate", keep=cand[i].rel, members=[cand[i].rel])
            groups.append(g)
        g["members"].append(cand[j].rel)
        add(cand[j], "near_duplicate", float(dist), float(options.near_phash),
            f"pHash distance {dist} to {cand[i].rel}", group=g["id"], keep=cand[i].path)

