"""Which devices the studio offers (the new-run form, the Sample screen), and which
training runs of the workspace use a given GPU.

The choices come from the ``device`` option's suggestions (core/training/options.py) with ``cuda``
expanded to ``cuda:N`` for every GPU PyTorch sees, each kept only if core.diffusion.device accepts it
here (so ``mps`` appears only where it works). Counting GPUs imports torch but creates no
CUDA context (``torch.cuda.device_count`` does not); callers run it in a thread worker.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

from core.training.options import DEVICE_SUGGESTIONS
from ddpm_tui.sysmon import run_gpus

_lock = threading.Lock()
_choices: list[str] | None = None


def known_choices() -> list[str] | None:
    """The device choices if already found (no torch import), else None."""
    return None if _choices is None else list(_choices)


def provisional_choices(value: str | None = None) -> list[str]:
    """What a drop-down shows until :func:`device_choices` is known: auto and cpu (and
    ``value``, so a field set to cuda:1 keeps it)."""
    out = [c for c in DEVICE_SUGGESTIONS if c in ("auto", "cpu")]
    return out + [value] if value and value not in out else out


def device_choices() -> list[str]:
    """auto, cpu, cuda:0 … cuda:N-1 for the GPUs PyTorch sees, and mps where it works
    (in the order of the option's suggestions); found once per process."""
    global _choices
    with _lock:
        if _choices is None:
            import torch

            from core.diffusion.device import resolve_device

            found = []
            for spec in DEVICE_SUGGESTIONS:
                specs = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if spec == "cuda" else [spec]
                for candidate in specs:
                    try:
                        resolve_device(candidate)
                    except ValueError:
                        continue  # not on this machine
                    found.append(candidate)
            _choices = found
        return list(_choices)


def find_choices_for(screen: Any, apply: Callable[[list[str]], None]) -> None:
    """The body of a screen's thread worker: find :func:`device_choices` (imports torch,
    off the event loop) and hand them to ``apply`` on the event loop. A broken torch install
    is a warning; the provisional auto and cpu keep working."""
    from textual.worker import get_current_worker

    try:
        choices = device_choices()
    except Exception as exc:
        screen.app.call_from_thread(screen.notify, f"cannot list devices: {exc}", severity="warning")
        return
    if not get_current_worker().is_cancelled:
        screen.app.call_from_thread(apply, choices)


def forget_choices() -> None:
    """Find the choices again on the next call (tests; a GPU that appeared)."""
    global _choices
    with _lock:
        _choices = None


def gpu_of(spec: str | None, choices: list[str]) -> int | None:
    """The CUDA index ``spec`` samples on (auto and cuda mean cuda:0 where there is a GPU)."""
    gpus = run_gpus(spec, 1, sum(c.startswith("cuda:") for c in choices))
    return next(iter(gpus)) if gpus else None


def runs_training_on(runs_dir: Path, gpu: int, visible_count: int) -> list[str]:
    """Names of this workspace's runs training now, on this host, on CUDA index ``gpu``."""
    from core.training.runs import list_runs

    names = []
    for info in list_runs(runs_dir):
        if info.state != "running" or not info.alive:  # alive None: another host
            continue
        status = info.status or {}
        device = status.get("device") or (info.config or {}).get("device")
        if gpu in run_gpus(device, status.get("world_size"), visible_count):
            names.append(info.name)
    return names
