"""The training loop: one code path for the CPU, one GPU and many GPUs (DDP under torchrun).

``train(config, run_dir)`` writes the run directory whose layout core/training/runs.py defines
(config.json, status.json, metrics.jsonl, checkpoints/, samples/, train.log) and returns
the final status. The options are declared in core/training/options.py.

Resume is automatic and exact. Every random number the loop draws comes from a
``torch.Generator`` seeded from (seed, epoch) for the data order and from (seed, step, rank)
for flips, label dropout, timesteps and noise; the checkpoint stores weights, EMA,
optimizer, step, epoch, the position inside the epoch and the global RNG states. So N steps,
a stop, and N more steps give the same weights as 2N steps in one go.

Stopping: SIGTERM/SIGINT (or ``stop_event``) finish the current step, save and mark the run
``stopped``. A second Ctrl-C aborts at once (the last checkpoint is kept). A NaN/inf loss
skips the step; ``max_nonfinite`` in a row saves the last good state and fails the run.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import inspect
import logging
import math
import os
import signal
import shutil
import socket
import threading
import time
from dataclasses import dataclass, fields
from functools import partial
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from core.training import options, runs
from core.diffusion.checkpoint import (
    CheckpointError,
    capture_rng_state,
    check_compatible,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from core.diffusion.device import autocast_context, autocast_dtype, kernel_choices, resolve_device, set_cublas_deterministic
from core.diffusion.process import Diffusion, DiffusionConfig
from core.data.dataset import batches_on
from core.diffusion.ema import EMA
from core.io.grid import save_grid, save_uint8_grid
from core.diffusion.sampling import SampleRequest, generate_images
from core.diffusion.schedules import SCHEDULES
from core.diffusion.unet import PRESETS, UNet, UNetConfig, count_parameters, get_preset

LOGGER_NAME = "core.training.train"
RESIZE_MODES = options.RESIZE_MODES
CONFIG_META_KEYS = options.CONFIG_META_KEYS

ProgressFn = Callable[[dict[str, Any]], None]


class TrainError(Exception):
    """A problem the user can fix (bad option, missing dataset, run mismatch); one line."""


# ---------------------------------------------------------------------------- the config


class TrainConfig(options.TrainOptions):
    """Every trainer option (declared in core/training/options.py), plus what needs torch to check."""

    def validate(self) -> None:
        """Raise ValueError naming the first bad option."""
        self.check_options()
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; known presets: {', '.join(PRESETS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; known schedules: {', '.join(SCHEDULES)}")
        if not self.data:
            raise ValueError("no dataset folder given (data)")
        from core.data.dataset import DataOptions

        DataOptions(image_size=self.image_size, resize=self.resize, flip=self.flip)  # its size limits
        self.model_config(0)  # image size vs. the preset's levels, etc.
        self.diffusion_config()

    def model_config(self, num_classes: int) -> UNetConfig:
        return get_preset(self.preset, image_size=self.image_size,
                          num_classes=num_classes if self.conditional else 0)

    def diffusion_config(self) -> DiffusionConfig:
        """The diffusion fields this DiffusionConfig has. Options it does not know yet must
        keep their seed values (they would silently change nothing otherwise)."""
        known = {f.name for f in fields(DiffusionConfig)}
        values = {name: getattr(self, name) for name in DIFFUSION_OPTIONS}
        unknown = {k: v for k, v in values.items() if k not in known and v != options.BY_NAME[k].default}
        if unknown:
            name, value = next(iter(unknown.items()))
            raise ValueError(f"{name} {value!r} is not supported by this diffusion model yet")
        return DiffusionConfig(**{k: v for k, v in values.items() if k in known})


# The options DiffusionConfig carries (the rest of config.json is the trainer's).
DIFFUSION_OPTIONS = ("T", "schedule", "prediction", "loss_weighting", "min_snr_gamma", "zero_terminal_snr")


# ---------------------------------------------------------------------------- helpers


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any tuple of ints/strings: independent streams per (purpose, step, rank)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def epoch_order(num_items: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """This rank's share of epoch ``epoch``'s shuffled indices (DistributedSampler-style:
    the permutation is padded by wrapping around so every rank gets the same count)."""
    gen = torch.Generator().manual_seed(derive_seed("epoch", seed, epoch))
    perm = torch.randperm(num_items, generator=gen)
    per_rank = math.ceil(num_items / world_size)
    total = per_rank * world_size
    if total > num_items:
        perm = torch.cat([perm, perm.repeat(math.ceil(total / num_items))[: total - num_items]])
    return perm[rank:total:world_size]


def weights_digest(model: nn.Module | dict[str, torch.Tensor]) -> str:
    """sha256 of a module's (or a state dict's) tensors: equal digests mean bit-identical weights."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    h = hashlib.sha256()
    for name, p in sorted(state.items()):
        h.update(name.encode())
        h.update(p.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _memory_mb(device: torch.device) -> float | None:
    """Peak allocated GPU memory since the last call (CUDA), allocated (MPS) or RSS (CPU)."""
    try:
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            return peak / 2**20
        if device.type == "mps":
            return torch.mps.current_allocated_memory() / 2**20
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except Exception:  # memory figures are nice to have, never a reason to stop training
        return None


@contextlib.contextmanager
def _signals_to(event: threading.Event, log: logging.Logger) -> Iterator[None]:
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


# How long a rank waits for the others in one collective. Rank 0 alone decodes the dataset
# (minutes for a big one) while the others wait at a barrier, so this is not short; a rank
# that fails tells the others by exiting (see _Dist.close), which ends their wait at once.
DIST_TIMEOUT = timedelta(minutes=30)


def pick_rank_device(device: torch.device, local_rank: int) -> torch.device:
    """This process's GPU under torchrun: cuda:LOCAL_RANK when this process sees that many
    GPUs, else the one it was given (e.g. each process sees one GPU through
    CUDA_VISIBLE_DEVICES, so LOCAL_RANK 3 must still use cuda:0)."""
    if device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if count > local_rank:
        return torch.device("cuda", local_rank)
    return torch.device("cuda", device.index if device.index is not None and device.index < count else 0)


class _Dist:
    """World size, rank and the few collectives the loop needs (no-ops in one process)."""

    def __init__(self, device_spec: str) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
        self.rank = int(os.environ.get("RANK", "0") or 0)
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
        self.owns_group = False
        if self.world_size <= 1:
            self.world_size, self.rank = 1, 0
            self.device = resolve_device(device_spec)
            return
        self.device = pick_rank_device(resolve_device(device_spec), self.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            kwargs: dict[str, Any] = {"timeout": DIST_TIMEOUT}
            if self.device.type == "cuda" and "device_id" in inspect.signature(dist.init_process_group).parameters:
                kwargs["device_id"] = self.device  # binds NCCL to this GPU at once
            dist.init_process_group(backend=backend, init_method="env://", **kwargs)
            self.owns_group = True

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def sum_tensor(self, t: torch.Tensor) -> torch.Tensor:
        """All-reduce (sum) a tensor on this rank's device without waiting on the host."""
        if self.enabled:
            if dist.get_backend() == "nccl":
                dist.all_reduce(t, op=dist.ReduceOp.SUM)
            else:  # gloo reduces CPU tensors
                cpu = t.cpu()
                dist.all_reduce(cpu, op=dist.ReduceOp.SUM)
                t = cpu.to(t.device)
        return t

    def close(self, failed: bool = False) -> None:
        if not (self.owns_group and dist.is_initialized()):
            return
        if failed:
            # A rank that fails does not wait for the others (they are in some other
            # collective): it leaves, and its closed connections end their wait at once
            # instead of after the collective's timeout.
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
            return
        # Tear down together: a rank that destroys its gloo pairs while a peer is still
        # finishing (rank 0 writes the status) can make the peer abort in C++.
        try:
            dist.barrier()
        except RuntimeError as exc:  # a peer already gone; nothing left to wait for
            logging.getLogger(LOGGER_NAME).warning("ranks did not meet before shutdown: %s", exc)
        dist.destroy_process_group()


# ---------------------------------------------------------------------------- examples


def write_examples(dataset: Any, diffusion: Diffusion, out_dir: Path, *, seed: int = 0, count: int = 16) -> list[Path]:
    """examples.png (a grid of training images as the model sees them) and
    forward_diffusion.png (one image noised at several t, left to right)."""
    gen = torch.Generator().manual_seed(derive_seed("examples", seed))
    n = min(count, len(dataset))
    idx = torch.randperm(len(dataset), generator=gen)[:n]
    x, _ = dataset.get_batch(idx, gen)
    paths = [save_grid(x, out_dir / "examples.png")]
    T = diffusion.T
    ts = sorted({min(T - 1, round(f * (T - 1))) for f in (0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)})
    x0 = x[:1].expand(len(ts), -1, -1, -1)
    noise = torch.randn(x0.shape, generator=gen)
    strip = diffusion.q_sample(x0, torch.tensor(ts, dtype=torch.long), noise)
    paths.append(save_grid(strip, out_dir / "forward_diffusion.png", nrow=len(ts)))
    return paths


# ---------------------------------------------------------------------------- the loop


@dataclass
class _State:
    step: int = 0
    epoch: int = 0  # completed epochs
    pos: int = 0  # samples of this rank's shard already consumed in the current epoch
    images_seen: int = 0
    nonfinite_total: int = 0
    train_seconds: float = 0.0  # wall time spent in the loop over all sessions


def _save_error_text(exc: BaseException, path: Path) -> str:
    """torch reports a full disk as "[enforce fail at inline_container.cc] unexpected pos";
    say what happened instead."""
    text = str(exc)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC or "enforce fail" in text or "unexpected pos" in text:
        try:
            free = shutil.disk_usage(path.parent).free
        except OSError:
            free = None
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC or (free is not None and free < 64 * 2**20):
            return f"No space left on device writing {path} ({free // 2**20 if free is not None else '?'} MB free)"
    return text


def _model_fields_message(exc: CheckpointError, run_dir: Path) -> str:
    return (f"run {run_dir.name!r} cannot continue with these options: {exc}. "
            "Use the run's own settings or start a new --run")


def _load_dataset(config: TrainConfig, log: logging.Logger, progress: ProgressFn | None,
                  classes: list[str] | None = None):
    from core.data.dataset import DataOptions, DatasetError, ImageFolderDataset

    def on_progress(done: int, total: int, message: str = "") -> None:
        if progress is not None:
            progress({"event": "loading", "done": done, "total": total, "message": message})

    options = DataOptions(image_size=config.image_size, resize=config.resize, flip=config.flip)
    try:
        return ImageFolderDataset(
            Path(config.data), options,
            cache_dir=Path(config.cache_dir) if config.cache_dir else None,
            workers=config.workers or None, progress=on_progress, logger=log, classes=classes,
        )
    except DatasetError as exc:
        raise TrainError(str(exc)) from None


def _scan_dataset(config: TrainConfig) -> list[str]:
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


def _check_resume(ckpt: dict, config: TrainConfig, classes: list[str], run_dir: Path) -> None:
    """Refuse a checkpoint whose network or diffusion differs from what config asks for."""
    try:
        check_compatible(ckpt, config.model_config(len(classes)), config.diffusion_config())
    except CheckpointError as exc:
        raise TrainError(_model_fields_message(exc, run_dir)) from None


def _pinned_classes(ckpt: dict | None, config: TrainConfig) -> list[str] | None:
    """A resumed conditional run keeps its breed list (and so every breed's label)."""
    if ckpt is None or not config.conditional:
        return None
    saved = (ckpt.get("extra") or {}).get("classes")
    return list(saved) if saved else None


def train(
    config: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    progress: ProgressFn | None = None,
    stop_event: threading.Event | None = None,
    examples: bool = False,
) -> dict[str, Any]:
    """Train (or continue training) the run in ``run_dir``; return the final status dict.

    Raises TrainError before anything is written when the options, the dataset or an
    existing run's checkpoint make training impossible. Failures during training (NaN loss,
    out of memory) are recorded in status.json and returned with state "failed".
    """
    run_dir = Path(run_dir)
    try:
        config.validate()
    except ValueError as exc:
        raise TrainError(str(exc)) from None
    stop_event = stop_event if stop_event is not None else threading.Event()
    log = logging.getLogger(LOGGER_NAME)
    # cuBLAS reads its workspace setting when CUDA makes its first handle: before _Dist
    # (which may start CUDA and NCCL) and before any model exists.
    cublas_in_time = set_cublas_deterministic() if config.deterministic else True
    try:
        world = _Dist(config.device)
    except ValueError as exc:
        raise TrainError(str(exc)) from None
    failed = True
    try:
        try:
            autocast_dtype(world.device, config.amp, training=True)
        except ValueError as exc:
            raise TrainError(str(exc)) from None
        with _signals_to(stop_event, log), kernel_choices(config.deterministic) as kernels:
            trainer = _Trainer(config, run_dir, world, log, progress, stop_event)
            trainer.kernel_notes = [kernels] if world.device.type != "cpu" or config.deterministic else []
            if not cublas_in_time:
                trainer.kernel_notes.append(
                    "CUDA was already in use in this process when --deterministic set CUBLAS_WORKSPACE_CONFIG; "
                    f"export CUBLAS_WORKSPACE_CONFIG={os.environ['CUBLAS_WORKSPACE_CONFIG']} before starting "
                    "Python for bit-exact matmuls")
            final = trainer.run(examples=examples)
        failed = final.get("state") == "failed"
        return final
    except RuntimeError as exc:
        if world.enabled and _is_peer_gone(exc):
            raise TrainError(f"rank {world.rank}: another rank failed or left ({_first_line(exc)}); "
                             "see rank 0's message") from None
        raise
    finally:
        world.close(failed=failed)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


def _is_peer_gone(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(k in text for k in ("connection closed", "connection reset", "broken pipe", "peer", "gloo",
                                   "nccl", "timed out", "abort"))


@dataclass
class _Parts:
    """The objects one training session works with, built once and passed together."""

    dataset: Any
    classes: list[str]
    model: nn.Module  # the plain UNet: saved, sampled, averaged
    train_model: nn.Module  # what a step calls: ``model`` under DDP and/or torch.compile
    ema: EMA
    optimizer: torch.optim.Optimizer
    diffusion: Diffusion
    amp_dtype: torch.dtype | None
    batches: Any = None  # what get_batch is called on: core.data.dataset.DeviceBatches, or the dataset itself
    data_line: str = ""  # which of the two, for train.log


STATUS_EVERY_S = 2.0  # the least time between two routine status.json writes


class _StatusWriter:
    """The loop's routine status.json writes and metrics lines, done by a thread. A status
    write is a read, a temp file, two fsyncs and a rename: on a busy or network disk that
    holds the host long enough to leave the GPU idle right after a metrics line's sync.
    Status fields posted while a write is under way merge (latest value wins). ``write``
    (forced writes: the start, saves, the end) runs in the caller's thread after the write
    in progress, taking what is still pending with it, so nothing written later is ever
    overwritten by something older."""

    def __init__(self, run_dir: Path, metrics: runs.MetricsWriter | None, log: logging.Logger) -> None:
        self.run_dir, self.metrics, self.log = run_dir, metrics, log
        self.cond = threading.Condition()  # guards pending/lines/closed; never held during I/O
        self.io = threading.Lock()  # one writer of the files at a time
        self.pending: dict[str, Any] | None = None
        self.lines: list[dict[str, Any]] = []
        self.closed = False
        self.errors: set[str] = set()
        self.thread = threading.Thread(target=self._run, name="ddpm-status-writer", daemon=True)
        self.thread.start()

    def post(self, fields: dict[str, Any]) -> None:
        with self.cond:
            self.pending = {**(self.pending or {}), **fields}
            self.cond.notify()

    def metrics_line(self, record: dict[str, Any]) -> None:
        with self.cond:
            self.lines.append(record)
            self.cond.notify()

    def write(self, fields: dict[str, Any]) -> dict[str, Any]:
        """status.json now, with whatever is pending; OSError as runs.write_status raises it."""
        with self.io:
            lines, pending = self._take()
            self._write_lines(lines)
            return runs.write_status(self.run_dir, **{**(pending or {}), **fields})

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        with self.cond:
            self.closed = True
            self.cond.notify()
        self.thread.join()
        with self.io:
            lines, pending = self._take()
            self._write_lines(lines)
            if pending:
                self._write_status(pending)

    def _take(self) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        with self.cond:
            lines, pending = self.lines, self.pending
            self.lines, self.pending = [], None
        return lines, pending

    def _run(self) -> None:
        while True:
            with self.cond:
                while not (self.closed or self.lines or self.pending):
                    self.cond.wait()
                if self.closed:
                    return
            with self.io:  # taken under the I/O lock: a forced write cannot slip in between
                lines, pending = self._take()
                self._write_lines(lines)
                if pending:
                    self._write_status(pending)

    def _write_lines(self, lines: list[dict[str, Any]]) -> None:
        for record in lines:
            if self.metrics is not None:
                try:
                    self.metrics.append(record)
                except (OSError, ValueError) as exc:
                    self._error(f"could not append to metrics.jsonl: {exc}")

    def _write_status(self, fields: dict[str, Any]) -> None:
        try:
            runs.write_status(self.run_dir, **fields)
        except OSError as exc:  # a full disk: the final status (written directly) says what is on disk
            self._error(f"could not write status.json: {exc.strerror or exc}")

    def _error(self, text: str) -> None:
        if text not in self.errors:  # once each, not once per metrics line
            self.errors.add(text)
            self.log.warning("%s", text)


class _Window:
    """What the steps since the last metrics line add up to, kept on the device so the
    step never waits for it (float64 where the device has it: sums stay exact)."""

    def __init__(self, start: float, device: torch.device) -> None:
        self.device = device
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.reset(start)

    def reset(self, start: float) -> None:
        self.start = start
        zero = partial(torch.zeros, (), dtype=self.dtype, device=self.device)
        self.loss, self.ok, self.trailing_bad = zero(), zero(), zero()
        self.steps_total = 0  # steps taken (trained or skipped)
        self.images = 0
        # A step that compiled the network: counted, but its time and images are left out
        # of images/s (and so of the ETA).
        self.untimed_s = 0.0
        self.untimed_images = 0
        self.untimed_steps = 0

    def rates(self, now: float) -> tuple[float, float]:
        """(steps/s, images/s) over the window, compile steps left out when others remain."""
        elapsed, steps, images = now - self.start, self.steps_total, self.images
        if self.untimed_steps and self.untimed_steps < steps:
            elapsed, steps, images = elapsed - self.untimed_s, steps - self.untimed_steps, images - self.untimed_images
        if elapsed <= 0:
            return 0.0, 0.0
        return steps / elapsed, images / elapsed

    def add(self, loss: torch.Tensor, ok: torch.Tensor) -> None:
        ok = ok.to(self.dtype)
        # where(), not loss * ok: NaN * 0 is NaN
        self.loss += torch.where(ok > 0, loss.to(self.dtype), torch.zeros_like(self.loss))
        self.ok += ok
        self.trailing_bad.mul_(1 - ok).add_(1 - ok)  # +1 on a bad step, 0 after a good one
        self.steps_total += 1


# ---------------------------------------------------------------------------- torch.compile


def compile_network(model: nn.Module) -> nn.Module:
    """What --compile does to the network a step calls (``model`` is the UNet, or the UNet
    under DDP). The one place to switch to a regional compile of the UNet's blocks."""
    return torch.compile(model)


COMPILE_CACHE_DIR = "torch-compile"  # under the workspace's cache/


def use_compile_cache(cache_dir: str | os.PathLike | None) -> str:
    """Keep TorchInductor's on-disk caches (compiled FX graphs, AOTAutograd's joint graphs,
    Triton kernels) in ``cache_dir``/torch-compile, so a later run of the same network,
    shapes, torch and GPU skips most of the compile. A TORCHINDUCTOR_CACHE_DIR the user
    set is kept, and so is torch's default (/tmp/torchinductor_USER) without a workspace.
    Must run before the first compile in this process. Returns the folder in use."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ and cache_dir:
        folder = Path(cache_dir) / COMPILE_CACHE_DIR
        folder.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    # On by default in current torch; older releases had the AOTAutograd cache off.
    # TORCHINDUCTOR_FX_GRAPH_CACHE / TORCHINDUCTOR_AUTOGRAD_CACHE set by the user still win.
    if "TORCHINDUCTOR_FX_GRAPH_CACHE" not in os.environ:
        with contextlib.suppress(ImportError, AttributeError):
            import torch._inductor.config as inductor_config

            inductor_config.fx_graph_cache = True
    if "TORCHINDUCTOR_AUTOGRAD_CACHE" not in os.environ:
        with contextlib.suppress(ImportError, AttributeError):
            import torch._functorch.config as functorch_config

            functorch_config.enable_autograd_cache = True
    return os.environ.get("TORCHINDUCTOR_CACHE_DIR", "torch's default (/tmp/torchinductor_$USER)")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def make_optimizer(config: TrainConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """Adam (the seed) or AdamW. The fused kernel updates all parameters in one pass: ~5x
    faster than the per-tensor loop for the seed net on a CPU (82 ms vs ~400 ms a step,
    measured), same maths."""
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
               fused=device.type in ("cpu", "cuda", "mps"))


def lr_at(config: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate for step ``step`` (0-based): linear warm-up, then constant or cosine."""
    lr = config.lr
    if config.lr_warmup > 0 and step < config.lr_warmup:
        lr *= (step + 1) / config.lr_warmup
    if config.lr_schedule == "cosine" and total_steps > 0:
        lr *= 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    return lr


def _params_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


class _Trainer:
    def __init__(self, config: TrainConfig, run_dir: Path, world: _Dist, log: logging.Logger,
                 progress: ProgressFn | None, stop_event: threading.Event) -> None:
        self.config = config
        self.run_dir = run_dir
        self.world = world
        self.log = log
        self.progress = progress
        self.stop_event = stop_event
        self.device = world.device
        self.state = _State()
        self.metrics: runs.MetricsWriter | None = None
        self.last_status_write = 0.0
        self.last_saved_step = -1
        self.classes: list[str] = []
        self._resume_from: dict | None = None
        self.save_error = ""
        self.lock: runs.RunLock | None = None
        self.session_start = time.monotonic()
        self.total_steps = 0
        self.rate: float | None = None  # steps/s, smoothed, for the ETA
        self.window: _Window | None = None
        self.epoch_len = 1
        self.bad_in_row = 0
        self.evaluator = None  # core.quality.evaluate.Evaluator, built at the first --eval-every
        self.kernel_notes: list[str] = []  # train()'s kernel settings, for train.log
        self.writer: _StatusWriter | None = None  # rank 0, while the loop runs
        self.compile_note = ""  # where the compile cache lives, for train.log
        self.compiled_sizes: set[int] = set()  # batch sizes the compiled network has seen
        self.compile_seconds = 0.0

    # -- pre-flight, done by rank 0 and shared, so every rank fails or starts together ---

    def _preflight(self) -> dict | None:
        """Check that this run can start; return its checkpoint when it resumes."""
        config, run_dir = self.config, self.run_dir
        classes = _scan_dataset(config)
        ckpt_path = runs.checkpoints_dir(run_dir) / runs.LAST_CHECKPOINT
        ckpt = None
        if ckpt_path.exists():
            try:
                ckpt = load_checkpoint(ckpt_path)
            except CheckpointError as exc:
                raise TrainError(f"{exc} (the file is left as it is; move it away to start over)") from None
            classes = _pinned_classes(ckpt, config) or classes
            _check_resume(ckpt, config, classes, run_dir)
            saved = runs.read_config(run_dir) or {}
            refused = config.refused_changes(saved)
            if refused:
                raise TrainError(f"run {run_dir.name!r} cannot continue with these options: {'; '.join(refused)}. "
                                 "Use the run's own settings or start a new --run")
        status = runs.read_status(run_dir)
        if status and status.get("state") == "running" and status.get("pid") != os.getpid():
            seen = runs.pid_status(status.get("pid"), status.get("host"), status.get("pid_started"))
            if seen != "dead":
                raise TrainError(f"run {run_dir.name!r} is already training (pid {status.get('pid')} on "
                                 f"{status.get('host')}); stop it first")
        return ckpt

    def _claim(self, ckpt: dict | None) -> None:
        """Rank 0: lock the run (atomically: one trainer per run), then write its first status.
        A workspace that cannot be written is one line, not a traceback."""
        try:
            self.lock = runs.RunLock.claim(self.run_dir)
        except runs.RunBusy as exc:
            raise TrainError(str(exc)) from None
        except OSError as exc:
            raise TrainError(f"cannot write the run folder {self.run_dir}: {exc.strerror or exc}") from None
        try:
            runs.setup_run_logger(self.run_dir, name=LOGGER_NAME)
            self._remove_stale_temp_files()
            self.status(state="running", message="loading dataset", step=ckpt["step"] if ckpt else 0,
                        epoch=ckpt["epoch"] if ckpt else 0, started_at=time.time(),
                        world_size=self.world.world_size, device=str(self.device), force=True)
        except OSError as exc:
            self.lock.release()
            raise TrainError(f"cannot write the run folder {self.run_dir}: {exc.strerror or exc}") from None

    def run(self, *, examples: bool) -> dict[str, Any]:
        world = self.world
        error = None
        ckpt = None
        if world.is_main:
            try:
                ckpt = self._preflight()
                self._claim(ckpt)
            except TrainError as exc:
                error = str(exc)
        error = world.broadcast(error)
        if error:
            raise TrainError(error)
        if not world.is_main:
            ckpt = self._rank_checkpoint()
        # Held only until the weights are restored: a seed checkpoint is over a gigabyte.
        self._resume_from, ckpt = ckpt, None
        try:
            return self._run(examples)
        except KeyboardInterrupt:
            if world.is_main:
                self.status(state="stopped", force=True,
                            message=f"aborted at step {self.state.step} without saving; "
                                    f"the last checkpoint (step {max(self.last_saved_step, 0)}) is kept")
            raise
        except TrainError as exc:
            if world.is_main:
                self.log.error("%s", exc)
                self._final_status(state="failed", message=str(exc))
            raise
        except BaseException as exc:
            return self._crashed(exc)
        finally:
            if self.writer is not None:
                self.writer.close()
                self.writer = None
            if self.metrics is not None:
                self.metrics.close()
            if world.is_main:
                runs.close_run_logger(self.log)
            if self.lock is not None:
                self.lock.release()

    def _rank_checkpoint(self) -> dict | None:
        """A rank other than 0 loads last.pt itself; it must see the one rank 0 resumes from."""
        path = runs.checkpoints_dir(self.run_dir) / runs.LAST_CHECKPOINT
        rank0_has = self.world.broadcast(None)  # rank 0 sends whether it resumes (see _run)
        if rank0_has and not path.exists():
            raise TrainError(f"rank {self.world.rank} cannot see {path}, which rank 0 resumes from; "
                             "every rank needs the run folder on a shared disk")
        return load_checkpoint(path) if rank0_has else None

    def _crashed(self, exc: BaseException) -> dict[str, Any]:
        config, world = self.config, self.world
        if _is_oom(exc):
            msg = (f"out of memory on {self.device} at batch size {config.batch_size}: "
                   f"try a smaller --batch_size (e.g. {max(1, config.batch_size // 2)})")
        elif isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            msg = f"No space left on device in {self.run_dir} at step {self.state.step}"
        elif config.deterministic and "does not have a deterministic implementation" in str(exc):
            op = _first_line(exc).split(" does not have", 1)[0]
            msg = (f"--deterministic: this network uses {op}, which has no deterministic kernel on "
                   f"{self.device.type} in torch {torch.__version__}; train without --deterministic")
        elif world.enabled and isinstance(exc, RuntimeError) and _is_peer_gone(exc):
            msg = f"rank {world.rank}: another rank failed or left ({_first_line(exc)}); see its message"
            if world.is_main:
                self._final_status(state="failed", message=msg)
            raise TrainError(msg) from None
        else:
            if world.is_main:
                self.log.exception("training crashed")
                first = (str(exc).splitlines() or [""])[0]
                self._final_status(state="failed", message=f"crashed: {type(exc).__name__}: {first}")
            raise exc
        self.log.error("%s", msg)
        if world.is_main:
            return self._final_status(state="failed", message=msg)
        return {"state": "failed", "message": msg}

    def _final_status(self, **fields: Any) -> dict[str, Any]:
        """The last status write; on a full disk it is retried without the extras, and a
        status that cannot be written at all is said in the log (never left "running"
        silently: readers see the pid gone and call the run died)."""
        try:
            return self.status(force=True, **fields)
        except OSError as exc:
            self.log.warning("could not write status.json: %s", exc.strerror or exc)
            return dict(fields)

    def _remove_stale_temp_files(self) -> None:
        """A trainer killed mid-write leaves its temp file (".last.pt.XXXX.tmp", up to a few GB)
        beside the intact checkpoint. Only hidden *.tmp files in checkpoints/ are removed:
        no other trainer can be writing there (this one holds the run's lock)."""
        for tmp in runs.checkpoints_dir(self.run_dir).glob(".*.tmp"):
            try:
                tmp.unlink()
                self.log.info("removed %s, left by an interrupted write", tmp)
            except OSError as exc:
                self.log.warning("could not remove %s: %s", tmp, exc)

    # -- status / metrics -------------------------------------------------------------

    def status(self, *, force: bool = False, **fields: Any) -> dict[str, Any]:
        """Write status.json (rank 0), at most every 2 s unless forced. While the loop runs,
        the routine (unforced) writes go through the writer thread."""
        now = time.monotonic()
        if not self.world.is_main or (not force and now - self.last_status_write < STATUS_EVERY_S):
            return fields
        self.last_status_write = now
        if self.writer is None:
            return runs.write_status(self.run_dir, **fields)
        if not force:
            self.writer.post(fields)
            return fields
        return self.writer.write(fields)

    def emit(self, event: dict[str, Any]) -> None:
        if self.progress is not None and self.world.is_main:
            self.progress(event)

    # -- building ----------------------------------------------------------------------

    def _run(self, examples: bool) -> dict[str, Any]:
        ckpt, self._resume_from = self._resume_from, None
        if self.world.is_main:
            self.world.broadcast(ckpt is not None)  # see _rank_checkpoint
        dataset = self._dataset(ckpt)
        parts = self._build(dataset, ckpt)
        resumed = ckpt is not None
        del ckpt
        if self.world.is_main:
            self._start_records(parts, resumed, examples)
        return self._loop(parts)

    def _dataset(self, ckpt: dict | None):
        config, world = self.config, self.world
        pinned = _pinned_classes(ckpt, config)
        if world.is_main:
            dataset = _load_dataset(config, self.log, self.progress, pinned)
            world.barrier()  # others now find the decoded-image cache warm
        else:
            world.barrier()
            dataset = _load_dataset(config, self.log, None, pinned)
        self.classes = list(dataset.classes)
        if world.is_main and ckpt is not None:
            _check_resume(ckpt, config, self.classes, self.run_dir)  # the loaded set, not just the listing
        # The dataset logged each unreadable file (with its reason) into train.log.
        bad = [(str(p), r) for p, r in getattr(dataset, "bad_files", [])]
        if bad:
            self.emit({"event": "bad_files", "files": bad})
        self.status(bad_files=len(bad), force=True)
        if len(dataset) == 0:
            raise TrainError(f"dataset folder {config.data} has no readable images")
        return dataset

    def _build(self, dataset, ckpt: dict | None) -> _Parts:
        """Network, EMA, optimizer and diffusion, restored from ``ckpt`` when it resumes."""
        config, device = self.config, self.device
        diffusion = Diffusion(config.diffusion_config()).to(device)
        torch.manual_seed(derive_seed("init", config.seed))  # same initial weights on every rank
        model = UNet(config.model_config(len(self.classes))).to(device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
        # Made after the weights are restored: a checkpoint without an EMA (an imported seed
        # checkpoint) starts its average at those weights.
        ema = EMA(model, decay=config.ema_decay, warmup_steps=config.ema_warmup)
        optimizer = make_optimizer(config, model, device)
        if ckpt is not None:
            self._restore(ckpt, ema, optimizer)
        train_model: nn.Module = model
        if self.world.enabled:
            train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        if config.compile:
            self.compile_note = use_compile_cache(config.cache_dir)
            train_model = compile_network(train_model)  # compiles lazily, at the first step (see _loop)
        # After the network and optimizer: the images go to the device only if they fit beside them.
        batches, data_line = batches_on(dataset, device)
        return _Parts(dataset, self.classes, model, train_model, ema, optimizer, diffusion,
                      autocast_dtype(device, config.amp, training=True), batches, data_line)

    def _restore(self, ckpt: dict, ema: EMA, optimizer: torch.optim.Optimizer) -> None:
        if ckpt.get("ema"):  # a changed --ema-decay / --ema-warmup applies from now on
            ema.load_state_dict({**ckpt["ema"], "decay": self.config.ema_decay,
                                 "warmup_steps": self.config.ema_warmup})
        if ckpt.get("optimizer"):
            optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("rng"):
            restore_rng_state(ckpt["rng"])
        extra = ckpt.get("extra") or {}
        s = self.state
        s.step, s.epoch = int(ckpt["step"]), int(ckpt["epoch"])
        s.pos = int(extra.get("pos", 0))
        saved_world = int(extra.get("world_size", self.world.world_size))
        saved_batch = int(extra.get("batch_size", self.config.batch_size))
        if saved_world != self.world.world_size:
            s.pos = s.pos * saved_world // self.world.world_size
            self.log.warning("world size changed from %d to %d: the data order continues approximately",
                             saved_world, self.world.world_size)
        if saved_batch != self.config.batch_size:
            self.log.warning("batch size changed from %d to %d", saved_batch, self.config.batch_size)
        s.images_seen = int(extra.get("images_seen", 0))
        s.nonfinite_total = int(extra.get("nonfinite_total", 0))
        s.train_seconds = float(extra.get("train_seconds", 0.0))
        self.last_saved_step = s.step

    def _start_records(self, parts: _Parts, resumed: bool, examples: bool) -> None:
        """Rank 0: config.json, the metrics file, and the log's opening lines."""
        config, log, model = self.config, self.log, parts.model
        n, classes, amp = len(parts.dataset), parts.classes, parts.amp_dtype
        runs.write_config(self.run_dir, {
            **config.to_dict(), "model": model.config.to_dict(), "diffusion": parts.diffusion.config.to_dict(),
            "classes": classes, "num_images": n, "world_size": self.world.world_size,
        })
        self.metrics = runs.MetricsWriter(self.run_dir)
        log.info("%s run %s on %s%s: preset %s (%s parameters), %d images, %d classes, batch %d x %d, amp %s",
                 "resuming" if resumed else "starting", self.run_dir.name, self.device,
                 f" x{self.world.world_size}" if self.world.enabled else "", config.preset,
                 f"{count_parameters(model):,}", n, len(classes), config.batch_size, self.world.world_size,
                 str(amp).replace("torch.", "") if amp else "fp32")
        if resumed:
            log.info("continuing from step %d, epoch %d", self.state.step, self.state.epoch)
        log.info("%s", parts.data_line)
        for note in self.kernel_notes:
            log.info("kernels: %s", note)
        if config.compile:
            log.info("torch.compile: compile cache in %s", self.compile_note)
        if self.device.type == "cpu" and config.preset == "seed":
            log.warning("training the seed's %s-parameter network on a CPU is slow (hours per epoch of "
                        "14,000 images); --preset small or tiny are made for CPUs",
                        f"{count_parameters(model) / 1e6:.0f}M")
        signal_left = float(parts.diffusion.alpha_bars[-1].sqrt())
        if signal_left > 0.05:
            # Sampling starts from pure noise; here x_T still carries the image.
            log.warning("with T=%d and the %s schedule, x_T keeps %.0f%% of the image, so samples "
                        "(which start from pure noise) come out noisy; use T near 1000 or --schedule cosine",
                        config.T, config.schedule, 100 * signal_left)
        if examples:
            for path in write_examples(parts.dataset, parts.diffusion, self.run_dir, seed=config.seed):
                log.info("wrote %s", path)
                self.emit({"event": "wrote", "path": str(path)})

    # -- the loop ----------------------------------------------------------------------

    def _loop(self, parts: _Parts) -> dict[str, Any]:
        config, world, s = self.config, self.world, self.state
        steps_per_epoch = math.ceil(math.ceil(len(parts.dataset) / world.world_size) / config.batch_size)
        self.total_steps = config.epochs * steps_per_epoch
        if config.max_steps:
            self.total_steps = min(self.total_steps, config.max_steps)
        if s.epoch >= config.epochs or (config.max_steps and s.step >= config.max_steps):
            msg = (f"already finished ({s.epoch} epochs, step {s.step}); "
                   "pass a larger --epochs or --max-steps to train further")
            self.log.info("%s", msg)
            return self.status(state="finished", message=msg, step=s.step, epoch=s.epoch, force=True)

        gens = (torch.Generator(), torch.Generator(device=self.device) if self.device.type != "cpu"
                else torch.Generator())
        if self.world.is_main:
            self.writer = _StatusWriter(self.run_dir, self.metrics, self.log)
        self.session_start = time.monotonic()
        window = self.window = _Window(time.monotonic(), self.device)
        stop_reason: str | None = None
        self.status(state="running", message="training", step=s.step, epoch=s.epoch,
                    total_steps=self.total_steps, epochs=config.epochs, force=True)
        parts.model.train()
        while s.epoch < config.epochs and stop_reason is None:
            order = epoch_order(len(parts.dataset), config.seed, s.epoch, world.rank, world.world_size)
            self.epoch_len = len(order)
            while s.pos < len(order):
                if config.max_steps and s.step >= config.max_steps:
                    stop_reason = f"reached max_steps {config.max_steps}"
                    break
                batch = order[s.pos : s.pos + config.batch_size]
                if config.compile and len(batch) not in self.compiled_sizes:
                    self._compiling_step(parts, batch, gens, window)
                else:
                    self._step(parts, batch, gens, window)
                stop = False
                if s.step % config.log_every == 0 or s.pos >= len(order):
                    stop = self._log_window(parts, window, len(order))
                    if self.bad_in_row >= config.max_nonfinite:
                        return self._fail_nonfinite(parts)
                elif not world.enabled:  # one process: a stop needs no agreement, check every step
                    stop = self._local_stop()
                if config.save_every_steps and s.step % config.save_every_steps == 0:
                    self._save(parts, samples=False, milestone=False)
                    window.start = time.monotonic()
                if config.eval_every and s.step % config.eval_every == 0:
                    if world.is_main:
                        self._evaluate(parts)
                    world.barrier()
                    window.start = time.monotonic()
                if stop:
                    stop_reason = self._stop_reason()
                    break
            if s.pos >= len(order):
                self._end_epoch(parts, window)
        return self._finish(parts, stop_reason)

    def _compiling_step(self, parts: _Parts, idx: torch.Tensor, gens: tuple[torch.Generator, torch.Generator],
                        window: _Window) -> None:
        """A step in which torch.compile builds the network for a new batch size (the first
        step, and the smaller last batch of an epoch): minutes on a GPU the first time,
        seconds from the compile cache. Said before, timed (one wait for the device) and
        said after, in train.log, status.json and the progress events; left out of images/s."""
        first = not self.compiled_sizes
        what = "first step" if first else f"batch of {len(idx)}"
        self.log.info("compiling the network (%s)...", what)
        self.status(message=f"compiling ({what})...", step=self.state.step, force=True)
        self.emit({"event": "compiling", "step": self.state.step, "what": what})
        start = time.monotonic()
        self._step(parts, idx, gens, window)
        _synchronize(self.device)
        seconds = time.monotonic() - start
        self.compiled_sizes.add(len(idx))
        window.untimed_s += seconds
        window.untimed_images += len(idx) * self.world.world_size
        window.untimed_steps += 1
        self.compile_seconds += seconds
        self.log.info("compiled in %.1f s (%s)", seconds, what)
        self.status(message=f"compiled in {seconds:.1f} s ({what}); training", compile_s=round(self.compile_seconds, 1),
                    force=True)
        self.emit({"event": "compiled", "step": self.state.step, "what": what, "seconds": seconds})

    def _local_stop(self) -> bool:
        config = self.config
        return self.stop_event.is_set() or (
            config.max_time > 0 and time.monotonic() - self.session_start >= config.max_time)

    def _step(self, parts: _Parts, idx: torch.Tensor, gens: tuple[torch.Generator, torch.Generator],
              window: _Window) -> None:
        """One optimisation step, without waiting on the device: a NaN/inf loss (on any rank)
        turns the optimizer and EMA update off on the device, and is counted there; the host
        looks at the counts once per metrics line (_log_window)."""
        config, world, s, device = self.config, self.world, self.state, self.device
        data_gen, noise_gen = gens
        data_gen.manual_seed(derive_seed("data", config.seed, s.step, world.rank))
        noise_gen.manual_seed(derive_seed("noise", config.seed, s.step, world.rank))
        # On the device when the images live there (core.data.dataset.batches_on); the flips and the
        # label dropout below are drawn from the CPU generator either way, in this order.
        x, labels = parts.batches.get_batch(idx, data_gen)
        if config.conditional and config.label_dropout > 0:
            drop = torch.rand(labels.shape[0], generator=data_gen) < config.label_dropout
            drop = drop.to(labels.device, non_blocking=True)
            labels = torch.where(drop, torch.full_like(labels, len(parts.classes)), labels)  # "no label"
        x = x.to(device, non_blocking=True)  # no-ops for batches built on the device
        if config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True) if config.conditional else None

        with autocast_context(device, parts.amp_dtype):
            loss = parts.diffusion.training_loss(parts.train_model, x, labels, generator=noise_gen)
        bad = world.sum_tensor((~torch.isfinite(loss.detach())).to(torch.float32))  # ranks with NaN/inf
        ok = (bad == 0).to(torch.float32)
        for group in parts.optimizer.param_groups:
            group["lr"] = lr_at(config, s.step, self.total_steps)
        parts.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(parts.model.parameters(), config.grad_clip)
        if getattr(parts.optimizer, "defaults", {}).get("fused"):
            # The fused kernel skips the update (and its step count) where found_inf is 1:
            # the same switch GradScaler uses, decided on the device.
            parts.optimizer.found_inf = 1.0 - ok
            parts.optimizer.step()
        elif bool(ok):  # no fused kernel on this device: ask the host
            parts.optimizer.step()
        parts.ema.update(parts.model, active=ok)
        window.add(loss.detach(), ok)
        s.pos += len(idx)
        s.step += 1
        s.images_seen += len(idx) * world.world_size
        window.images += len(idx) * world.world_size

    def _stop_reason(self) -> str:
        config = self.config
        timed_out = config.max_time > 0 and time.monotonic() - self.session_start >= config.max_time
        if self.stop_event.is_set() or not timed_out:
            return "stop requested"
        return f"time budget of {config.max_time:g} s reached"

    def _fail_nonfinite(self, parts: _Parts) -> dict[str, Any]:
        """Too many NaN/inf losses in a row: keep the weights only if they are still finite."""
        s = self.state
        msg = f"loss was NaN/inf for {self.bad_in_row} steps in a row at step {s.step}; "
        if _params_finite(parts.model):
            self._save(parts, samples=False, milestone=False)
            msg += "saved the last good weights. "
        else:
            kept = f"step {self.last_saved_step}" if self.last_saved_step >= 0 else "none"
            msg += f"the weights are NaN too and were not saved (last checkpoint on disk: {kept}). "
        msg += "Try a lower --lr or --grad-clip 1.0"
        self.log.error("%s", msg)
        return self.status(state="failed", message=msg, step=s.step, epoch=s.epoch, force=True)

    def _log_window(self, parts: _Parts, window: _Window, epoch_len: int) -> bool:
        """The one host sync per metrics line: the window's loss and NaN counts (summed over
        ranks, with the ranks' stop requests), a metrics line, a progress event and a status
        write. Returns whether some rank asked to stop."""
        config, s = self.config, self.state
        loss_sum, steps, bad, bad_run, stops = self._window_totals(window)
        if bad:
            first = s.step - (window.steps_total - 1)
            self.log.warning("steps %d-%d: %d NaN/inf loss%s, skipped (%d in a row)", first, s.step,
                             bad, "es" if bad != 1 else "", self.bad_in_row)
            s.nonfinite_total += bad
            parts.ema.uncount(bad)
        now = time.monotonic()
        steps_per_s, images_per_s = window.rates(now)
        if window.untimed_steps < window.steps_total:  # a window of compiling only says nothing of the speed
            self.rate = steps_per_s if self.rate is None else 0.7 * self.rate + 0.3 * steps_per_s
        eta = (self.total_steps - s.step) / self.rate if self.rate else None
        record = {
            "step": s.step, "epoch": s.epoch + s.pos / epoch_len,
            "lr": parts.optimizer.param_groups[0]["lr"],
            "images_per_s": round(images_per_s, 2),
            "elapsed_s": round(s.train_seconds + now - self.session_start, 2),
            "device_mem_mb": _memory_mb(self.device), "skipped": bad,
        }
        if steps:  # a window of skipped (NaN) steps has no loss to plot
            record["loss"] = loss_sum / self.world.world_size / steps
        if self.world.is_main and self.writer is not None:
            self.writer.metrics_line(record)
        elif self.world.is_main and self.metrics is not None:
            self.metrics.append(record)
        self.emit({"event": "step", **record, "total_steps": self.total_steps, "eta_s": eta,
                   "epochs": config.epochs})
        self.status(state="running", message="training", step=s.step, epoch=s.epoch,
                    last_loss=record.get("loss"), images_per_s=record["images_per_s"], eta_s=eta,
                    total_steps=self.total_steps)
        window.reset(now)
        return stops > 0

    def _window_totals(self, window: _Window) -> tuple[float, int, int, int, int]:
        """(loss sum over ranks, trained steps, skipped steps, NaN run, ranks asking to stop)."""
        stop = torch.tensor(1.0 if self._local_stop() else 0.0, dtype=window.dtype, device=self.device)
        packed = self.world.sum_tensor(torch.stack([window.loss, window.ok, stop]))
        loss_sum, ok_steps, stops = packed.tolist()
        steps = int(round(ok_steps / self.world.world_size))  # every rank agreed on each skip
        bad = window.steps_total - steps
        # The run of NaN steps ending now: the window's own trailing run, plus the previous
        # run when the whole window was bad.
        trailing = int(window.trailing_bad.item())
        self.bad_in_row = self.bad_in_row + trailing if trailing == window.steps_total else trailing
        return loss_sum, steps, bad, self.bad_in_row, int(stops)

    def _end_epoch(self, parts: _Parts, window: _Window) -> None:
        s, config = self.state, self.config
        s.epoch += 1
        s.pos = 0
        if s.epoch % config.save_frequency == 0 or s.epoch == config.epochs:
            self._save(parts, samples=True, milestone=True)
            window.start = time.monotonic()

    def _finish(self, parts: _Parts, stop_reason: str | None) -> dict[str, Any]:
        """Save what is not saved yet, check the ranks agree, write the final status."""
        s, world, log = self.state, self.world, self.log
        if self.window is not None and self.window.steps_total:
            # Steps since the last metrics line (a stop between lines, one process only:
            # with several ranks a stop is agreed at a metrics line).
            self._log_window(parts, self.window, self.epoch_len)
        s.train_seconds += time.monotonic() - self.session_start
        self.session_start = time.monotonic()
        final_state = "finished"
        if stop_reason is None:
            message = f"finished {s.epoch} epoch{'s' if s.epoch != 1 else ''} at step {s.step}"
        elif stop_reason.startswith("reached max_steps"):
            message = f"{stop_reason} (epoch {s.epoch})"
        else:
            final_state = "stopped"
            message = f"{stop_reason} at step {s.step}; start the same run again to continue"
        if self.last_saved_step != s.step:
            # A stop by signal saves only the checkpoint (be quick); budgets and the end sample too.
            self._save(parts, samples=stop_reason != "stop requested", milestone=False)
        if self.last_saved_step != s.step:  # the save failed (disk full...): say what is on disk
            final_state = "failed"
            kept = f"step {self.last_saved_step}" if self.last_saved_step >= 0 else "none"
            message = f"could not save the checkpoint at step {s.step} ({self.save_error}); last checkpoint on disk: {kept}"
        digests: list[str] = []
        if world.enabled:
            digests = world.gather(weights_digest(parts.model))
            if len(set(digests)) != 1:
                log.error("ranks disagree on the weights: %s", digests)
            else:
                log.info("all %d ranks hold identical weights (sha256 %s)", world.world_size, digests[0])
        log.info("%s", message)
        final = self._final_status(state=final_state, message=message, step=s.step, epoch=s.epoch,
                                   nonfinite_skipped=s.nonfinite_total, eta_s=None)
        if world.enabled:
            final = {**final, "weights_digests": digests}
        return final

    # -- saving ------------------------------------------------------------------------

    def _save(self, parts: _Parts, *, samples: bool, milestone: bool) -> None:
        """Checkpoint (rank 0, atomic) and sample grids; every rank waits for it."""
        s, config = self.state, self.config
        if self.world.is_main:
            self.emit({"event": "saving", "step": s.step})
            path = runs.checkpoints_dir(self.run_dir) / runs.LAST_CHECKPOINT
            try:
                # Already saved at this step (e.g. by save_every_steps): only add what is asked.
                if self.last_saved_step != s.step or not path.exists():
                    self._write_checkpoint(path, parts)
                if milestone and config.keep_milestones != 0:
                    self._milestone(path)
            except (CheckpointError, OSError) as exc:
                # The previous checkpoint is intact; keep training and say so.
                self.save_error = _save_error_text(exc, path)
                self.log.error("could not write checkpoint %s: %s", path, self.save_error)
                try:
                    self.status(message=f"checkpoint failed: {self.save_error}", force=True)
                except OSError:
                    pass  # the same full disk; the final status says it
            if samples and config.samples > 0:
                self.emit({"event": "sampling", "step": s.step})
                try:
                    for path in self._sample_grids(parts):
                        self.log.info("wrote %s", path)
                        self.emit({"event": "wrote", "path": str(path)})
                except OSError as exc:
                    self.log.error("could not write samples: %s", exc)
            try:
                self.status(step=s.step, epoch=s.epoch, last_checkpoint_step=self.last_saved_step, force=True)
            except OSError as exc:  # a full disk: the final status says what is on disk
                self.log.error("could not write status.json: %s", exc.strerror or exc)
        # Every rank takes rank 0's word for what is on disk, so later decisions stay in step.
        self.last_saved_step = self.world.broadcast(self.last_saved_step)
        parts.model.train()

    def _write_checkpoint(self, path: Path, parts: _Parts) -> None:
        s, config = self.state, self.config
        seconds = s.train_seconds + (time.monotonic() - self.session_start)
        save_checkpoint(
            path, model_config=parts.model.config, diffusion_config=parts.diffusion.config,
            model_state=parts.model.state_dict(), ema_state=parts.ema.state_dict(),
            optimizer_state=parts.optimizer.state_dict(), step=s.step, epoch=s.epoch,
            rng_state=capture_rng_state(),
            extra={"pos": s.pos, "images_seen": s.images_seen, "nonfinite_total": s.nonfinite_total,
                   "train_seconds": seconds, "world_size": self.world.world_size,
                   "batch_size": config.batch_size, "classes": list(self.classes),
                   "seed": config.seed, "host": socket.gethostname()},
        )
        self.last_saved_step = s.step
        self.log.info("saved checkpoint at step %d (epoch %d)", s.step, s.epoch)

    def _milestone(self, last: Path) -> None:
        """epoch_NNNN.pt beside last.pt: a hard link (no copy, and last.pt is later replaced
        by a new file, not rewritten) or a copy where links are not possible."""
        target = last.with_name(f"epoch_{self.state.epoch:04d}.pt")
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            if tmp.exists():
                tmp.unlink()  # our own leftover from a killed run
            try:
                os.link(last, tmp)
            except OSError:
                shutil.copy2(last, tmp)
            os.replace(tmp, target)
        except OSError as exc:
            self.log.error("could not keep milestone %s: %s", target.name, exc)
            return
        if self.config.keep_milestones > 0:
            kept = sorted(last.parent.glob("epoch_*.pt"))
            for old in kept[: -self.config.keep_milestones]:
                old.unlink()  # a milestone this trainer made, beyond the number asked to keep
                self.log.info("removed old milestone %s", old.name)

    def _sample_grids(self, parts: _Parts) -> list[Path]:
        """Grids from the raw and the EMA weights, same seed for both, drawn through the one
        sampling path (core.diffusion.sampling.generate)."""
        config, s, model = self.config, self.state, parts.model
        num_classes = model.config.num_classes
        tag = f"epoch_{s.epoch:04d}" if s.pos == 0 else f"step_{s.step:07d}"
        out = runs.samples_dir(self.run_dir)
        nrow = min(config.samples, num_classes) if num_classes and num_classes <= 10 else None
        written = []
        for prefix, weights in (("", "raw"), ("ema_", "ema")):
            request = SampleRequest(n=config.samples, steps=config.sample_steps, guidance=config.sample_guidance,
                                    seed=derive_seed("samples", config.seed), weights=weights, amp=config.amp)
            with parts.ema.applied(model) if weights == "ema" else contextlib.nullcontext():
                images, _ = generate_images((model, parts.diffusion), request, device=self.device)
            written.append(save_uint8_grid(images, out / f"{prefix}{tag}.png", nrow=nrow))
        return written

    def _evaluate(self, parts: _Parts) -> None:
        """FID, KID, precision/recall of the EMA weights into eval.jsonl (rank 0). The real
        side (feature net, real features) is built once; a failure is logged and training
        goes on."""
        from core.quality.evaluate import EvalError, EvalSettings, Evaluator

        config, s = self.config, self.state
        self.emit({"event": "evaluating", "step": s.step})
        try:
            if self.evaluator is None:
                self.evaluator = Evaluator(config.data, image_size=config.image_size, resize=config.resize,
                                           classes=parts.classes if config.conditional else None,
                                           cache_dir=config.cache_dir or None, device=self.device)
            settings = EvalSettings(n=config.eval_n, steps=config.sample_steps,
                                    guidance=config.sample_guidance if config.conditional else 1.0)
            with parts.ema.applied(parts.model):
                result = self.evaluator.evaluate(parts.model, parts.diffusion, settings, step=s.step,
                                                 run_dir=self.run_dir, amp=config.amp)
        except (EvalError, OSError, ValueError) as exc:
            self.log.error("evaluation at step %d failed: %s", s.step, exc)
            return
        finally:
            parts.model.train()
        values = ", ".join(f"{k} {v:.4g}" for k, v in result.values.items())
        self.log.info("evaluation at step %d (%d images, %.1f s): %s", s.step, config.eval_n, result.seconds, values)
        self.emit({"event": "eval", "step": s.step, **result.values})
