"""Machine figures for the Train screen: NVIDIA GPU utilisation, memory and temperature via
NVML (nvidia-ml-py, imported as ``pynvml``) when there is a GPU; CPU and RAM via psutil always.

No GPU (no driver, no NVML library, no device) is a normal state, reported as ``gpus == []``
with a plain reason, never as an error. Reading is cheap but not free: callers poll it from a
timer at about 1 Hz (thread worker), not per frame.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import psutil


@dataclass
class GPUInfo:
    index: int
    name: str
    util_percent: float | None
    mem_used: int  # bytes
    mem_total: int
    temperature_c: float | None


@dataclass
class SystemSnapshot:
    cpu_percent: float
    ram_used: int
    ram_total: int
    gpus: list[GPUInfo] = field(default_factory=list)
    gpu_note: str = ""  # why no GPU is shown, in plain words


class SystemMonitor:
    """Reads CPU/RAM every call; initialises NVML once and keeps the handles."""

    def __init__(self, use_gpu: bool = True) -> None:
        self._lock = threading.Lock()
        self._nvml = None
        self._handles: list = []
        self.gpu_note = "no GPU monitoring"
        if use_gpu:
            self._init_nvml()
        psutil.cpu_percent(None)  # prime: the first call always returns 0.0

    def _init_nvml(self) -> None:
        try:
            import pynvml  # nvidia-ml-py
        except ImportError:
            self.gpu_note = "no GPU (nvidia-ml-py not installed)"
            return
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._nvml = pynvml
            self.gpu_note = "" if count else "no NVIDIA GPU found"
        except Exception:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...: no GPU here
            self._handles = []
            self.gpu_note = "no NVIDIA GPU (NVML unavailable)"

    def _gpu(self, index: int, handle) -> GPUInfo:
        nv = self._nvml
        name = nv.nvmlDeviceGetName(handle)
        if isinstance(name, bytes):
            name = name.decode(errors="replace")
        mem = nv.nvmlDeviceGetMemoryInfo(handle)
        try:
            util = float(nv.nvmlDeviceGetUtilizationRates(handle).gpu)
        except nv.NVMLError:
            util = None  # e.g. MIG slices do not report utilisation
        try:
            temp = float(nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU))
        except nv.NVMLError:
            temp = None
        return GPUInfo(index, str(name), util, int(mem.used), int(mem.total), temp)

    def snapshot(self) -> SystemSnapshot:
        with self._lock:
            vm = psutil.virtual_memory()
            snap = SystemSnapshot(cpu_percent=psutil.cpu_percent(None), ram_used=int(vm.total - vm.available),
                                  ram_total=int(vm.total), gpu_note=self.gpu_note)
            for i, h in enumerate(self._handles):
                try:
                    snap.gpus.append(self._gpu(i, h))
                except Exception as exc:  # a GPU that fell off the bus: say so, keep going
                    snap.gpu_note = f"GPU {i}: {exc}"
            return snap

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass  # shutting down a dead NVML has nothing left to release
            self._nvml = None


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit in ("B", "KiB") else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def describe(snap: SystemSnapshot) -> list[str]:
    """Short lines for the UI: one per GPU, then CPU/RAM; the GPU note when there is none."""
    lines = []
    for g in snap.gpus:
        util = "?" if g.util_percent is None else f"{g.util_percent:.0f}%"
        temp = "" if g.temperature_c is None else f"  {g.temperature_c:.0f}°C"
        lines.append(f"GPU{g.index} {g.name}: {util}  {fmt_bytes(g.mem_used)}/{fmt_bytes(g.mem_total)}{temp}")
    if not snap.gpus:
        lines.append(snap.gpu_note or "no GPU")
    lines.append(f"CPU {snap.cpu_percent:.0f}%  RAM {fmt_bytes(snap.ram_used)}/{fmt_bytes(snap.ram_total)}")
    return lines
