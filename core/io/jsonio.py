"""JSON and JSON Lines on disk, in one place.

* ``write_json``: the whole file replaced atomically (``core.io.atomic``): a reader sees the
  old file or the new one, never half of one.
* ``read_json``: parsed JSON, or None when the file is missing, unreadable or garbled
  (caches are disposable; reports and configs say so in their own words).
* ``append_jsonl``: one object a line, flushed (and fsynced when asked); a half line left
  by a crash is never glued to the new one.
* ``read_jsonl``: every complete object of a file; ``read_jsonl_tail``: the objects
  appended since an offset, for readers that follow a file another process writes. Both
  skip a garbled line and never consume a half-written last line.
No torch import: the studio reads run folders through this.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

from core.io.atomic import atomic_write_text


def write_json(path: Path | str, data: Any, *, indent: int | None = None, sort_keys: bool = False,
               default: Any = None, allow_nan: bool = True) -> None:
    """``data`` as JSON (compact unless ``indent``), written atomically. ``sort_keys``,
    ``default`` and ``allow_nan`` are json.dumps's."""
    options: dict[str, Any] = {"sort_keys": sort_keys, "default": default, "allow_nan": allow_nan}
    if indent is None:
        text = json.dumps(data, separators=(",", ":"), **options)
    else:
        text = json.dumps(data, indent=indent, **options) + "\n"
    atomic_write_text(path, text)


def read_json(path: Path | str, *, logger: logging.Logger | None = None) -> Any | None:
    """Parsed JSON, or None when ``path`` is missing, unreadable or not valid JSON.
    With ``logger``, a file that exists but cannot be used is logged as a warning."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    except (OSError, UnicodeDecodeError) as exc:
        if logger is not None:
            logger.warning("cannot read %s: %s", path, exc)
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        if logger is not None:
            logger.warning("ignoring garbled %s: %s", path, exc)
        return None


def append_jsonl(path: Path | str, record: Any, *, fsync: bool = True) -> None:
    """Append ``record`` as one line. If the file ends in half a line (a crash or a full
    disk mid-write), the new line starts on a fresh one so it stays readable."""
    path = Path(path)
    line = (json.dumps(record) + "\n").encode("utf-8")
    with open(path, "ab+") as fh:
        if fh.seek(0, os.SEEK_END) > 0:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                line = b"\n" + line
        fh.write(line)  # one write per line
        fh.flush()
        if fsync:
            os.fsync(fh.fileno())


def parse_jsonl(chunk: bytes) -> list[dict]:
    """The JSON objects of the lines in ``chunk``; a garbled line (a killed writer's) is skipped."""
    records = []
    for raw in chunk.split(b"\n"):
        raw = raw.strip()
        if not raw:
            continue
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(obj, dict):
            records.append(obj)
    return records


def read_jsonl_tail(path: Path | str, offset: int = 0, *, logger: logging.Logger | None = None) -> tuple[list[dict], int]:
    """Objects on the complete lines after byte ``offset``, and the offset to pass next
    time. A half-written last line stays unread until its newline arrives; a file shorter
    than ``offset`` (replaced meanwhile) is read again from the start."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            if offset > size:
                offset = 0
            fh.seek(offset)
            chunk = fh.read(size - offset)
    except (FileNotFoundError, NotADirectoryError):
        return [], offset
    except OSError as exc:
        if logger is not None:
            logger.warning("cannot read %s: %s", path, exc)
        return [], offset
    end = chunk.rfind(b"\n")
    if end < 0:
        return [], offset
    return parse_jsonl(chunk[: end + 1]), offset + end + 1


def read_jsonl(path: Path | str) -> list[dict]:
    """Every object of a JSONL file in order ([] when it is missing); garbled lines and a
    half-written last line are skipped."""
    return read_jsonl_tail(path, 0)[0]


def dataclass_from_dict(cls: type, data: Any, what: str):
    """A dataclass from a JSON object: missing keys take their defaults (configs written before a
    field existed load as then); an unknown key or a non-object is a ValueError naming ``what``."""
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a dict, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what} key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**data)
