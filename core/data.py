"""The breed-folder dataset: ``<root>/<breed>/*.jpg`` (the seed's ``data/dogs`` layout),
label = index of the breed in the sorted list of breed names.

Every image is decoded and resized once (in parallel threads: Pillow releases the GIL
while decoding and resizing) into one in-memory uint8 tensor; batches are then plain
tensor indexing, so loading is never the bottleneck. The decoded tensor is kept in a
cache file keyed by each file's (relative path, size, mtime_ns) and the image options,
so a later run on the same files decodes nothing and a changed folder re-decodes only
the files that changed.

Choices worth knowing:
- A breed folder with no image files is left out of the classes (with a warning) rather
  than kept as a class that can never be trained; likewise a breed whose every file is
  unreadable. A conditional run records its class names in its config and passes them
  back as ``classes=`` on resume, which pins the label of every breed.
- Files are scanned recursively under each breed folder (as torchvision's ImageFolder
  does); hidden files and folders are ignored; other extensions are listed as skipped.
- Unreadable images are skipped and logged once per build with the reason; they are
  never deleted. Their verdict is cached too, so a rerun does not decode them again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from core.checkpoint import atomic_torch_save
from core.images import ImageLoadError, is_image_file, load_rgb

RESIZE_MODES = ("squash", "crop")
# Bump when the decoded pixels for the same file and options would change.
CACHE_VERSION = 1
MAX_IMAGE_SIZE = 1024

Progress = Callable[[int, int, str], None]

_log = logging.getLogger(__name__)


class DatasetError(Exception):
    """The dataset cannot be used at all (missing folder, no readable images)."""


@dataclass
class DataOptions:
    image_size: int = 64
    resize: str = "squash"  # "squash": plain resize to SxS (the seed); "crop": shorter side, centre crop
    flip: bool = True  # random horizontal flip per image per batch

    def __post_init__(self) -> None:
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int):
            raise ValueError(f"image_size must be an integer, got {self.image_size!r}")
        if not 1 <= self.image_size <= MAX_IMAGE_SIZE:
            raise ValueError(f"image_size must be between 1 and {MAX_IMAGE_SIZE}, got {self.image_size}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"unknown resize mode {self.resize!r}; expected one of {', '.join(RESIZE_MODES)}")
        self.flip = bool(self.flip)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DataOptions":
        known = {k: d[k] for k in ("image_size", "resize", "flip") if k in d}
        return cls(**known)


@dataclass
class FolderScan:
    root: Path
    samples: list[tuple[Path, int]]  # image files with their label (index into classes)
    classes: list[str]  # sorted breed folder names that hold at least one image file
    empty_classes: list[str]  # breed folders without any image file
    skipped: list[tuple[Path, str]]  # files that are not images / not inside a breed folder


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _breed_files(breed_dir: Path, skipped: list[tuple[Path, str]]) -> list[Path]:
    """Every non-hidden file under a breed folder, recursively, in a stable order.
    Folders that cannot be listed go to ``skipped``."""
    out: list[Path] = []

    def unreadable(exc: OSError) -> None:
        skipped.append((Path(exc.filename or breed_dir), f"cannot read folder ({exc.strerror or exc})"))

    for dirpath, dirnames, filenames in os.walk(breed_dir, onerror=unreadable):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        for name in sorted(filenames):
            if not _is_hidden(name):
                out.append(Path(dirpath) / name)
    return out


def scan_image_folder(root: Path | str) -> FolderScan:
    """List ``root/<breed>/...`` without opening any image. Raises DatasetError when
    ``root`` is not a folder or has no breed folders."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root}: dataset folder does not exist")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder (expected {root}/<breed>/*.jpg)")
    breeds: list[str] = []
    skipped: list[tuple[Path, str]] = []
    try:
        entries = sorted(root.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise DatasetError(f"{root}: cannot list the folder ({exc.strerror or exc})") from None
    for entry in entries:
        if _is_hidden(entry.name):
            continue
        if entry.is_dir():
            breeds.append(entry.name)
        else:
            skipped.append((entry, "not inside a breed folder"))
    if not breeds:
        loose = sum(1 for path, _ in skipped if is_image_file(path))
        hint = f"; it holds {loose} image(s) directly, move them into breed folders" if loose else ""
        raise DatasetError(f"{root}: no breed folders (expected {root}/<breed>/*.jpg){hint}")

    per_breed: dict[str, list[Path]] = {}
    empty: list[str] = []
    for breed in breeds:
        images = []
        for path in _breed_files(root / breed, skipped):
            if is_image_file(path):
                images.append(path)
            else:
                skipped.append((path, f"not an image file ({path.suffix or 'no extension'})"))
        if images:
            per_breed[breed] = images
        else:
            empty.append(breed)
    classes = sorted(per_breed)
    samples = [(p, label) for label, breed in enumerate(classes) for p in per_breed[breed]]
    return FolderScan(root=root, samples=samples, classes=classes, empty_classes=empty, skipped=skipped)


# ---------------------------------------------------------------------------- decoding


def resize_image(im: Image.Image, size: int, mode: str = "squash") -> Image.Image:
    """``squash``: resize to size x size ignoring the aspect ratio (what the seed's
    transforms.Resize((64, 64)) does); ``crop``: the centred largest square, resized —
    the same pixels as resizing the shorter side then centre-cropping, in one resample."""
    w, h = im.size
    if mode == "squash":
        box = None
    elif mode == "crop":
        s = min(w, h)
        left, top = (w - s) / 2, (h - s) / 2
        box = (left, top, left + s, top + s)
    else:
        raise ValueError(f"unknown resize mode {mode!r}; expected one of {', '.join(RESIZE_MODES)}")
    if (w, h) == (size, size):
        return im
    return im.resize((size, size), Image.Resampling.BILINEAR, box=box)


def decode_image(path: Path | str, image_size: int, resize: str) -> np.ndarray:
    """One file -> uint8 array (S, S, 3). Raises ImageLoadError."""
    im = load_rgb(path)
    arr = np.array(resize_image(im, image_size, resize), dtype=np.uint8)  # a writable copy
    if arr.shape != (image_size, image_size, 3):  # load_rgb guarantees RGB; be loud if not
        raise ImageLoadError(path, "unreadable", f"decoded to shape {arr.shape}")
    return arr


def _decode_or_error(path: str, image_size: int, resize: str) -> tuple[np.ndarray | None, str, str]:
    """Pool task: (pixels, "", "") or (None, reason, detail). Never raises for bad images,
    so a process pool does not need to pickle exceptions."""
    try:
        return decode_image(path, image_size, resize), "", ""
    except ImageLoadError as exc:
        return None, exc.reason, exc.detail
    except MemoryError:
        return None, "unreadable", "out of memory while decoding"
    except Exception as exc:  # a Pillow plugin bug must not stop a 14,000-image build
        return None, "unreadable", f"{type(exc).__name__}: {str(exc)[:200]}"


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def decode_files(
    paths: Sequence[Path],
    options: DataOptions,
    *,
    workers: int | None = None,
    pool: str = "thread",
    progress: Progress | None = None,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[tuple[int, str, str]]]:
    """Decode ``paths`` into ``out`` (or a new uint8 tensor (N, 3, S, S)) in parallel.

    Returns the tensor and the failures as (index, reason, detail); failed rows are zero.
    ``pool``: "thread" (default: measured faster here, see bench/data.py) or "process".
    """
    n, s = len(paths), options.image_size
    if out is None:
        out = torch.zeros((n, 3, s, s), dtype=torch.uint8)
    failures: list[tuple[int, str, str]] = []
    if n == 0:
        return out, failures
    workers = workers or default_workers()
    executor: Executor
    if pool == "thread":
        executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
    elif pool == "process":
        executor = ProcessPoolExecutor(max_workers=workers)
    else:
        raise ValueError(f"unknown pool {pool!r}; expected 'thread' or 'process'")
    done = 0
    every = max(1, n // 200)  # about 200 progress calls per build
    with executor:
        futures = {
            executor.submit(_decode_or_error, os.fspath(p), s, options.resize): i for i, p in enumerate(paths)
        }
        try:
            for fut in as_completed(futures):
                i = futures[fut]
                arr, reason, detail = fut.result()
                if arr is None:
                    failures.append((i, reason, detail))
                else:
                    out[i] = torch.from_numpy(arr).permute(2, 0, 1)
                done += 1
                if progress is not None and (done % every == 0 or done == n):
                    progress(done, n, "decoding images")
        except BaseException:
            # Ctrl-C during the first build: drop the queued work instead of finishing it.
            for f in futures:
                f.cancel()
            raise
    failures.sort()
    return out, failures


# ---------------------------------------------------------------------------- cache


def _file_key(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def cache_file_for(cache_dir: Path | str, root: Path | str, options: DataOptions) -> Path:
    """The cache file for one dataset folder and one set of image options."""
    root = Path(root).resolve()
    digest = hashlib.sha256(
        f"{root}|{options.image_size}|{options.resize}|v{CACHE_VERSION}".encode()
    ).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", root.name)[:40] or "dataset"
    return Path(cache_dir) / f"{slug}-{options.image_size}px-{options.resize}-{digest}.pt"


@dataclass
class _CacheEntry:
    size: int
    mtime_ns: int
    row: int  # row in the cached tensor, -1 for a file known to be unreadable
    reason: str = ""
    detail: str = ""


def _load_cache(path: Path, options: DataOptions, logger: logging.Logger) -> tuple[dict[str, _CacheEntry], torch.Tensor | None]:
    """{relative path: entry} and the cached tensor, or ({}, None) if absent/unusable."""
    if not path.is_file():
        return {}, None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("version") != CACHE_VERSION:
            raise ValueError("other cache version")
        if blob.get("image_size") != options.image_size or blob.get("resize") != options.resize:
            raise ValueError("other image options")
        images = blob["images"]
        rel, sizes, mtimes, rows = blob["paths"], blob["sizes"], blob["mtimes"], blob["rows"]
        reasons, details = blob["reasons"], blob["details"]
        s = options.image_size
        if not (isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.dim() == 4
                and tuple(images.shape[1:]) == (3, s, s)):
            raise ValueError("bad image tensor")
        if not len(rel) == len(sizes) == len(mtimes) == len(rows) == len(reasons) == len(details):
            raise ValueError("index lengths differ")
        entries = {}
        for i, r in enumerate(rel):
            row = int(rows[i])
            if row >= images.shape[0]:
                raise ValueError("row out of range")
            entries[str(r)] = _CacheEntry(int(sizes[i]), int(mtimes[i]), row, str(reasons[i]), str(details[i]))
        return entries, images
    except Exception as exc:  # truncated, foreign or old cache: rebuild, never fail the run
        logger.warning("ignoring decoded-image cache %s (%s); rebuilding it", path, str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        return {}, None


def _save_cache(path: Path, options: DataOptions, rel_paths: list[str], keys: list[tuple[int, int]],
                rows: list[int], reasons: list[str], details: list[str], images: torch.Tensor,
                logger: logging.Logger) -> bool:
    """Write the cache atomically (temp file + os.replace). A failure (disk full, read-only
    workspace) only costs the next run a rebuild: warn and carry on."""
    blob = {
        "version": CACHE_VERSION,
        "image_size": options.image_size,
        "resize": options.resize,
        "paths": rel_paths,
        "sizes": [k[0] for k in keys],
        "mtimes": [k[1] for k in keys],
        "rows": rows,
        "reasons": reasons,
        "details": details,
        "images": images,
    }
    try:
        atomic_torch_save(blob, path)
        return True
    except Exception as exc:
        logger.warning("could not write decoded-image cache %s: %s", path, exc)
        return False


# ---------------------------------------------------------------------------- dataset


class ImageFolderDataset(torch.utils.data.Dataset):
    """All images of ``root/<breed>/`` decoded once into ``.images`` (N, 3, S, S) uint8.

    Attributes: ``classes`` (breed names, label = index), ``labels`` (N,) int64,
    ``samples`` [(path, label)] of the usable images in row order, ``bad_files``
    [(path, reason)], ``skipped`` (non-image files), ``empty_classes``, ``stats``
    (decoded / reused / bad counts, cache file, build seconds), ``cache_path``.
    """

    def __init__(
        self,
        root: Path | str,
        options: DataOptions | None = None,
        *,
        cache_dir: Path | str | None = None,
        workers: int | None = None,
        progress: Progress | None = None,
        logger: logging.Logger | None = None,
        classes: Sequence[str] | None = None,
        pool: str = "thread",
    ) -> None:
        """``classes``: a fixed class list (a resumed conditional run's): labels follow it,
        breed folders not in it are ignored with a warning."""
        t0 = time.perf_counter()
        self.root = Path(root)
        self.options = options or DataOptions()
        log = logger or _log
        self.logger = log

        scan = scan_image_folder(self.root)
        self.skipped = scan.skipped
        self.empty_classes = list(scan.empty_classes)
        for breed in scan.empty_classes:
            log.warning("breed folder %s has no images; left out of the classes", self.root / breed)
        if scan.skipped:
            for path, reason in scan.skipped:
                level = logging.WARNING if reason.startswith("cannot read") else logging.DEBUG
                log.log(level, "ignored %s: %s", path, reason)
            log.info("ignored %d non-image file(s) in %s, e.g. %s", len(scan.skipped), self.root, scan.skipped[0][0])

        found = scan.classes
        breed_of = [found[label] for _, label in scan.samples]
        paths = [p for p, _ in scan.samples]
        if classes is not None:
            fixed = list(classes)
            for breed in sorted(set(found) - set(fixed)):
                log.warning("breed folder %s is not one of this run's classes; ignored", self.root / breed)
            for breed in fixed:
                if breed not in found:
                    log.warning("class %r of this run has no images in %s", breed, self.root)
            wanted = set(fixed)
            keep = [i for i, b in enumerate(breed_of) if b in wanted]
            paths = [paths[i] for i in keep]
            breed_of = [breed_of[i] for i in keep]
        if not paths:
            raise DatasetError(f"{self.root}: no images found (expected {self.root}/<breed>/*.jpg)")

        # -- match files against the cache; decode the rest
        self.cache_path = cache_file_for(cache_dir, self.root, self.options) if cache_dir is not None else None
        cached, cached_images = ({}, None)
        if self.cache_path is not None:
            cached, cached_images = _load_cache(self.cache_path, self.options, log)

        n, s = len(paths), self.options.image_size
        rel_paths = [p.relative_to(self.root).as_posix() for p in paths]
        keys: list[tuple[int, int] | None] = [_file_key(p) for p in paths]
        images = torch.zeros((n, 3, s, s), dtype=torch.uint8)
        ok = [False] * n
        reasons = [""] * n
        details = [""] * n
        copy_src: list[int] = []
        copy_dst: list[int] = []
        to_decode: list[int] = []
        hits = 0  # files whose cached verdict (pixels or reason) is still valid
        for i, (rel, key) in enumerate(zip(rel_paths, keys)):
            if key is None:
                reasons[i], details[i] = "unreadable", "cannot stat file"
                continue
            entry = cached.get(rel)
            if entry is not None and (entry.size, entry.mtime_ns) == key:
                hits += 1
                if entry.row >= 0:
                    copy_src.append(entry.row)
                    copy_dst.append(i)
                    ok[i] = True
                else:
                    reasons[i], details[i] = entry.reason or "unreadable", entry.detail
            elif key[0] == 0:
                reasons[i], details[i] = "empty", "0 bytes"
            else:
                to_decode.append(i)
        if copy_dst:
            assert cached_images is not None
            images[torch.tensor(copy_dst)] = cached_images[torch.tensor(copy_src)]
        del cached_images

        if to_decode:
            log.info("decoding %d of %d images in %s (%s, %d px)", len(to_decode), n, self.root,
                     self.options.resize, s)
            decoded, failures = decode_files(
                [paths[i] for i in to_decode], self.options, workers=workers, pool=pool, progress=progress
            )
            failed = {j for j, _, _ in failures}
            for j, reason, detail in failures:
                reasons[to_decode[j]], details[to_decode[j]] = reason, detail
            good_j = [j for j in range(len(to_decode)) if j not in failed]
            if good_j:
                images[torch.tensor([to_decode[j] for j in good_j])] = decoded[torch.tensor(good_j)]
                for j in good_j:
                    ok[to_decode[j]] = True
            del decoded
        elif progress is not None:
            progress(n, n, "loaded from cache")

        # -- bad files: reported once per build, never touched on disk
        self.bad_files: list[tuple[Path, str]] = []
        for i in range(n):
            if not ok[i]:
                self.bad_files.append((paths[i], reasons[i]))
                log.warning("skipped %s: %s%s", paths[i], reasons[i], f" ({details[i]})" if details[i] else "")
        if self.bad_files:
            log.warning("skipped %d unreadable file(s) of %d in %s", len(self.bad_files), n, self.root)

        # -- persist (only when something changed), before dropping bad rows
        good_rows = [i for i in range(n) if ok[i]]
        changed = hits != n or len(cached) != n  # something new, changed or removed
        if self.cache_path is not None and changed and all(k is not None for k in keys):
            row_of = {i: r for r, i in enumerate(good_rows)}
            _save_cache(
                self.cache_path, self.options, rel_paths, [k for k in keys if k is not None],
                [row_of.get(i, -1) for i in range(n)], reasons, details,
                images[torch.tensor(good_rows, dtype=torch.long)] if good_rows else images[:0], log,
            )

        # -- classes and labels from the usable images
        if classes is not None:
            self.classes = list(classes)
        else:
            usable = {breed_of[i] for i in good_rows}
            self.classes = sorted(usable)
            for breed in sorted(set(breed_of) - usable):
                log.warning("breed folder %s has no readable images; left out of the classes", self.root / breed)
                self.empty_classes.append(breed)
        if not good_rows:
            raise DatasetError(
                f"{self.root}: none of the {n} image files could be read (first: {paths[0]}: {reasons[0]})"
            )
        index = {b: k for k, b in enumerate(self.classes)}
        self.images = images[torch.tensor(good_rows, dtype=torch.long)] if len(good_rows) < n else images
        self.labels = torch.tensor([index[breed_of[i]] for i in good_rows], dtype=torch.long)
        self.samples: list[tuple[Path, int]] = [(paths[i], index[breed_of[i]]) for i in good_rows]
        self.stats = {
            "files": n,
            "images": len(good_rows),
            "decoded": len(to_decode),
            "reused": len(copy_dst),
            "bad": len(self.bad_files),
            "cache": str(self.cache_path) if self.cache_path else None,
            "seconds": time.perf_counter() - t0,
        }
        log.info("dataset %s: %d images, %d classes (%d decoded, %d from cache, %d skipped)",
                 self.root, len(good_rows), len(self.classes), len(to_decode), len(copy_dst), len(self.bad_files))

    # -- access ---------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return self.options.image_size

    def class_counts(self) -> dict[str, int]:
        counts = torch.bincount(self.labels, minlength=len(self.classes)).tolist()
        return dict(zip(self.classes, counts))

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """One image as float CHW in [-1, 1] (randomly flipped with the global RNG if
        flip is on) and its label; for DataLoader users. Training uses get_batch."""
        x = self.images[i]
        if self.options.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x.to(torch.float32).div_(127.5).sub_(1.0), int(self.labels[i])

    def get_batch(
        self, indices: torch.Tensor | Sequence[int], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x float32 (B, 3, S, S) in [-1, 1], labels int64 (B,)) for ``indices``.

        One gather, one vectorised flip and one conversion: no per-image Python. Whether
        each image is flipped is drawn from ``generator`` (B uniforms, one per image), so a
        run with a seeded generator is exactly reproducible and resumable. The generator
        must be a CPU one (the batch is built on the CPU; move it to the device after).
        """
        idx = torch.as_tensor(indices, dtype=torch.long)
        if idx.dim() != 1:
            idx = idx.reshape(-1)
        x = self.images.index_select(0, idx)  # a fresh copy: safe to flip in place
        if self.options.flip and idx.numel():
            flip = torch.rand(idx.numel(), generator=generator) < 0.5
            rows = flip.nonzero().squeeze(1)
            if rows.numel():
                # Touch only the flipped rows (measured ~1.5x faster than torch.where over all).
                x.index_copy_(0, rows, x.index_select(0, rows).flip(-1))
        return x.to(torch.float32).div_(127.5).sub_(1.0), self.labels.index_select(0, idx)
