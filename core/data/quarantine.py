"""Quarantine: move flagged images out of the dataset and back, losing nothing.

Files are moved, never deleted. ``quarantine/<breed>/<name>`` keeps the path the file had
under the dataset folder (``-1``, ``-2``... before the extension when that name is taken),
and ``quarantine/quarantine.jsonl`` logs every move (one JSON object a line: action,
original, quarantined, reasons, size, time), so ``restore`` can put each file back.

A move never leaves a file half in two places:
* same filesystem: a hard link to the new name (atomic, and it refuses to overwrite), then
  unlink of the old name; where hard links are not supported, rename after checking that
  the target is free;
* across filesystems: copy into a temp file in the destination folder, fsync, compare size
  and SHA-256 with the source, link the temp file to its name, then unlink the source. Any
  error (disk full, permission) removes the temp file and keeps the source.
The file's mode and mtime travel with it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from core.io.atomic import fsync_dir
from core.data.curation import REASONS, CurationError
from core.data.files import unchanged
from core.io.jsonio import append_jsonl, read_jsonl

Progress = Callable[[int, int, str], None]

LOG_NAME = "quarantine.jsonl"
_NO_HARDLINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS, errno.EACCES}


class MoveError(Exception):
    """A move that did not happen; the file is still whole at its source."""


@dataclass
class Move:
    source: Path
    dest: Path
    reasons: list[str] = field(default_factory=list)
    ok: bool = False
    error: str = ""
    dry_run: bool = False


# ---------------------------------------------------------------------------- one safe move

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _link_no_clobber(src: Path, dst: Path) -> None:
    """Give ``src``'s file the name ``dst`` too; FileExistsError if ``dst`` is taken."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _NO_HARDLINKS:
            raise
        # No hard links here (some network/FAT filesystems): check, then rename.
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "file exists", str(dst)) from exc
        os.rename(src, dst)


def _copy_across(src: Path, dst: Path) -> None:
    """Copy to a temp file beside ``dst``, verify, publish as ``dst``; source untouched."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".part", dir=dst.parent)
    tmp = Path(tmp_name)
    try:
        src_hash = hashlib.sha256()
        with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
            for chunk in iter(lambda: fin.read(1 << 20), b""):
                src_hash.update(chunk)
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        shutil.copystat(src, tmp)
        if tmp.stat().st_size != src.stat().st_size or _sha256(tmp) != src_hash.hexdigest():
            raise MoveError(f"{src}: copy to {dst.parent} did not verify (size or SHA-256 differ)")
        _link_no_clobber(tmp, dst)
        fsync_dir(dst.parent)
    finally:
        # After a successful link the temp name is a second name for dst: drop it; after a
        # failure it is a partial copy: drop it. The source is never touched here.
        if os.path.lexists(tmp):
            os.unlink(tmp)


def safe_move(src: Path | str, dst: Path | str) -> None:
    """Move one file without overwriting ``dst`` and without a moment where it is lost.
    Raises FileExistsError when ``dst`` exists, OSError/MoveError otherwise; on any
    error the file is whole at ``src`` and nothing is left at ``dst``."""
    src, dst = Path(src), Path(dst)
    if not os.path.lexists(src):
        raise FileNotFoundError(errno.ENOENT, "no such file", str(src))
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        _link_no_clobber(src, dst)
        if not os.path.lexists(src):
            return  # the no-hard-link fallback renamed it
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy_across(src, dst)
    # dst is now a complete copy (or a second name) of src: remove the old name.
    try:
        os.unlink(src)
    except OSError:
        try:
            os.unlink(dst)  # undo, so the file is in one place: its source
        except OSError:
            pass
        raise
    fsync_dir(src.parent)
    fsync_dir(dst.parent)


# ---------------------------------------------------------------------------- the log

def _append_log(quarantine_dir: Path, entry: dict) -> None:
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    append_jsonl(quarantine_dir / LOG_NAME, entry)  # fsynced; never glued to a crash's half line


def read_log(quarantine_dir: Path | str) -> list[dict]:
    """Every log entry in order; a garbled line (a crash mid-write) is skipped."""
    return [e for e in read_jsonl(Path(quarantine_dir) / LOG_NAME) if "original" in e and "quarantined" in e]


def quarantined_files(quarantine_dir: Path | str) -> list[dict]:
    """Log entries of the files in quarantine now (quarantined, not yet restored, present)."""
    current: dict[str, dict] = {}
    for entry in read_log(quarantine_dir):
        if entry.get("action") == "quarantine":
            current[entry["quarantined"]] = entry
        elif entry.get("action") == "restore":
            current.pop(entry["quarantined"], None)
    return [e for e in current.values() if os.path.lexists(e["quarantined"])]


def _free_name(dst: Path) -> Path:
    """``dst`` or ``name-1.ext``, ``name-2.ext``... whichever does not exist yet."""
    if not os.path.lexists(dst):
        return dst
    n = 1
    while True:
        cand = dst.with_name(f"{dst.stem}-{n}{dst.suffix}")
        if not os.path.lexists(cand):
            return cand
        n += 1


def _try_move(move: Move, src: Path, dst: Path, *, taken: str) -> bool:
    """safe_move, with any failure written to ``move.error`` (``taken`` when dst exists)."""
    try:
        safe_move(src, dst)
    except FileExistsError:
        move.error = taken
    except OSError as exc:
        move.error = exc.strerror or str(exc)
    except MoveError as exc:
        move.error = str(exc)
    return not move.error


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ---------------------------------------------------------------------------- quarantine / restore

def _flagged_files(report: Any, wanted: set[str] | None) -> tuple[dict[str, list[str]], dict[str, list[Path]]]:
    """rel -> its reasons (of ``wanted``), and rel -> the kept copies of its duplicate flags."""
    per_file: dict[str, list[str]] = {}
    keeps: dict[str, list[Path]] = {}  # for duplicate flags: the copy that must stay
    for flag in report.flags:
        if wanted is None or flag.reason in wanted:
            per_file.setdefault(flag.rel, []).append(flag.reason)
            if flag.keep is not None:
                keeps.setdefault(flag.rel, []).append(Path(flag.keep))
    return per_file, keeps


def _check_still_flagged(move: Move, rec: dict, keeps: list[Path]) -> os.stat_result | None:
    """The source's stat when it is still the file the scan flagged and moving it loses
    nothing; otherwise None, with the reason in ``move.error``."""
    src = move.source
    try:
        st = src.stat()
    except OSError:
        move.error = "no longer in the dataset"
        return None
    if not unchanged(rec, st.st_size, st.st_mtime_ns):
        move.error = "changed since the scan; run `data scan` again"
    elif any(_same_file(src, k) for k in keeps):
        # A report from before symlinks were resolved: its "kept copy" is this very file.
        move.error = "its kept copy is the same file (a symlink or hard link); run `data scan` again"
    elif keeps and len(keeps) == len(move.reasons) and not any(k.exists() for k in keeps):
        # Only flagged as a copy, and the copy it duplicates is gone: it may be the last one.
        move.error = f"its kept copy {keeps[0]} is no longer in the dataset; run `data scan` again"
    return None if move.error else st


def quarantine_flagged(
    report: Any,
    data_dir: Path | str,
    quarantine_dir: Path | str,
    *,
    reasons: Iterable[str] | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> list[Move]:
    """Move every file ``report`` flags (for one of ``reasons``, or any) from ``data_dir``
    into ``quarantine_dir/<its path under data_dir>``. A file that is gone, or changed since
    the scan, is left alone (Move.ok False, with the reason in Move.error)."""
    data_dir = Path(data_dir).resolve()
    quarantine_dir = Path(quarantine_dir)
    if Path(report.data_dir).resolve() != data_dir:
        raise CurationError(f"the scan report is for {report.data_dir}, not {data_dir}; run `data scan` on it first")
    wanted = set(reasons) if reasons else None
    if wanted:
        unknown = sorted(wanted - set(REASONS))
        if unknown:
            raise ValueError(f"unknown reason {', '.join(unknown)}; known: {', '.join(REASONS)}")
    per_file, keeps = _flagged_files(report, wanted)
    moves: list[Move] = []
    items = sorted(per_file.items())
    for i, (rel, why) in enumerate(items, 1):
        src = data_dir / rel
        dst = _free_name(quarantine_dir / rel)
        move = Move(src, dst, sorted(set(why)), dry_run=dry_run)
        moves.append(move)
        st = _check_still_flagged(move, report.files.get(rel, {}), keeps.get(rel, []))
        if not move.error and not dry_run:
            # Log first, then move: an entry whose file never arrived is ignored (restore
            # only sees quarantined paths that exist), while a moved file that missed its
            # log line (Ctrl-C, full disk in between) could not be found to restore.
            try:
                _append_log(quarantine_dir, {
                    "action": "quarantine", "original": str(src), "quarantined": str(dst),
                    "reasons": move.reasons, "size": st.st_size, "time": _now(),
                })
            except OSError as exc:
                move.error = f"cannot write {quarantine_dir / LOG_NAME} ({exc.strerror or exc}); file left in place"
            else:
                _try_move(move, src, dst, taken=f"{dst} appeared meanwhile; left in place")
        move.ok = not move.error
        if progress is not None:
            progress(i, len(items), "quarantining")
    return moves


def restore(
    quarantine_dir: Path | str,
    *,
    paths: Iterable[Path | str] | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> list[Move]:
    """Put quarantined files back where they came from (``paths`` None = all). A path is
    matched against either the quarantined or the original location. Never overwrites:
    when the original path is taken again, the file stays in quarantine (Move.error)."""
    quarantine_dir = Path(quarantine_dir)
    present = quarantined_files(quarantine_dir)
    moves: list[Move] = []
    if paths is None:
        chosen = present
    else:
        by_any: dict[str, dict] = {}
        for e in present:
            by_any[str(Path(e["quarantined"]).resolve())] = e
            by_any.setdefault(str(Path(e["original"]).resolve()), e)
        chosen = []
        for p in paths:
            entry = by_any.get(str(Path(p).expanduser().resolve()))
            if entry is None:
                moves.append(Move(Path(p), Path(p), error="not in quarantine (see quarantine.jsonl)"))
            elif entry not in chosen:
                chosen.append(entry)
    for i, entry in enumerate(chosen, 1):
        q, orig = Path(entry["quarantined"]), Path(entry["original"])
        move = Move(q, orig, list(entry.get("reasons", [])), dry_run=dry_run)
        moves.append(move)
        if os.path.lexists(orig):
            move.error = f"{orig} exists; not overwritten, file stays in quarantine"
        elif not dry_run:
            if _try_move(move, q, orig, taken=f"{orig} exists; not overwritten, file stays in quarantine"):
                _append_log(quarantine_dir, {
                    "action": "restore", "original": str(orig), "quarantined": str(q),
                    "reasons": move.reasons, "time": _now(),
                })
        move.ok = not move.error
        if progress is not None:
            progress(i, len(chosen), "restoring")
    return moves
