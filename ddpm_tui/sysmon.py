"""Machine figures for the Train screen: NVIDIA GPU utilisation, memory and temperature via
NVML (nvidia-ml-py, imported as ``pynvml``) when there is a GPU; CPU and RAM via psutil always.

GPUs are labelled as PyTorch names them (``cuda:N``), not by NVML's index: under
``CUDA_VISIBLE_DEVICES`` the two differ (``CUDA_VISIBLE_DEVICES=3`` makes NVML's GPU 3
``cuda:0``), and the variable may hold indices, ``GPU-`` UUID prefixes or ``MIG-`` UUIDs.
:func:`cuda_units` maps one to the other by UUID, parsing the variable as CUDA does (a bad
entry ends the list; a repeated one empties it). Indices count GPUs in PCI bus order, which
is CUDA's order under ``CUDA_DEVICE_ORDER=PCI_BUS_ID``; the studio starts its trainers and
its sampler with that setting (unless the user chose another), so the labels hold for them.
GPUs CUDA cannot see are summed up in one line, not dropped silently.

No GPU (no driver, no NVML library, no device) is a normal state, reported as ``gpus == []``
with a plain reason, never as an error. One GPU whose NVML calls fail (fallen off the bus)
is shown as its own line with the error; the others keep updating. Reading is cheap but not
free: callers poll it from a timer at about 1 Hz (thread worker), not per frame.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

import psutil

from core.io.safe_text import shown

MAX_GPU_LINES = 4  # the panel stays small on an 8-GPU box: the run's GPUs first, then a summary


@dataclass
class GPUInfo:
    index: int | None  # the CUDA index (cuda:N); None when CUDA cannot see this GPU
    name: str
    util_percent: float | None
    mem_used: int  # bytes
    mem_total: int
    temperature_c: float | None
    nvml: str = ""  # nvidia-smi's name for it: "3", or "3/1" for MIG device 1 of GPU 3
    error: str | None = None  # NVML failed for this GPU: the other fields mean nothing


@dataclass
class SystemSnapshot:
    cpu_percent: float
    ram_used: int
    ram_total: int
    gpus: list[GPUInfo] = field(default_factory=list)
    gpu_note: str = ""  # why no GPU is shown, in plain words
    hidden_gpus: list[GPUInfo] = field(default_factory=list)  # in NVML but not visible to CUDA


@dataclass
class NvmlUnit:
    """A GPU (or a MIG device of one) as NVML sees it."""

    nvml: str  # "3" or "3/1"
    handle: object
    uuid: str = ""  # "GPU-…" or "MIG-…"
    bus_id: str = ""  # "00000000:17:00.0"; MIG devices carry their parent's
    error: str | None = None
    mig: bool = False


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _strtoul(entry: str) -> int:
    """The leading digits of entry as CUDA reads them ("1gpu" -> 1); -1 for none or a sign."""
    digits = ""
    for ch in entry:
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else -1


def cuda_units(visible: str | None, units: list[NvmlUnit]) -> list[NvmlUnit]:
    """The NVML units CUDA enumerates, in CUDA index order, for ``CUDA_VISIBLE_DEVICES=visible``.

    ``units`` are whole GPUs in PCI bus order (plus MIG devices, marked ``mig``). Unset: every
    whole GPU. Otherwise entries are indices into the whole GPUs, ``GPU-`` UUID prefixes or
    ``MIG-`` UUID prefixes (a prefix must match one unit); the first entry that names nothing
    ends the list, as in CUDA, and a repeated entry empties it (as PyTorch reads it).
    """
    gpus = [u for u in units if not u.mig]
    if visible is None:
        return gpus
    out: list[NvmlUnit] = []
    for raw in visible.split(","):
        entry = raw.strip()
        if entry.startswith(("GPU-", "MIG-")):
            pool = [u for u in units if u.mig == entry.startswith("MIG-")]
            matches = [u for u in pool if u.uuid and u.uuid.startswith(entry)]
            unit = matches[0] if len(matches) == 1 else None
        else:
            index = _strtoul(entry)
            unit = gpus[index] if 0 <= index < len(gpus) else None
        if unit is None:
            break
        if any(u is unit for u in out):
            return []
        out.append(unit)
    return out


class SystemMonitor:
    """Reads CPU/RAM every call; initialises NVML once and keeps the handles."""

    def __init__(self, use_gpu: bool = True, visible: str | None | bool = True) -> None:
        """``visible``: the CUDA_VISIBLE_DEVICES to map with (True: this process's)."""
        self._lock = threading.Lock()
        self._nvml = None
        self._units: list[NvmlUnit] = []  # CUDA-visible, in CUDA order
        self._hidden: list[NvmlUnit] = []
        self.gpu_note = "no GPU monitoring"
        self.visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is True else visible
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
        except Exception:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...: no GPU here
            self.gpu_note = "no NVIDIA GPU (NVML unavailable)"
            return
        self._nvml = pynvml
        units = [self._unit(str(i), lambda i=i: pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)]
        # CUDA's indices follow the PCI bus (CUDA_DEVICE_ORDER=PCI_BUS_ID); a unit without a
        # bus id (its handle failed) keeps its NVML place
        known = iter(sorted((u for u in units if u.bus_id), key=lambda u: u.bus_id))
        units = [u if not u.bus_id else next(known) for u in units]
        mig = []
        if self.visible and "MIG-" in self.visible:  # only then look for MIG devices
            for unit in units:
                mig += self._mig_units(unit)
        visible = cuda_units(self.visible, units + mig)
        self._units = visible
        self._hidden = [u for u in units if not any(v is u or (v.mig and u.bus_id and v.bus_id == u.bus_id)
                                                    for v in visible)]  # a GPU one of whose MIG devices CUDA sees is not hidden
        if not count:
            self.gpu_note = "no NVIDIA GPU found"
        elif not visible:
            self.gpu_note = f"no GPU visible to CUDA (CUDA_VISIBLE_DEVICES={shown(self.visible)})"
        else:
            self.gpu_note = ""

    def _unit(self, nvml: str, get_handle, mig: bool = False) -> NvmlUnit:
        nv = self._nvml
        unit = NvmlUnit(nvml, None, mig=mig)
        try:
            unit.handle = get_handle()
            unit.uuid = _text(nv.nvmlDeviceGetUUID(unit.handle))
        except Exception as exc:  # this GPU only: the others are still shown
            unit.error = shown(exc) or type(exc).__name__
            return unit
        try:
            unit.bus_id = _text(nv.nvmlDeviceGetPciInfo(unit.handle).busId).upper()
        except Exception:
            pass  # no bus id: it sorts by its NVML index
        return unit

    def _mig_units(self, parent: NvmlUnit) -> list[NvmlUnit]:
        nv = self._nvml
        if parent.handle is None:
            return []
        try:
            if nv.nvmlDeviceGetMigMode(parent.handle)[0] != 1:
                return []
            slots = nv.nvmlDeviceGetMaxMigDeviceCount(parent.handle)
        except Exception:  # no MIG support: a whole GPU only
            return []
        out = []
        for j in range(slots):
            unit = self._unit(f"{parent.nvml}/{j}", lambda j=j: nv.nvmlDeviceGetMigDeviceHandleByIndex(parent.handle, j),
                              mig=True)
            if unit.error is None:  # an empty slot raises NotFound: not a device
                unit.bus_id = parent.bus_id
                out.append(unit)
        return out

    def _gpu(self, index: int | None, unit: NvmlUnit) -> GPUInfo:
        if unit.error is not None:
            return GPUInfo(index, "", None, 0, 0, None, unit.nvml, unit.error)
        nv, handle = self._nvml, unit.handle
        try:
            name = _text(nv.nvmlDeviceGetName(handle))
            mem = nv.nvmlDeviceGetMemoryInfo(handle)
        except Exception as exc:  # a GPU that fell off the bus: its line says so, the others go on
            return GPUInfo(index, "", None, 0, 0, None, unit.nvml, shown(exc) or type(exc).__name__)
        try:
            util = float(nv.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:
            util = None  # e.g. MIG slices do not report utilisation
        try:
            temp = float(nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU))
        except Exception:
            temp = None
        return GPUInfo(index, shown(name), util, int(mem.used), int(mem.total), temp, unit.nvml)

    def snapshot(self) -> SystemSnapshot:
        with self._lock:
            vm = psutil.virtual_memory()
            snap = SystemSnapshot(cpu_percent=psutil.cpu_percent(None), ram_used=int(vm.total - vm.available),
                                  ram_total=int(vm.total), gpu_note=self.gpu_note)
            if self._nvml is not None:
                snap.gpus = [self._gpu(i, u) for i, u in enumerate(self._units)]
                snap.hidden_gpus = [self._gpu(None, u) for u in self._hidden]
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


def run_gpus(device: str | None, world_size: int | None, visible_count: int) -> set[int]:
    """The CUDA indices a run trains on, from its status (or config) ``device`` and world
    size: ``cuda`` and ``auto`` mean cuda:0 when there is a GPU; under torchrun local rank r
    uses cuda:r when it sees that many GPUs, else the given one (core.training.train.pick_rank_device;
    one node assumed). Empty for CPU and MPS runs."""
    text = str(device or "auto").strip().lower()
    if text == "auto" or text == "cuda":
        if not visible_count:
            return set()
        index = 0
    elif text.startswith("cuda:") and text[5:].isdigit():
        index = int(text[5:])
    else:
        return set()
    ranks = max(1, int(world_size or 1))
    if ranks == 1:
        return {index}
    return {r if visible_count > r else index for r in range(ranks)}


def gpu_line(g: GPUInfo, marked: bool = False) -> str:
    label = f"cuda:{g.index}" if g.index is not None else f"GPU {g.nvml}"
    if g.index is not None and g.nvml and g.nvml != str(g.index):
        label += f" (nvidia-smi {g.nvml})"  # nvidia-smi counts all GPUs, CUDA only the visible ones
    mark = " ◀ this run" if marked else ""
    if g.error is not None:
        return f"{label}: NVML error: {g.error}{mark}"
    util = "?" if g.util_percent is None else f"{g.util_percent:.0f}%"
    temp = "" if g.temperature_c is None else f"  {g.temperature_c:.0f}°C"
    return f"{label} {g.name}: {util}  {fmt_bytes(g.mem_used)}/{fmt_bytes(g.mem_total)}{temp}{mark}"


def describe(snap: SystemSnapshot, marked: set[int] | frozenset[int] = frozenset()) -> list[str]:
    """Short lines for the UI: one per CUDA GPU (``marked`` CUDA indices: the selected run's),
    a line for GPUs CUDA cannot see, then CPU/RAM; the GPU note when there is no GPU."""
    lines = []
    gpus = snap.gpus
    if len(gpus) > MAX_GPU_LINES:  # the run's GPUs first; the rest summed up
        first = sorted(gpus, key=lambda g: (g.index not in marked, g.index))[:MAX_GPU_LINES - 1]
        rest = [g for g in gpus if g not in first]
        gpus = sorted(first, key=lambda g: g.index)
    else:
        rest = []
    lines += [gpu_line(g, g.index in marked) for g in gpus]
    if rest:
        utils = [g.util_percent for g in rest if g.util_percent is not None]
        avg = f", {sum(utils) / len(utils):.0f}% busy on average" if utils else ""
        lines.append(f"+ {len(rest)} more GPUs ({', '.join(f'cuda:{g.index}' for g in rest)}{avg})")
    if snap.hidden_gpus:
        names = ", ".join(g.nvml for g in snap.hidden_gpus)
        lines.append(f"not visible to CUDA (CUDA_VISIBLE_DEVICES): nvidia-smi GPU {names}")
    if not snap.gpus:
        lines.insert(0, snap.gpu_note or "no GPU")
    lines.append(f"CPU {snap.cpu_percent:.0f}%  RAM {fmt_bytes(snap.ram_used)}/{fmt_bytes(snap.ram_total)}")
    return lines
