"""The breeds to search for: the original's 26 defaults, safe folder slugs and query text.

A breed is known by its slug (``labrador_retrievers``). The original stored its photos in
folders named after the whole query (``labrador_retrievers_dog_pictures``); such names map
to the same slug, so an existing folder of the original's keeps receiving that breed's photos.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

# The original's image_scrapper.py list, in its order ("jack russell" spelled right: its
# folders under the original's "jack russel" spelling are still found, FORMER_SPELLINGS).
DEFAULT_BREEDS: tuple[str, ...] = (
    "jack russell terrier",
    "french bulldogs",
    "labrador retrievers",
    "golden retrievers",
    "german shepherd",
    "poodles",
    "bulldogs",
    "rottweilers",
    "beagles",
    "dachshunds",
    "german shorthaired pointers",
    "pembroke welsh corgis",
    "australian shepherds",
    "yorkshire terriers",
    "cavalier king charles spaniels",
    "doberman pinschers",
    "boxers",
    "miniature schnauzers",
    "cane corso",
    "great danes",
    "shih tzu",
    "siberian huskies",
    "bernese mountain dogs",
    "pomeranians",
    "boston terriers",
    "havanese",
)

QUERY_SUFFIX = "dog pictures"
_SEED_SUFFIX = "_" + QUERY_SUFFIX.replace(" ", "_")  # "_dog_pictures"
MAX_SLUG_LENGTH = 80


class BreedError(ValueError):
    """A breed name that cannot become a safe folder name."""


def breed_slug(name: str) -> str:
    """Folder-safe slug: lower case, letters/digits joined by ``_``; never empty, ``.`` or
    ``..``, never a path separator. The original's ``<breed>_dog_pictures`` maps to ``<breed>``."""
    text = unicodedata.normalize("NFKC", str(name)).casefold().strip()
    # \w keeps letters of any script; everything else (/, \, ., spaces, quotes) separates words.
    slug = re.sub(r"[\W_]+", "_", text).strip("_")
    if slug.endswith(_SEED_SUFFIX) and len(slug) > len(_SEED_SUFFIX):
        slug = slug[: -len(_SEED_SUFFIX)]
    slug = slug[:MAX_SLUG_LENGTH].strip("_")
    if not slug:
        raise BreedError(f"breed name {name!r} has no letters or digits to name a folder")
    return slug


# A breed's former slug -> its current one: folders named the old way keep receiving its photos.
FORMER_SPELLINGS: dict[str, str] = {"jack_russel_terrier": "jack_russell_terrier"}


def current_slug(slug: str) -> str:
    """A breed slug as spelled today (a former spelling gives its current one)."""
    return FORMER_SPELLINGS.get(slug, slug)


def breed_label(name: str) -> str:
    """Human-readable name of a breed (the slug with spaces)."""
    return breed_slug(name).replace("_", " ")


def query_for(name: str) -> str:
    """Search text for a breed, as the original typed it: ``"<breed> dog pictures"``."""
    return f"{breed_label(name)} {QUERY_SUFFIX}"


def parse_breeds(text: str) -> list[str]:
    """Comma-separated breed names -> unique slugs in order (``--breeds a,b``)."""
    return _unique_slugs(part for part in text.split(","))


def read_breeds_file(path: str | Path) -> list[str]:
    """One breed a line (``#`` starts a comment; commas also separate) -> unique slugs."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BreedError(f"{p}: not a UTF-8 text file ({exc.reason})") from None
    except OSError as exc:
        raise BreedError(f"{p}: cannot read breeds file ({exc.strerror or exc})") from None
    parts: list[str] = []
    for line in text.splitlines():
        parts.extend(line.split("#", 1)[0].split(","))
    slugs = _unique_slugs(parts)
    if not slugs:
        raise BreedError(f"{p}: no breed names in the file")
    return slugs


def _unique_slugs(parts) -> list[str]:
    seen: dict[str, None] = {}
    for part in parts:
        if part.strip():
            seen.setdefault(breed_slug(part), None)
    return list(seen)


def breed_folder(dataset_dir: str | Path, breed: str) -> Path:
    """The folder a breed's photos go to inside ``dataset_dir``.

    An existing folder whose name has the same slug (the original's
    ``labrador_retrievers_dog_pictures``, or ``Labrador Retrievers``), or a former spelling of
    it (``jack russel terrier``), is reused, so one breed never ends up split over two class
    folders. Otherwise ``dataset_dir/<slug>``.
    """
    root = Path(dataset_dir)
    slug = breed_slug(breed)
    exact = root / slug
    if exact.is_dir():
        return exact
    try:
        entries = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        entries = []
    for entry in entries:
        try:
            found = breed_slug(entry.name)
        except BreedError:
            continue
        if slug in (found, current_slug(found)):
            return entry
    return exact
