"""A small panel with GPU (or CPU/RAM) figures, refreshed once a second by a thread worker."""

from __future__ import annotations

from textual.widgets import Static
from textual.worker import get_current_worker

from ddpm_tui.sysmon import SystemMonitor, describe, run_gpus

_MONITOR: SystemMonitor | None = None


def shared_monitor() -> SystemMonitor:
    """One NVML session per process, whichever screen asks first."""
    global _MONITOR
    if _MONITOR is None:
        _MONITOR = SystemMonitor()
    return _MONITOR


class SysMonPanel(Static):
    """Shows `describe(snapshot)` lines. Disabled (fixed text) when the app says so, which
    keeps snapshot tests free of changing figures."""

    def __init__(self, *, interval: float = 1.0, id: str | None = None, classes: str | None = None) -> None:
        super().__init__("", id=id, classes=classes)
        self.interval = interval
        self._busy = False
        # (device, world size) of the selected run while it trains here; its GPUs are marked
        self.run_device: tuple[str | None, int | None] | None = None

    def on_mount(self) -> None:
        if not getattr(self.app, "sysmon_enabled", True):
            self.update("system monitor off")
            return
        self.update("reading system figures…")
        self._tick()
        self.set_interval(self.interval, self._tick)

    def _tick(self) -> None:
        if self._busy or not self.is_mounted:
            return
        self._busy = True
        self.run_worker(self._read, thread=True, group="sysmon", name="system figures", exit_on_error=False)

    def _read(self) -> None:
        try:
            snap = shared_monitor().snapshot()
            run = self.run_device
            lines = describe(snap, run_gpus(run[0], run[1], len(snap.gpus)) if run else set())
        except Exception as exc:  # psutil/NVML failing must not take the screen down
            lines = [f"system figures unavailable: {exc}"]
        finally:
            self._busy = False
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self.update, "\n".join(lines))
