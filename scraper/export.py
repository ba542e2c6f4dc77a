"""Export found URLs as one CSV per breed (columns ``url,breed``) for img2dataset.

img2dataset downloads at scale (Spark/Ray) from such lists; we do not build a distributed
downloader. Files are written temp + rename, named by the breed slug.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from scraper.breeds import breed_slug, current_slug
from scraper.download import safe_child, write_atomic
from scraper.manifest import Manifest


def write_breed_csvs(manifest: Manifest, out_dir: Path, *, dataset: str = "dogs", breeds: list[str] | None = None,
                     states: tuple[str, ...] | None = None) -> dict[str, Path]:
    """Write ``out_dir/<breed>.csv`` for every breed with URLs; returns breed -> path.

    ``states`` limits which URLs go out (default: all found URLs, whatever their state)."""
    wanted = {current_slug(breed_slug(b)) for b in breeds} if breeds else None
    rows_by_breed: dict[str, list[str]] = {}
    for row in manifest.url_rows(dataset=dataset, states=states):
        breed = current_slug(row["breed"])  # URLs found under a former spelling join today's
        if wanted is not None and breed not in wanted:
            continue
        rows_by_breed.setdefault(breed, []).append(row["url"])
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for breed in sorted(rows_by_breed):
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["url", "breed"])
        for url in rows_by_breed[breed]:
            writer.writerow([url, breed])
        target = safe_child(out_dir, f"{breed_slug(breed)}.csv")
        write_atomic(target, buf.getvalue().encode("utf-8"))
        written[breed] = target
    return written
