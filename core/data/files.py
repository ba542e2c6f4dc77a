"""What a dataset folder contains: the one rule every reader of a dataset uses.

A dataset is ``<root>/<breed>/...`` (the original's ``data/dogs/<breed>/`` layout). The rule:

* A breed is a non-hidden folder directly under ``root`` (a symlink to a folder counts).
  A file directly under ``root`` is not in any breed (listed in ``skipped``).
* Under a breed folder, every non-hidden file whose extension is in IMAGE_EXTENSIONS is an
  image, recursively; other files are listed in ``skipped``. Hidden names (starting with
  ".") are ignored at every level, files and folders alike.
* Symlinks are resolved, and every real file is listed once. A file reached twice (a
  symlinked breed folder such as ``labrador -> labrador_retrievers``, a symlinked file, a
  hard link) is listed under its path without symlinks where it has one (else the first
  in sorted order); the other paths go to ``skipped`` as "same file as ...". A breed
  folder that is a symlink to another breed folder (or whose every image is also reached
  through another breed) is therefore not a second class: it is an alias (``aliases``).
  Symlinks to folders *inside* a breed folder are not followed (no loops, as ``os.walk``).
* Unreadable folders and broken links go to ``skipped`` with the reason; nothing raises
  except a root that is missing, not a folder or cannot be listed (DatasetFolderError).

Files come in a stable order: breeds sorted by name; in each folder its files sorted by
name, then its sub-folders (``os.walk``'s top-down order). The walk uses os.scandir and
strings: pathlib costs ~100 us a file, a third of a warm 14k-file ``data stats``.

Also here: the one test for "this file is unchanged since it was measured" (same size
and mtime_ns), and FileCache, the JSON file of per-file measurements built on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

# Extensions treated as images in a breed folder (lower-case, with dot).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


class DatasetFolderError(Exception):
    """The dataset cannot be used (missing folder, not a folder, no images); one line naming it."""


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def is_image_name(name: str) -> bool:
    """A file name the rule counts as an image (extension, not hidden)."""
    return not is_hidden(name) and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


@dataclass(frozen=True)
class DatasetFile:
    rel: str  # posix path relative to the data dir, e.g. "beagle/001.jpg"
    breed: str
    abspath: str  # the path under the root as given (not resolved)
    size: int
    mtime_ns: int

    @property
    def path(self) -> Path:
        return Path(self.abspath)


@dataclass
class DatasetListing:
    root: Path
    breeds: list[str]  # breed folders, sorted, including ones without images
    files: list[DatasetFile]  # every real image file once, in the rule's order
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (path, why it is not an image of the set)
    aliases: dict[str, str] = field(default_factory=dict)  # linked breed folder -> the breed it repeats


@dataclass
class _Candidate:
    file: DatasetFile
    identity: tuple[int, int]  # (st_dev, st_ino) of the real file
    via_link: bool  # reached through a symlink (the breed folder or the file itself)


def _walk(folder: str, rel: str, breed: str, via_link: bool, out: list[_Candidate],
          skipped: list[tuple[Path, str]]) -> None:
    """Candidates under one breed folder, files first then sub-folders (os.walk order)."""
    try:
        with os.scandir(folder) as it:
            entries = sorted((e for e in it if not is_hidden(e.name)), key=lambda e: e.name)
    except OSError as exc:
        skipped.append((Path(folder), f"cannot read folder ({exc.strerror or exc})"))
        return
    subdirs = []
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            subdirs.append(e)
            continue
        link = e.is_symlink()
        if not is_image_name(e.name):
            if link and e.is_dir():
                skipped.append((Path(e.path), "link to a folder inside a breed folder (not followed)"))
            else:
                ext = os.path.splitext(e.name)[1]
                skipped.append((Path(e.path), f"not an image file ({ext or 'no extension'})"))
            continue
        try:
            st = e.stat()  # follows a symlink: the real file's size, mtime and identity
        except OSError as exc:
            skipped.append((Path(e.path), "broken link" if link else f"cannot read ({exc.strerror or exc})"))
            continue
        identity = (st.st_dev, st.st_ino) if st.st_ino else (0, hash(os.path.realpath(e.path)))
        f = DatasetFile(f"{rel}/{e.name}", breed, e.path, st.st_size, st.st_mtime_ns)
        out.append(_Candidate(f, identity, via_link or link))
    for d in subdirs:
        _walk(d.path, f"{rel}/{d.name}", breed, via_link, out, skipped)


def _top_level(root: Path) -> tuple[list[os.DirEntry], list[tuple[Path, str]]]:
    """The breed folders directly under ``root`` and the loose files there."""
    if not root.exists():
        raise DatasetFolderError(f"{root}: dataset folder does not exist")
    if not root.is_dir():
        raise DatasetFolderError(f"{root}: not a folder (expected {root}/<breed>/*.jpg)")
    try:
        with os.scandir(root) as it:
            entries = sorted((e for e in it if not is_hidden(e.name)), key=lambda e: e.name)
    except OSError as exc:
        raise DatasetFolderError(f"{root}: cannot list the folder ({exc.strerror or exc})") from None
    breeds, loose = [], []
    for e in entries:
        try:
            is_dir = e.is_dir()  # follows a link: a symlinked breed folder is a folder
        except OSError:
            is_dir = False
        if is_dir:
            breeds.append(e)
        else:
            loose.append((Path(e.path), "not inside a breed folder"))
    return breeds, loose


def list_folder(root: Path | str) -> DatasetListing:
    """Everything the rule (module doc) says ``root`` contains. Raises DatasetFolderError
    only when ``root`` itself is unusable; a root without breed folders lists nothing."""
    root = Path(root)
    breed_entries, skipped = _top_level(root)
    candidates: list[_Candidate] = []
    for e in breed_entries:
        _walk(e.path, e.name, e.name, e.is_symlink(), candidates, skipped)
    # One path per real file: the one without symlinks where there is one, else the first.
    winner: dict[tuple[int, int], _Candidate] = {}
    for c in candidates:
        best = winner.get(c.identity)
        if best is None or (best.via_link and not c.via_link):
            winner[c.identity] = c
    files, own = [], {e.name: 0 for e in breed_entries}
    repeats: dict[str, set[str]] = {}  # breed -> breeds its repeated files are listed under
    for c in candidates:
        w = winner[c.identity]
        if w is c:
            files.append(c.file)
            own[c.file.breed] += 1
        else:
            skipped.append((c.file.path, f"same file as {w.file.rel}"))
            repeats.setdefault(c.file.breed, set()).add(w.file.breed)
    aliases = _aliases(breed_entries, own, repeats)
    return DatasetListing(root, sorted(n for n in own if n not in aliases), files, skipped, aliases)


def _aliases(entries: list[os.DirEntry], own: dict[str, int], repeats: dict[str, set[str]]) -> dict[str, str]:
    """Symlinked breed folders with no file of their own that only repeat one other breed
    (or, empty, resolve to the same folder as another): -> that breed's name."""
    real = {e.name: os.path.realpath(e.path) for e in entries}
    out: dict[str, str] = {}
    for e in entries:
        if not e.is_symlink() or own[e.name]:
            continue
        targets = repeats.get(e.name) or {n for n in real if n != e.name and real[n] == real[e.name]}
        target = next(iter(targets)) if len(targets) == 1 else None
        if target is not None and target not in out:  # two links to one empty folder: keep one
            out[e.name] = target
    return out


def list_dataset(data_dir: Path | str) -> tuple[list[str], list[DatasetFile]]:
    """Breed folder names (sorted, empty ones included) and every image file under them
    (``list_folder`` without the skipped files). Raises DatasetFolderError."""
    listing = list_folder(data_dir)
    return listing.breeds, listing.files


# ---------------------------------------------------------------------------- per-file caches


def unchanged(entry: Mapping[str, Any] | None, size: int, mtime_ns: int) -> bool:
    """True when ``entry`` (a cache entry or a report record with ``size`` and ``mtime_ns``)
    was measured from a file that still has this size and mtime: the one staleness rule of
    every per-file cache (decoded images, headers, scan features) and of the scan report."""
    return isinstance(entry, Mapping) and entry.get("size") == size and entry.get("mtime_ns") == mtime_ns


class FileCache:
    """Per-file measurements in one JSON file: {version, data_dir, files: {rel: {size,
    mtime_ns, ...}}}. ``get`` returns an entry only while its file is unchanged, so a
    rerun measures only new or changed files. The cache is disposable: a missing, garbled,
    other-version or other-folder file reads as empty, and a failed write is ignored."""

    def __init__(self, path: Path | str | None, *, version: int, data_dir: Path | str) -> None:
        from core.io.jsonio import read_json

        self.path = Path(path) if path is not None else None
        self.version = version
        self.data_dir = str(data_dir)
        data = read_json(self.path) if self.path is not None else None
        ok = (isinstance(data, dict) and data.get("version") == version
              and data.get("data_dir") == self.data_dir and isinstance(data.get("files"), dict))
        self.entries: dict[str, dict] = data["files"] if ok else {}
        self.fresh: dict[str, dict] = {}  # measured this time

    def get(self, f: DatasetFile) -> dict | None:
        entry = self.fresh.get(f.rel) or self.entries.get(f.rel)
        return entry if unchanged(entry, f.size, f.mtime_ns) else None

    def put(self, f: DatasetFile, values: dict) -> dict:
        entry = {**values, "size": f.size, "mtime_ns": f.mtime_ns}
        self.fresh[f.rel] = entry
        return entry

    def save(self, files: list[DatasetFile] | None = None) -> bool:
        """Write the entries of ``files`` (None: everything known so far, e.g. a partial
        first scan); only when something changed. False when the write failed."""
        from core.io.jsonio import write_json

        if self.path is None:
            return True
        if files is None:
            keep = {**self.entries, **self.fresh}
        else:
            keep = {f.rel: e for f in files if (e := self.get(f)) is not None}
            if not self.fresh and len(keep) == len(self.entries):
                return True  # nothing new, changed or removed
        try:
            write_json(self.path, {"version": self.version, "data_dir": self.data_dir, "files": keep})
        except OSError:
            return False  # only costs a re-measure next time
        return True
