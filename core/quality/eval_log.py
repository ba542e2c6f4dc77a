"""``<run>/eval.jsonl``: one JSON object a line per metric of an evaluation. Torch-free, so
the run lists and the studio read it without loading torch.

A line: ``step, metric, value, sampler, steps, n, features, time`` plus ``std`` (KID),
``eval_id`` (hash of the checkpoint identity and every setting that changes the numbers;
an evaluation with the same id is reused, not recomputed), ``checkpoint`` (that identity),
``seconds`` and the remaining settings. All lines of one evaluation go out in one
``write`` on an O_APPEND file, then fsync; a reader skips a half-written last line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

from core.io.jsonio import read_jsonl_tail
from core.io.safe_text import shown

EVAL_FILE = "eval.jsonl"
RECORD_KEYS = ("step", "metric", "value", "sampler", "steps", "n", "features", "time")
# What an evaluation written before records listed their metrics must hold to be reused.
CORE_METRICS = ("fid", "kid", "precision", "recall")


class EvalLogError(Exception):
    """eval.jsonl cannot be written; the message is one line naming the file."""


def eval_path(run_dir: Path | str) -> Path:
    return Path(run_dir) / EVAL_FILE


def eval_id(identity: dict, settings: dict) -> str:
    """A stable hash of what makes two evaluations the same."""
    blob = json.dumps({"checkpoint": identity, "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def check_writable(run_dir: Path | str) -> None:
    """Raise EvalLogError now, before minutes of sampling, if eval.jsonl is something that
    cannot take records (a folder, a device)."""
    path = eval_path(run_dir)
    if path.exists() and not path.is_file():
        raise EvalLogError(f"{shown(str(path))} is not a file; move it away so evaluations can be recorded")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # os.write may write less than asked (a nearly full disk) without raising
        view = view[os.write(fd, view):]


def append_records(run_dir: Path | str, records: Iterable[dict]) -> None:
    """Append ``records`` whole or not at all: a write that fails part-way (full disk) is
    cut back to the old end of the file and raised as EvalLogError."""
    lines = [json.dumps({k: _clean(v) for k, v in r.items()}, allow_nan=False, default=str) for r in records]
    if not lines:
        return
    path = eval_path(run_dir)
    check_writable(run_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as exc:
        raise EvalLogError(f"cannot write {shown(str(path))}: {exc.strerror or exc}") from None
    try:
        data = ("\n".join(lines) + "\n").encode("utf-8")
        size = os.fstat(fd).st_size
        if size:
            # A writer killed mid-line left a fragment: start our lines on a line of their own.
            with open(path, "rb") as fh:
                fh.seek(size - 1)
                if fh.read(1) != b"\n":
                    data = b"\n" + data
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise EvalLogError(f"cannot record the evaluation in {shown(str(path))}: {exc.strerror or exc}; "
                               "nothing was appended") from None
    finally:
        os.close(fd)


def read_eval(run_dir: Path | str, offset: int = 0) -> tuple[list[dict], int]:
    """Records appended since ``offset`` and the next offset (complete lines only)."""
    return read_jsonl_tail(eval_path(run_dir), offset)


def find_evaluation(run_dir: Path | str, wanted_id: str) -> dict[str, dict]:
    """The records (by metric) of an earlier evaluation with this id; {} when there is
    none, or when what is there is incomplete or not numbers (a cut or hand-edited file):
    such an evaluation is computed again, never trusted."""
    found: dict[str, dict] = {}
    for record in read_eval(run_dir)[0]:
        if record.get("eval_id") == wanted_id and isinstance(record.get("metric"), str):
            found[record["metric"]] = record
    return found if found and _complete(found) else {}


def _complete(found: dict[str, dict]) -> bool:
    listed = {tuple(r["metrics"]) for r in found.values() if isinstance(r.get("metrics"), list)}
    expected = set(listed.pop()) if len(listed) == 1 else set(CORE_METRICS)
    if listed or not expected <= set(found):
        return False  # records of two evaluations disagree, or some are missing
    if "kid" in expected and _number(found["kid"].get("std")) is None:
        return False
    return all(_number(found[m].get("value")) is not None for m in expected)


def number(value: Any) -> float | None:
    """A finite number from a record, or None (text, bool, null, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


_number = number


def fid_points(records: Iterable[dict], features: str | None = None) -> list[tuple[int, float, str]]:
    """(step, fid, features) of the FID records, in file order (optionally one feature net)."""
    out = []
    for r in records:
        value, step = _number(r.get("value")), _number(r.get("step"))
        if r.get("metric") != "fid" or value is None or step is None:
            continue
        if features is not None and r.get("features") != features:
            continue
        out.append((int(step), value, str(r.get("features") or "")))
    return out


# What makes two FIDs comparable: the same feature net (name and weights), the same number
# of images (FID is biased by n: fewer images read higher) and the same guidance.
LIKE_WITH_LIKE = ("features", "feature_key", "n", "guidance")


def best_fid(run_dir: Path | str) -> tuple[float, int, str] | None:
    """(lowest FID, its step, its features) of a run, or None before any evaluation."""
    return best_fid_of(read_eval(run_dir)[0])


def best_fid_of(records: Iterable[dict]) -> tuple[float, int, str] | None:
    """best_fid of eval.jsonl records already read. The best is taken among the evaluations
    like the latest one (LIKE_WITH_LIKE): an n=50 FID never beats an n=200 one, nor a
    dataset-feature FID an Inception one."""
    fids = [r for r in records if r.get("metric") == "fid"
            and _number(r.get("value")) is not None and _number(r.get("step")) is not None]
    if not fids:
        return None
    latest = [fids[-1].get(k) for k in LIKE_WITH_LIKE]
    value, step = min((_number(r["value"]), int(r["step"])) for r in fids
                      if [r.get(k) for k in LIKE_WITH_LIKE] == latest)
    return value, step, str(fids[-1].get("features") or "")


def format_best_fid(best: tuple[float, int, str] | None) -> str:
    """'12.3@1200' for a table cell, '–' when the run has no evaluation."""
    if best is None:
        return "–"
    value, step, _ = best
    return f"{value:.3g}@{step}" if value < 1000 else f"{value:.0f}@{step}"
