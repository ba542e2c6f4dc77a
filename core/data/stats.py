"""Per-breed dataset statistics from image headers only (no pixel decode).

A dataset is ``<data_dir>/<breed>/...``: the files ``core.data.files``' rule lists, the same
ones the trainer and the scan read. Sizes come from the file header via
``core.data.images.read_size`` and are cached (``core.data.files.FileCache``), so a rerun on 14,000
unchanged files only stats them. Flag counts come from the latest scan report when one is
given (any object with the ``ScanFlags`` shape: ``core.data.curation.ScanReport``); this module
does not import the scan, the scan imports it.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol, Sequence

from core.data.files import DatasetFile, DatasetFolderError, FileCache, list_dataset, unchanged  # noqa: F401
from core.data.images import ImageLoadError, read_size

Progress = Callable[[int, int, str], None]

STATS_CACHE_VERSION = 2  # 2: entries are {size, mtime_ns, width, height, error}


class ScanFlag(Protocol):
    rel: str  # path relative to the data dir
    reason: str


class ScanFlags(Protocol):
    """What the statistics need from a scan report (``core.data.curation.ScanReport`` has it)."""
    created: str
    files: Mapping[str, Mapping]  # rel -> {size, mtime_ns, ...} at scan time
    flags: Sequence[ScanFlag]


@dataclass
class BreedStats:
    name: str
    count: int
    flagged: dict[str, int] = field(default_factory=dict)  # reason -> number of files
    median_width: float | None = None
    median_height: float | None = None
    share: float = 0.0  # count / total images
    flagged_files: int = 0  # distinct files with a flag (a file can have several reasons)


@dataclass
class DatasetStats:
    data_dir: Path
    breeds: list[BreedStats]
    total: int
    imbalance: float | None  # largest / smallest non-empty breed; None with < 1 non-empty breed
    flagged: dict[str, int] = field(default_factory=dict)  # totals by reason
    flagged_files: int = 0  # distinct files with at least one flag
    median_width: float | None = None
    median_height: float | None = None
    empty_breeds: list[str] = field(default_factory=list)
    report_created: str | None = None  # when the scan report used for the flags was written
    unscanned: int = 0  # files new or changed since that report (their flags are unknown)
    header_reads: int = 0  # files whose header was read this time (the rest came from cache)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["data_dir"] = str(self.data_dir)
        return d


def _median(values: Iterable[float]) -> float | None:
    values = list(values)
    return float(statistics.median(values)) if values else None


Size = tuple  # (width | None, height | None, error reason | None)


def _header_sizes(files: list[DatasetFile], cache: FileCache, progress: Progress | None) -> tuple[dict[str, Size], int]:
    """(width, height, error) per file from the cache or the header; and the header reads."""
    sizes: dict[str, Size] = {}
    reads, n = 0, len(files)
    every = max(1, n // 100)
    for i, f in enumerate(files):
        hit = cache.get(f)
        if hit is None:
            reads += 1
            try:
                w, h = read_size(f.path)
                err = None
            except ImageLoadError as exc:
                w, h, err = None, None, exc.reason
            hit = cache.put(f, {"width": w, "height": h, "error": err})
        sizes[f.rel] = (hit.get("width"), hit.get("height"), hit.get("error"))
        if progress is not None and ((i + 1) % every == 0 or i + 1 == n):
            progress(i + 1, n, "reading image headers")
    return sizes, reads


def _flags(files: list[DatasetFile], sizes: dict[str, Size], report: ScanFlags | None) -> tuple[dict[str, set[str]], int]:
    """Reasons per file: header errors found here, plus the report's flags for files
    unchanged since the scan; and how many files the report has not seen as they are."""
    flags = {f.rel: ({sizes[f.rel][2]} if sizes[f.rel][2] else set()) for f in files}
    if report is None:
        return flags, 0
    current = {f.rel: f for f in files}
    scanned = {f.rel for f in files if unchanged(report.files.get(f.rel), f.size, f.mtime_ns)}
    for flag in report.flags:
        if flag.rel in scanned:  # a file gone or changed since the scan: its flag no longer applies
            flags[flag.rel].add(flag.reason)
    return flags, len(current) - len(scanned)


def _breed_row(name: str, files: list[DatasetFile], sizes: dict[str, Size], flags: dict[str, set[str]],
               total: int) -> BreedStats:
    flagged: dict[str, int] = {}
    for f in files:
        for reason in flags[f.rel]:
            flagged[reason] = flagged.get(reason, 0) + 1
    readable = [sizes[f.rel] for f in files if sizes[f.rel][2] is None]
    return BreedStats(
        name=name,
        count=len(files),
        flagged=dict(sorted(flagged.items())),
        median_width=_median(s[0] for s in readable),
        median_height=_median(s[1] for s in readable),
        share=len(files) / total if total else 0.0,
        flagged_files=sum(1 for f in files if flags[f.rel]),
    )


def dataset_stats(
    data_dir: Path | str,
    *,
    cache_path: Path | str | None = None,
    report: ScanFlags | None = None,
    progress: Progress | None = None,
) -> DatasetStats:
    """Counts, flags by reason and median sizes per breed.

    ``report`` (a ``core.data.curation.ScanReport``, or None): its flags are counted for the
    files that are still there unchanged. Header errors found here (0-byte file, not an
    image, decompression bomb) are counted as flags too, even without a report.
    """
    data_dir = Path(data_dir)
    breeds, files = list_dataset(data_dir)
    cache = FileCache(cache_path, version=STATS_CACHE_VERSION, data_dir=data_dir.resolve())
    sizes, reads = _header_sizes(files, cache, progress)
    cache.save(files)
    flags, unscanned = _flags(files, sizes, report)
    by_breed: dict[str, list[DatasetFile]] = {b: [] for b in breeds}
    for f in files:
        by_breed[f.breed].append(f)
    rows = [_breed_row(b, by_breed[b], sizes, flags, len(files)) for b in breeds]
    totals: dict[str, int] = {}
    for row in rows:
        for reason, k in row.flagged.items():
            totals[reason] = totals.get(reason, 0) + k
    counts = [r.count for r in rows if r.count > 0]
    all_readable = [v for v in sizes.values() if v[2] is None]
    return DatasetStats(
        data_dir=data_dir,
        breeds=rows,
        total=len(files),
        imbalance=(max(counts) / min(counts)) if counts else None,
        flagged=dict(sorted(totals.items())),
        flagged_files=sum(1 for v in flags.values() if v),
        median_width=_median(v[0] for v in all_readable),
        median_height=_median(v[1] for v in all_readable),
        empty_breeds=[r.name for r in rows if r.count == 0],
        report_created=report.created if report is not None else None,
        unscanned=unscanned,
        header_reads=reads,
    )
