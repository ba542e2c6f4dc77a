"""Which device to run on, and which autocast dtype that device does well."""

from __future__ import annotations

import contextlib
import os
from functools import lru_cache
from pathlib import Path
from typing import ContextManager, Iterator

import torch

from core.diffusion.registry import AMP_MODES

DEVICE_SPECS = ("auto", "cpu", "cuda", "cuda:N", "mps")
AUTOCAST_MODES = AMP_MODES  # auto | bf16 | fp16 | off ("fp32" is read as "off")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU. Unavailable or malformed specs raise ValueError."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = str(spec).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not _mps_available():
            raise ValueError("device 'mps' is not available on this machine (no Apple GPU / MPS build)")
        return torch.device("mps")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} is not available: no CUDA GPU is visible to PyTorch")
        if text == "cuda":
            return torch.device("cuda")
        index_text = text.split(":", 1)[1]
        if not index_text.isdigit():
            raise ValueError(f"bad device {spec!r}: expected cuda:N with N a GPU index")
        index = int(index_text)
        count = torch.cuda.device_count()
        if index >= count:
            raise ValueError(f"device {spec!r} is not available: only {count} CUDA GPU(s) (cuda:0..cuda:{count - 1})")
        return torch.device("cuda", index)
    raise ValueError(f"unknown device {spec!r}; expected one of {', '.join(DEVICE_SPECS)}")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """True when the CPU does bf16 matmuls natively (AVX512-BF16 or AMX), i.e. faster than fp32."""
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cuda_has_fast_bf16(device: torch.device) -> bool:
    """bf16 in hardware: compute capability 8.0 or later (Ampere on) of this very GPU.
    ``torch.cuda.is_bf16_supported`` also counts the emulated path of a T4/V100, which is slow."""
    try:
        return tuple(torch.cuda.get_device_capability(device)) >= (8, 0) and torch.cuda.is_bf16_supported()
    except (RuntimeError, AssertionError, ValueError):
        return False


def autocast_dtype(device: torch.device | str, mode: str = "auto", *, training: bool = False) -> torch.dtype | None:
    """The autocast dtype for ``mode`` on ``device``; None means plain fp32. The one place
    an autocast mode is resolved.

    auto: bf16 on CUDA GPUs of compute capability >= 8.0, bf16 on CPUs with AVX512-BF16/AMX,
    else fp32. bf16/fp16 force that dtype where the device type supports it (ValueError
    otherwise). ``training``: fp16 is refused, since the trainer has no gradient scaler
    (fp16 gradients underflow without one).
    """
    device = torch.device(device)
    mode = str(mode).strip().lower()
    if mode == "fp32":
        mode = "off"
    if mode not in AUTOCAST_MODES:
        raise ValueError(f"unknown autocast mode {mode!r}; expected one of {', '.join(AUTOCAST_MODES)}")
    if mode == "off":
        return None
    if mode == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if cuda_has_fast_bf16(device) else None
        if device.type == "cpu":
            return torch.bfloat16 if cpu_has_fast_bf16() else None
        return None  # MPS and others: fp32 unless asked
    if mode == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"bf16 autocast requested but {device} does not support bfloat16; use --amp off")
        if device.type not in ("cuda", "cpu", "mps"):
            raise ValueError(f"bf16 autocast is not supported on device type {device.type!r}")
        return torch.bfloat16
    # fp16
    if training:
        raise ValueError("fp16 autocast needs a gradient scaler, which the trainer does not have yet; "
                         "use --amp bf16, auto or off")
    if device.type not in ("cuda", "mps"):
        raise ValueError(f"fp16 autocast is not supported on {device.type}; use bf16 or off")
    return torch.float16


def autocast_context(device: torch.device | str, dtype: torch.dtype | None) -> ContextManager:
    """``torch.autocast`` for ``dtype`` on ``device``'s type; a no-op context when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


# cuBLAS picks its reduction strategy per workspace; with this setting (or ":16:8") its
# results are bit-reproducible. It is read when the first cuBLAS handle is made.
CUBLAS_DETERMINISTIC = ":4096:8"
_CUBLAS_OK = (":4096:8", ":16:8")


def set_cublas_deterministic() -> bool:
    """Put CUBLAS_WORKSPACE_CONFIG=:4096:8 into this process's environment (kept if it
    already holds a deterministic value). cuBLAS reads it once, when the process makes its
    first cuBLAS handle (its first matmul on CUDA), so call this before any CUDA work.
    Returns False when that may be too late: CUDA was already initialised in this process
    and the variable was not set (export it before starting Python instead)."""
    if os.environ.get("CUBLAS_WORKSPACE_CONFIG") in _CUBLAS_OK:
        return True
    late = torch.cuda.is_initialized()
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_DETERMINISTIC
    return not late


@contextlib.contextmanager
def kernel_choices(deterministic: bool) -> Iterator[str]:
    """The kernel settings of one training session, restored afterwards (they are global
    to the process). Yields a line saying what was chosen.

    deterministic: torch.use_deterministic_algorithms(True) (an op without a deterministic
    kernel then raises instead of silently differing), cuDNN deterministic and no cuDNN
    autotuning; with ``set_cublas_deterministic`` (called before CUDA starts) every step is
    bit-reproducible on the same GPU, torch and CUDA. Slower.
    Otherwise cuDNN autotunes its convolution algorithms (``cudnn.benchmark``): training
    shapes are fixed (a full batch, and a smaller last batch per epoch), so the one-off
    search per shape pays for itself. No effect on CPUs.
    """
    cudnn = torch.backends.cudnn
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             cudnn.deterministic, cudnn.benchmark)
    try:
        if deterministic:
            torch.use_deterministic_algorithms(True)
            cudnn.deterministic, cudnn.benchmark = True, False
            yield (f"deterministic kernels (torch.use_deterministic_algorithms, cuDNN deterministic without "
                   f"autotuning, CUBLAS_WORKSPACE_CONFIG={os.environ.get('CUBLAS_WORKSPACE_CONFIG', 'unset')})")
        else:
            cudnn.benchmark = True
            yield "cuDNN autotuning on (cudnn.benchmark); --deterministic for bit-exact CUDA runs"
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        cudnn.deterministic, cudnn.benchmark = saved[2], saved[3]


def free_device_memory(device: torch.device) -> int | None:
    """Bytes this process could still allocate on ``device`` (CUDA: the driver's free
    memory plus what PyTorch's cache holds unused; MPS: the recommended working set minus
    what is allocated), or None where that is not known (CPU)."""
    device = torch.device(device)
    try:
        if device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(device)
            cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
            return int(free + max(0, cached))
        if device.type == "mps" and hasattr(torch.mps, "recommended_max_memory"):
            return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    except (RuntimeError, AssertionError, AttributeError):
        return None
    return None


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` says the device ran out of memory: CUDA raises torch.OutOfMemoryError;
    MPS and CPU allocators a RuntimeError saying "out of memory" or "can't allocate memory"."""
    if isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
