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
import time
from concurrent.futures import as_completed
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from core.data.stats import BreedStats, DatasetStats, dataset_stats  # noqa: F401  (the scan's callers show stats too)
from core.data.files import DatasetFile, DatasetFolderError, FileCache, list_dataset  # noqa: F401
from core.data.image_features import FEATURE_VERSION, analyse_image
from core.data.images import worker_pool
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

