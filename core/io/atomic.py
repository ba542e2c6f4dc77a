"""Writing files so that a reader (or a crash) only ever sees the old file or the new one.

Every writer in core/ that replaces a user-visible file goes through here: write a temp
file beside the target, flush + fsync it, ``os.replace`` it over the target, then fsync
the directory so the rename itself survives a power cut. On any failure the temp file
(ours) is removed and the target is untouched. No torch import: the studio uses this
through core.training.runs without loading torch.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

# mkstemp creates 0600 files; the files we write are ordinary user files, so give them
# what open() would (0666 minus the umask). Read once: os.umask can only be read by setting it.
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


def fsync_dir(directory: Path | str) -> None:
    """Make a rename in ``directory`` durable (best effort: some platforms and filesystems
    cannot open or fsync a directory; the rename is atomic regardless)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path | str, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(fh)`` on a temp file beside ``path`` and publish it atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class StagedFiles:
    """A set of files published together or not at all (``sample --individual``: a grid and
    its images). ``stage`` writes each to a temp file beside its target; ``publish`` renames
    them all into place once every one is written. On failure (a full disk) ``discard``
    removes only the temp files: no target, and so no file a user already had, is touched.
    Used as a context manager, an exception discards."""

    def __init__(self) -> None:
        self._staged: list[tuple[str, Path]] = []

    def stage(self, path: Path | str, write: Callable[[BinaryIO], object]) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        self._staged.append((tmp, path))
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())

    def publish(self) -> list[Path]:
        """Rename every staged file over its target; the targets, in staging order."""
        for tmp, path in self._staged:
            os.replace(tmp, path)  # a rename in one folder needs no space: it does not fail on a full disk
        for folder in {path.parent for _, path in self._staged}:
            fsync_dir(folder)
        published, self._staged = [path for _, path in self._staged], []
        return published

    def discard(self) -> None:
        for tmp, _ in self._staged:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        self._staged = []

    def __enter__(self) -> "StagedFiles":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()
