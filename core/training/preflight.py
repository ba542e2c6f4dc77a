"""Before and around training: the checks that let a run start (dataset, checkpoint, options,
another trainer), claiming the run folder, signals, and the one line a crash is reported as.
Rank 0 runs the checks and shares the verdict, so every rank fails or starts together."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from core.diffusion.checkpoint import CheckpointError, check_compatible, load_checkpoint
from core.diffusion.device import is_oom
from core.training import runs
from core.training.config import LOGGER_NAME, TrainConfig, TrainError
from core.training.distributed import Dist, first_line
from core.training.events import LOADING, RUNNING
from core.training.records import ProgressFn, Reporter


def preflight(config: TrainConfig, run_dir: Path) -> dict | None:
    """Check that this run can start; return its checkpoint when it resumes."""
    if config.tensorboard:
        from core.training import tensorboard

        if not tensorboard.available():
            raise TrainError(tensorboard.MISSING)
    classes = scan_dataset(config)
    ckpt_path = runs.checkpoints_dir(run_dir) / runs.LAST_CHECKPOINT
    ckpt = None
    if ckpt_path.exists():
        try:
            ckpt = load_checkpoint(ckpt_path)
        except CheckpointError as exc:
            raise TrainError(f"{exc} (the file is left as it is; move it away to start over)") from None
        classes = pinned_classes(ckpt, config) or classes
        check_resume(ckpt, config, classes, run_dir)
        saved = runs.read_config(run_dir) or {}
        refused = config.refused_changes(saved)
        if refused:
            raise TrainError(f"run {run_dir.name!r} cannot continue with these options: {'; '.join(refused)}. "
                             "Use the run's own settings or start a new --run")
    status = runs.read_status(run_dir)
    if status and status.get("state") == RUNNING and status.get("pid") != os.getpid():
        seen = runs.pid_status(status.get("pid"), status.get("host"), status.get("pid_started"))
        if seen != "dead":
            raise TrainError(f"run {run_dir.name!r} is already training (pid {status.get('pid')} on "
                             f"{status.get('host')}); stop it first")
    return ckpt


def claim(run_dir: Path, ckpt: dict | None, world: Dist, reporter: Reporter, log: logging.Logger) -> runs.RunLock:
    """Rank 0: lock the run (atomically: one trainer per run), then write its first status.
    A workspace that cannot be written is one line, not a traceback."""
    try:
        lock = runs.RunLock.claim(run_dir)
    except runs.RunBusy as exc:
        raise TrainError(str(exc)) from None
    except OSError as exc:
        if exc.errno == errno.ENOLCK:  # NFS without a lock daemon, some FUSE and SMB mounts
            raise TrainError(f"the file system of {run_dir.parent} does not support file locks "
                             f"({exc.strerror or exc}), which keep two trainers off one run; put the "
                             "workspace on a local disk (--workspace DIR or DDPM_TUI_HOME)") from None
        raise TrainError(f"cannot write the run folder {run_dir}: {exc.strerror or exc}") from None
    try:
        runs.setup_run_logger(run_dir, name=LOGGER_NAME)
        remove_stale_temp_files(run_dir, log)
        reporter.status(state=RUNNING, message="loading dataset", step=ckpt["step"] if ckpt else 0,
                        epoch=ckpt["epoch"] if ckpt else 0, started_at=time.time(),
                        world_size=world.world_size, device=str(world.device), force=True)
    except OSError as exc:
        runs.close_run_logger(log)
        lock.give_up()
        raise TrainError(f"cannot write the run folder {run_dir}: {exc.strerror or exc}") from None
    return lock


def rank_checkpoint(run_dir: Path, world: Dist) -> dict | None:
    """A rank other than 0 loads last.pt itself; it must see the one rank 0 resumes from."""
    path = runs.checkpoints_dir(run_dir) / runs.LAST_CHECKPOINT
    rank0_has = world.broadcast(None)  # rank 0 sends whether it resumes (see Trainer._session)
    if rank0_has and not path.exists():
        raise TrainError(f"rank {world.rank} cannot see {path}, which rank 0 resumes from; "
                         "every rank needs the run folder on a shared disk")
    return load_checkpoint(path) if rank0_has else None


def remove_stale_temp_files(run_dir: Path, log: logging.Logger) -> None:
    """A trainer killed mid-write leaves its temp file (".last.pt.XXXX.tmp", up to a few GB)
    beside the intact checkpoint. Only hidden *.tmp files in checkpoints/ and its ema/ (the
    power EMA's snapshots) are removed: no other trainer can be writing there (this one holds
    the run's lock)."""
    from core.diffusion.ema_snapshots import SNAPSHOT_DIR

    folder = runs.checkpoints_dir(run_dir)
    for tmp in [*folder.glob(".*.tmp"), *(folder / SNAPSHOT_DIR).glob(".*.tmp")]:
        try:
            tmp.unlink()
            log.info("removed %s, left by an interrupted write", tmp)
        except OSError as exc:
            log.warning("could not remove %s: %s", tmp, exc)


def crash_message(exc: BaseException, config: TrainConfig, device: torch.device, run_dir: Path,
                  step: int) -> str | None:
    """One line for a crash the user can act on (out of memory, a full disk, an op without a
    deterministic kernel); None for any other crash."""
    if is_oom(exc):
        return (f"out of memory on {device} at batch size {config.batch_size}: "
                f"try a smaller --batch_size (e.g. {max(1, config.batch_size // 2)})"
                + (f", or keep it with --grad-accum {config.grad_accum * 2}"
                   if config.batch_size >= config.grad_accum * 2 else ""))
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"No space left on device in {run_dir} at step {step}"
    if config.deterministic and "does not have a deterministic implementation" in str(exc):
        op = first_line(exc).split(" does not have", 1)[0]
        return (f"--deterministic: this network uses {op}, which has no deterministic kernel on "
                f"{device.type} in torch {torch.__version__}; train without --deterministic")
    return None


# ---------------------------------------------------------------------------- the dataset


def model_fields_message(exc: CheckpointError, run_dir: Path) -> str:
    return (f"run {run_dir.name!r} cannot continue with these options: {exc}. "
            "Use the run's own settings or start a new --run")


def load_dataset(config: TrainConfig, log: logging.Logger, progress: ProgressFn | None,
                  classes: list[str] | None = None):
    from core.data.dataset import DataOptions, DatasetError, ImageFolderDataset

    def on_progress(done: int, total: int, message: str = "") -> None:
        if progress is not None:
            progress({"event": LOADING, "done": done, "total": total, "message": message})

    options = DataOptions(image_size=config.image_size, resize=config.resize, flip=config.flip)
    try:
        return ImageFolderDataset(
            Path(config.data), options,
            cache_dir=Path(config.cache_dir) if config.cache_dir else None,
            workers=config.workers or None, progress=on_progress, logger=log, classes=classes,
            holdout=config.eval_holdout,
        )
    except DatasetError as exc:
        raise TrainError(str(exc)) from None


def scan_dataset(config: TrainConfig) -> list[str]:
    """Cheap pre-flight check (file listing only): the classes, or TrainError."""
    from core.data.dataset import DatasetError, scan_image_folder

    root = Path(config.data)
    if not root.is_dir():
        raise TrainError(f"dataset folder {root} does not exist")
    try:
        scan = scan_image_folder(root)
    except DatasetError as exc:
        raise TrainError(str(exc)) from None
    if not scan.samples:
        raise TrainError(f"dataset folder {root} has no images (expected {root}/<breed>/*.jpg)")
    return list(scan.classes)


def check_resume(ckpt: dict, config: TrainConfig, classes: list[str], run_dir: Path) -> None:
    """Refuse a checkpoint whose network or diffusion differs from what config asks for."""
    try:
        check_compatible(ckpt, config.model_config(len(classes)), config.diffusion_config())
    except CheckpointError as exc:
        raise TrainError(model_fields_message(exc, run_dir)) from None


def pinned_classes(ckpt: dict | None, config: TrainConfig) -> list[str] | None:
    """A resumed conditional run keeps its breed list (and so every breed's label)."""
    if ckpt is None or not config.conditional:
        return None
    saved = (ckpt.get("extra") or {}).get("classes")
    return list(saved) if saved else None


# ---------------------------------------------------------------------------- signals


@contextlib.contextmanager
def signals_to(event: threading.Event, log: logging.Logger) -> Iterator[None]:
    """SIGTERM/SIGINT set ``event`` (stop after this step); a second SIGINT aborts."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        event.set()
        log.warning("%s received: finishing this step, saving, then stopping "
                    "(Ctrl-C again aborts without saving)", name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
