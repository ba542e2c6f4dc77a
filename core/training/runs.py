"""The run directory: the contract between the trainer (writer) and the studio / CLI (readers).

```
runs/<name>/
  config.json     everything needed to rebuild the model and continue training
  status.json     state, pid, host, step, epoch, message; replaced atomically
  metrics.jsonl   one JSON object a line, appended and flushed
  checkpoints/    last.pt (+ kept milestones), written atomically by core.diffusion.checkpoint
  samples/        epoch_0010.png, ema_epoch_0010.png, ...
  train.log       the trainer's own log
```

Writers never leave a half-written JSON file (temp file + fsync + os.replace). Readers
never crash on what a killed writer may leave behind: a missing or garbled file reads as
None, a half-written last metrics line is left for the next read, and a status that still
says "running" while its process is gone reads as "died".
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.io.jsonio import read_json, read_jsonl_tail, write_json
from core.training import events
from core.training.events import RunStatus

RUN_STATES = events.RUN_STATES  # declared with status.json's fields in core/training/events.py
# What effective_state() can return on top of RUN_STATES.
DIED = "died"
UNKNOWN = "unknown"

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "train.log"
CHECKPOINTS_DIR = "checkpoints"
SAMPLES_DIR = "samples"
TENSORBOARD_DIR = "tb"  # train --tensorboard's event files
LAST_CHECKPOINT = "last.pt"
LOCK_FILE = "train.lock"  # flock'ed by the trainer while it runs (RunLock)

# How much of the end of metrics.jsonl run_info() reads to find the last loss.
_TAIL_BYTES = 64 * 1024

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- files


def _json_default(value: Any) -> Any:
    """Let configs carry Paths, tuples of Paths and other simple objects."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite(value: Any) -> Any:
    """NaN/inf are not JSON; write them as null so every reader can parse the line."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _write_run_json(path: Path | str, obj: Any) -> None:
    """config.json and status.json: sorted, indented, NaN as null, written atomically."""
    write_json(path, _finite(obj), indent=2, sort_keys=True, default=_json_default, allow_nan=False)


def _read_json_dict(path: Path) -> dict | None:
    """A JSON object from ``path``; None when missing, unreadable, garbled or not an object."""
    obj = read_json(path, logger=log)
    return obj if isinstance(obj, dict) else None


# ---------------------------------------------------------------------------- config / status


def write_config(run_dir: Path | str, config: dict) -> None:
    _write_run_json(Path(run_dir) / CONFIG_FILE, config)


def read_config(run_dir: Path | str) -> dict | None:
    return _read_json_dict(Path(run_dir) / CONFIG_FILE)


def _process_start_time(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # no psutil, no such process, no permission: just unknown
        return None


def process_identity() -> dict:
    """pid, host and process start time of the calling process, as status.json stores them.
    The start time lets a reader tell our process from a later one that reused the pid."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "pid_started": _process_start_time(os.getpid()),
    }


def write_status(run_dir: Path | str, **fields: Any) -> RunStatus:
    """Merge ``fields`` into status.json (atomic replace) and return the new status.

    ``updated_at`` (Unix seconds) is always set. Writing ``state="running"`` without a pid
    records the calling process (pid, host, start time): "running" means "this process".
    """
    run_dir = Path(run_dir)
    state = fields.get("state")
    if state is not None and state not in RUN_STATES:
        raise ValueError(f"unknown run state {state!r}; expected one of {', '.join(RUN_STATES)}")
    status = read_status(run_dir) or {}
    status.update(fields)
    if state == events.RUNNING and "pid" not in fields:
        status.update(process_identity())
    status["updated_at"] = time.time()
    try:
        _write_run_json(run_dir / STATUS_FILE, status)
    except OSError as exc:
        if not (exc.errno == errno.ENOSPC and state is not None and state != events.RUNNING):
            raise
        _rewrite_in_place(run_dir / STATUS_FILE, status)
    return status


def _rewrite_in_place(path: Path, status: RunStatus) -> None:
    """The final state on a full disk, where the temp file of an atomic write has no room:
    truncate and rewrite the small file in place (its freed blocks take the new text).
    Better a status that could be torn by a crash in these microseconds than one that says
    "running" for ever. Only the essentials, so the text fits where the old one was."""
    keep = {k: status[k] for k in ("state", "message", "step", "epoch", "pid", "host", "pid_started",
                                   "updated_at") if k in status}
    data = (json.dumps(keep, default=_json_default) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_status(run_dir: Path | str) -> RunStatus | None:
    return _read_json_dict(Path(run_dir) / STATUS_FILE)


# ---------------------------------------------------------------------------- liveness


def pid_status(pid: Any, host: str | None = None, started: float | None = None) -> str:
    """"alive", "dead" or "unknown" (another host: we cannot look at its processes)."""
    if host and host != socket.gethostname():
        return "unknown"
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return "unknown"
    if pid <= 0:
        return "dead"
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a declared dependency
        psutil = None
    if psutil is not None:
        try:
            proc = psutil.Process(pid)
            # A killed child its parent has not reaped yet is a zombie: it is not training.
            if proc.status() == psutil.STATUS_ZOMBIE:
                return "dead"
            # The pid was reused by another process since the run recorded it.
            if started is not None and abs(proc.create_time() - float(started)) > 1.0:
                return "dead"
            return "alive"
        except psutil.NoSuchProcess:
            return "dead"
        except psutil.AccessDenied:
            return "alive"
        except (psutil.Error, OSError, ValueError):
            pass  # fall back to signal 0
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "dead"
    except PermissionError:
        return "alive"  # exists, owned by someone else
    except OSError:
        return "unknown"
    return "alive"


def is_pid_alive(pid: Any, host: str | None = None, started: float | None = None) -> bool:
    """True unless the process is known to be gone. A process on another host cannot be
    checked from here, so it counts as alive (never declare dead what we cannot see)."""
    return pid_status(pid, host, started) != "dead"


def effective_state(status: RunStatus | None) -> str:
    """The state a reader should show: status["state"], except a "running" run whose
    process is gone on this host is "died". Missing/invalid status -> "unknown"."""
    if not status:
        return UNKNOWN
    state = status.get("state")
    if state not in RUN_STATES:
        return UNKNOWN
    if state == events.RUNNING:
        if pid_status(status.get("pid"), status.get("host"), status.get("pid_started")) == "dead":
            return DIED
    return state


# ---------------------------------------------------------------------------- metrics


class MetricsWriter:
    """Appends one JSON object per line to metrics.jsonl, flushed per line so a reader (or
    a kill -9) sees every finished line. Not-finite floats are written as null."""

    def __init__(self, run_dir: Path | str, *, fsync: bool = False) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._fh = open(self.path, "a+b")
        # A writer killed mid-line leaves a fragment without "\n"; end it so our first
        # record starts on a line of its own (readers skip the garbled fragment).
        self._fh.seek(0, os.SEEK_END)
        if self._fh.tell() > 0:
            self._fh.seek(-1, os.SEEK_END)
            if self._fh.read(1) != b"\n":
                self._fh.seek(0, os.SEEK_END)
                self._fh.write(b"\n")
                self._fh.flush()

    def append(self, record: dict) -> None:
        if self._fh is None:
            raise ValueError(f"{self.path}: metrics writer is closed")
        record = dict(record)
        record.setdefault("time", time.time())
        line = json.dumps(_finite(record), default=_json_default, allow_nan=False)
        self._fh.write(line.encode("utf-8") + b"\n")  # one write per line
        self._fh.flush()
        if self._fsync:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(run_dir: Path | str, offset: int = 0, filename: str = METRICS_FILE) -> tuple[list[dict], int]:
    """Records appended since ``offset`` and the offset to pass next time (from
    metrics.jsonl, or another JSON-lines file of the run such as eval.jsonl).

    Only complete lines are consumed: a half-written last line stays unread until its
    newline arrives. If the file is shorter than ``offset`` (it was replaced), reading
    starts again from the beginning.
    """
    return read_jsonl_tail(Path(run_dir) / filename, offset, logger=log)


def last_metrics(run_dir: Path | str, key: str | None = "loss") -> dict | None:
    """The last complete metrics record (having ``key`` if given), reading only the tail."""
    path = Path(run_dir) / METRICS_FILE
    try:
        size = path.stat().st_size
    except OSError:
        return None
    # The first line of the tail may be cut: parse_jsonl skips it as garbled.
    for record in reversed(read_jsonl_tail(path, max(0, size - _TAIL_BYTES))[0]):
        if key is None or record.get(key) is not None:
            return record
    return None


def dedupe_metrics(records: list[dict]) -> list[dict]:
    """Records as a plot should show them after resumes: when the step goes back (a run
    resumed from an older checkpoint), the earlier records from that step on are dropped."""
    out: list[dict] = []
    for record in records:
        step = record.get("step")
        if isinstance(step, (int, float)):
            while out and isinstance(out[-1].get("step"), (int, float)) and out[-1]["step"] >= step:
                out.pop()
        out.append(record)
    return out


# ---------------------------------------------------------------------------- layout


def checkpoints_dir(run_dir: Path | str) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def samples_dir(run_dir: Path | str) -> Path:
    return Path(run_dir) / SAMPLES_DIR


def tensorboard_dir(run_dir: Path | str) -> Path:
    return Path(run_dir) / TENSORBOARD_DIR


def log_path(run_dir: Path | str) -> Path:
    return Path(run_dir) / LOG_FILE


class RunBusy(Exception):
    """Another process holds the run's lock."""


class RunLock:
    """One trainer per run: an ``flock`` on <run>/train.lock, held for the trainer's life and
    released by the kernel when the process dies (no stale lock after a kill -9)."""

    def __init__(self, fd: int, path: Path, created: bool = False) -> None:
        self.fd = fd
        self.path = path
        self.created = created  # this claim made the run folder
        self.status_before = read_status(path.parent)  # status.json as the lock found it

    @classmethod
    def claim(cls, run_dir: Path | str) -> "RunLock":
        """Create the run folder if needed and lock it; RunBusy names the holder, OSError
        (read-only, full, not a folder) is the caller's to report."""
        import fcntl

        run_dir = Path(run_dir)
        created = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            _remove_new_run_dir(run_dir, created)
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunBusy(f"run {run_dir.name!r} is already training: pid {holder} holds its lock ({LOCK_FILE}); "
                          "stop it first") from None
        except OSError:  # e.g. ENOLCK: a file system without locks
            os.close(fd)
            _remove_new_run_dir(run_dir, created)
            raise
        try:  # who holds it, for the message above (the lock itself is the flock)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # a full disk: the lock still holds
        return cls(fd, path, created)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = -1

    def give_up(self) -> None:
        """A start refused after the claim: leave the run as the claim found it (status.json
        back as it was; a run folder this claim made removed), then release the lock."""
        run_dir = self.path.parent
        try:
            if self.created:
                _remove_new_run_dir(run_dir, True)
            elif self.status_before is None:
                (run_dir / STATUS_FILE).unlink(missing_ok=True)
            else:
                _write_run_json(run_dir / STATUS_FILE, self.status_before)
        except OSError as exc:
            log.warning("could not restore %s: %s", run_dir / STATUS_FILE, exc)
        self.release()


def _remove_new_run_dir(run_dir: Path, created: bool) -> None:
    """Remove a run folder a refused start made (only then: it holds nothing of a run yet), so
    no run without a status is left for `runs` to list as "unknown"."""
    if not created:
        return
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def latest_checkpoint(run_dir: Path | str) -> Path | None:
    """checkpoints/last.pt; if that is missing, the newest other *.pt (a milestone)."""
    ckpt_dir = checkpoints_dir(run_dir)
    last = ckpt_dir / LAST_CHECKPOINT
    if last.is_file():
        return last
    try:
        candidates = [p for p in ckpt_dir.glob("*.pt") if p.is_file() and not p.name.startswith(".")]
    except OSError:
        return None
    if not candidates:
        return None
    return max(candidates, key=lambda p: (_mtime(p), p.name))


def latest_samples(run_dir: Path | str) -> list[Path]:
    """Sample PNGs, newest first (ties: name descending, so ema_epoch_0010 comes with epoch_0010)."""
    try:
        pngs = [p for p in samples_dir(run_dir).glob("*.png") if p.is_file() and not p.name.startswith(".")]
    except OSError:
        return []
    return sorted(pngs, key=lambda p: (_mtime(p), p.name), reverse=True)


# ---------------------------------------------------------------------------- listing


@dataclass
class RunInfo:
    name: str
    path: Path
    state: str  # one of RUN_STATES, "died" or "unknown"
    step: int | None = None
    epoch: int | None = None
    last_loss: float | None = None
    pid: int | None = None
    alive: bool | None = None  # None: not running, or on another host (cannot tell)
    updated_at: float | None = None  # Unix seconds
    config: dict = field(default_factory=dict)
    message: str = ""
    host: str | None = None
    status: RunStatus = field(default_factory=dict)


def _as_int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _as_float(value: Any) -> float | None:
    try:
        out = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return out if out is None or math.isfinite(out) else None


def run_info(run_dir: Path | str) -> RunInfo:
    """Everything a run list shows about one run directory; never raises on bad contents."""
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    config = read_config(run_dir) or {}
    state = effective_state(status)
    status = status or {}

    last_loss = _as_float(status.get("last_loss", status.get("loss")))
    step = _as_int(status.get("step"))
    epoch = _as_int(status.get("epoch"))
    if last_loss is None or step is None:
        record = last_metrics(run_dir)
        if record:
            last_loss = last_loss if last_loss is not None else _as_float(record.get("loss"))
            step = step if step is not None else _as_int(record.get("step"))
            epoch = epoch if epoch is not None else _as_int(record.get("epoch"))

    alive: bool | None = None
    if status.get("state") == events.RUNNING:
        seen = pid_status(status.get("pid"), status.get("host"), status.get("pid_started"))
        alive = None if seen == "unknown" else seen == "alive"

    updated_at = _as_float(status.get("updated_at"))
    if updated_at is None:
        updated_at = max(_mtime(run_dir / STATUS_FILE), _mtime(run_dir / CONFIG_FILE),
                         _mtime(run_dir / METRICS_FILE), _mtime(run_dir)) or None

    return RunInfo(
        name=run_dir.name,
        path=run_dir,
        state=state,
        step=step,
        epoch=epoch,
        last_loss=last_loss,
        pid=_as_int(status.get("pid")),
        alive=alive,
        updated_at=updated_at,
        config=config,
        message=str(status.get("message") or ""),
        host=status.get("host"),
        status=status,
    )


def list_runs(runs_dir: Path | str) -> list[RunInfo]:
    """Every run folder under ``runs_dir``, newest first (by status.updated_at, else file
    times). Folders without status/config still show, as state "unknown"."""
    runs_dir = Path(runs_dir)
    try:
        entries = [p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        log.warning("cannot list %s: %s", runs_dir, exc)
        return []
    infos = [run_info(p) for p in entries]
    infos.sort(key=lambda r: (r.updated_at or 0.0, r.name), reverse=True)
    return infos


# ---------------------------------------------------------------------------- logging


_HANDLER_TAG = "_ddpm_run_log"


class _LogFileHandler(logging.FileHandler):
    """train.log; a record that cannot be written (a full disk) is dropped without the
    logging module's traceback on stderr: the same message reaches the console and status."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # the last flush on a full disk
            self.stream = None


def setup_run_logger(run_dir: Path | str, name: str = "ddpm_tui.train", level: int = logging.INFO) -> logging.Logger:
    """A logger that appends to run_dir/train.log (flushed per record). Calling it again
    for another run directory replaces the previous train.log handler instead of adding one."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(name)
    for handler in list(logger.handlers):
        if getattr(handler, _HANDLER_TAG, False):
            logger.removeHandler(handler)
            handler.close()
    handler = _LogFileHandler(run_dir / LOG_FILE, mode="a", encoding="utf-8")
    setattr(handler, _HANDLER_TAG, True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > level:
        logger.setLevel(level)
    return logger


def close_run_logger(logger: logging.Logger) -> None:
    """Detach and close the train.log handler set up by setup_run_logger."""
    for handler in list(logger.handlers):
        if getattr(handler, _HANDLER_TAG, False):
            logger.removeHandler(handler)
            handler.close()
