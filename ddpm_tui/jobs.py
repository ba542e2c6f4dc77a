"""Background jobs the studio starts: `ddpm-tui train ...` and `ddpm-tui scrape ...` run as
separate, detached processes (stdin from /dev/null, output to a log file, their own session),
so they keep running when the studio quits or the SSH connection drops.

The studio never owns a job's state: a training run is re-attached by reading its run
directory (core/training/runs.py); a scrape is re-attached through a small ``job.json`` next to its
events file. Stopping is SIGTERM; the trainer and the scraper save and exit on it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from core.io.jsonio import read_jsonl_tail
from core.training.events import RunStatus
from ddpm_tui.workspace import Workspace

TRAIN_LOG = "console.log"  # the trainer's stdout/stderr; it writes its own train.log too


class JobError(Exception):
    """A job could not be started or stopped (one line, shown to the user)."""


def ddpm_command(*args: str) -> list[str]:
    """The same `ddpm-tui ...` a user could type, run with this interpreter."""
    return [sys.executable, "-m", "ddpm_tui", *args]


def launch_detached(cmd: list[str], log_path: Path, cwd: Path | None = None) -> subprocess.Popen:
    """Start `cmd` in its own session with no terminal; output appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")  # the log shows lines as they happen
    # cuda:N counts GPUs in PCI bus order, as NVML and so the studio's system monitor do
    # (CUDA's default puts the fastest first); a user's own choice stays
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    with open(log_path, "ab") as log:
        try:
            return subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True, cwd=str(cwd) if cwd else None, env=env,
            )
        except OSError as exc:
            raise JobError(f"could not start {' '.join(cmd[2:4])}: {exc}") from exc


def pid_alive(pid: int | None) -> bool:
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def terminate(pid: int) -> bool:
    """SIGTERM one process; False when it is already gone."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    except PermissionError as exc:
        raise JobError(f"not allowed to stop process {pid}: {exc}") from exc
    return True


class JobTable:
    """The children this studio started. Polling them reaps exited ones (no zombies), so
    `pid_alive` tells the truth for them; processes started by an earlier studio are
    not our children and need no reaping."""

    def __init__(self) -> None:
        self._procs: dict[str, subprocess.Popen] = {}

    def add(self, key: str, proc: subprocess.Popen) -> None:
        self._procs[key] = proc

    def get(self, key: str) -> subprocess.Popen | None:
        return self._procs.get(key)

    def poll(self) -> dict[str, int]:
        """Reap exited children; returns {key: exit code} for those that ended since last poll."""
        ended = {}
        for key, proc in list(self._procs.items()):
            code = proc.poll()
            if code is not None:
                ended[key] = code
                del self._procs[key]
        return ended


# -- training ---------------------------------------------------------------------------------


def train_command(run_name: str, values: dict[str, object], workspace: Workspace, resume: bool = False) -> list[str]:
    """`ddpm-tui train --run NAME ... --quiet` giving ``values`` ({option name: value},
    as declared in core/training/options.py) to the trainer."""
    from core.training.options import to_argv

    args = ["train", "--workspace", str(workspace.root), "--run", run_name]
    if resume:
        args.append("--resume")
    args += to_argv(values)
    args.append("--quiet")
    return ddpm_command(*args)


def launch_train(workspace: Workspace, run_name: str, options: dict[str, object], *,
                 resume: bool = False, table: JobTable | None = None) -> subprocess.Popen:
    run_dir = workspace.run_dir(run_name)
    cmd = train_command(run_name, options, workspace, resume=resume)
    # An empty run folder is a new run to the trainer, so the log can live inside it from
    # the start; a launch that fails early (bad dataset) leaves its reason there.
    log = run_dir / TRAIN_LOG
    proc = launch_detached(cmd, log, cwd=workspace.root)
    if table is not None:
        table.add(f"train:{run_name}", proc)
    return proc


def log_tail(path: Path, lines: int = 1, max_bytes: int = 8192) -> str:
    """The last non-empty line(s) of a log file, or "" when there is none."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - max_bytes))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    found = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return "\n".join(found[-lines:])


def stop_run(run_dir: Path, status: RunStatus | None) -> bool:
    """SIGTERM the trainer of a run (pid from status.json, only on this host)."""
    if not status:
        raise JobError(f"{run_dir}: no status.json, nothing to stop")
    pid = status.get("pid")
    host = status.get("host")
    if host and host != socket.gethostname():
        raise JobError(f"run {run_dir.name} runs on host {host}; stop it there")
    if not isinstance(pid, int):
        raise JobError(f"{run_dir}/status.json has no pid")
    return terminate(pid)


# -- scraping ---------------------------------------------------------------------------------


@dataclass
class ScrapeJob:
    pid: int
    events: Path
    log: Path
    started: float
    breeds: list[str]

    def alive(self) -> bool:
        return pid_alive(self.pid)


def scrape_dir(workspace: Workspace) -> Path:
    return workspace.cache_dir / "scrape"


def scrape_args(workspace: Workspace, breeds: list[str], engine: str, max_per_breed: int, events: Path, *,
                dataset: str = "dogs") -> list[str]:
    """`ddpm-tui scrape ...` arguments (after `ddpm-tui`) for the studio's form."""
    bad = [b for b in breeds if "," in b]
    if bad:
        raise JobError(f"breed name {bad[0]!r} contains a comma")
    return ["scrape", "--workspace", str(workspace.root), "--engine", engine,
            "--max-per-breed", str(max_per_breed), "--dataset", dataset, "--events", str(events),
            "--breeds", ",".join(breeds), "--quiet"]


def launch_scrape(workspace: Workspace, breeds: list[str], engine: str, max_per_breed: int, *,
                  dataset: str = "dogs",
                  extra: list[str] | None = None, table: JobTable | None = None) -> ScrapeJob:
    d = scrape_dir(workspace)
    d.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    events = d / f"events-{stamp}.jsonl"
    log = d / f"scrape-{stamp}.log"
    args = scrape_args(workspace, breeds, engine, max_per_breed, events, dataset=dataset) + list(extra or [])
    proc = launch_detached(ddpm_command(*args), log, cwd=workspace.root)
    job = ScrapeJob(proc.pid, events, log, time.time(), list(breeds))
    tmp = d / "job.json.tmp"
    tmp.write_text(json.dumps({"pid": job.pid, "events": str(events), "log": str(log),
                               "started": job.started, "breeds": job.breeds}))
    os.replace(tmp, d / "job.json")
    if table is not None:
        table.add("scrape", proc)
    return job


def current_scrape(workspace: Workspace) -> ScrapeJob | None:
    """The last scrape this workspace started (running or not), from job.json."""
    path = scrape_dir(workspace) / "job.json"
    try:
        data = json.loads(path.read_text())
        return ScrapeJob(int(data["pid"]), Path(data["events"]), Path(data["log"]),
                         float(data.get("started", 0)), list(data.get("breeds", [])))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, OSError):
        return None  # a garbled job.json means no job we can re-attach to


def read_jsonl(path: Path, offset: int) -> tuple[list[dict], int]:
    """New complete JSON lines from `offset`; a half-written last line waits for next time."""
    return read_jsonl_tail(path, offset)
