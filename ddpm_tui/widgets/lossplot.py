"""The live loss plot: raw loss and an exponentially smoothed line, optional log scale.

Data arrives in batches from the metrics poller; the plot keeps every point but draws at
most a few hundred (bucket means), and redraws only when data or options changed.
"""

from __future__ import annotations

import math

from textual.reactive import reactive
from textual_plotext import PlotextPlot


def smooth(values: list[float], alpha: float = 0.05) -> list[float]:
    """Exponential moving average with bias correction (the first points are not dragged to 0)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = (1 - alpha) * avg + alpha * v
        out.append(avg / (1 - (1 - alpha) ** i))
    return out


def downsample(xs: list[float], ys: list[float], max_points: int) -> tuple[list[float], list[float]]:
    """Bucket means: keeps the shape of a long curve at the resolution a terminal can show."""
    n = len(xs)
    if n <= max_points or max_points < 2:
        return list(xs), list(ys)
    size = n / max_points
    ox, oy = [], []
    for b in range(max_points):
        lo, hi = int(b * size), max(int((b + 1) * size), int(b * size) + 1)
        ox.append(sum(xs[lo:hi]) / (hi - lo))
        oy.append(sum(ys[lo:hi]) / (hi - lo))
    return ox, oy


class StepPlot(PlotextPlot):
    """A plot against training step that redraws itself (``_draw``) when resized."""

    def on_resize(self) -> None:
        self._replot()

    def _replot(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.xlabel("step")
        self._draw(plt)
        self.refresh()

    def _draw(self, plt) -> None:
        raise NotImplementedError


class LossPlot(StepPlot):
    """Call `set_points(steps, losses)` (or `add_points`) then it redraws itself."""

    log_scale: reactive[bool] = reactive(False)

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.steps: list[float] = []
        self.losses: list[float] = []
        self.title = "loss"

    def clear(self) -> None:
        self.steps, self.losses = [], []
        self._replot()

    def set_points(self, steps: list[float], losses: list[float]) -> None:
        self.steps, self.losses = list(steps), list(losses)
        self._replot()

    def add_points(self, steps: list[float], losses: list[float]) -> None:
        if not steps:
            return
        # A resumed run can go back in steps: drop the points it will redo.
        first = steps[0]
        while self.steps and self.steps[-1] >= first:
            self.steps.pop()
            self.losses.pop()
        self.steps.extend(steps)
        self.losses.extend(losses)
        self._replot()

    def watch_log_scale(self) -> None:
        self._replot()

    def _draw(self, plt) -> None:
        pts = [(s, l) for s, l in zip(self.steps, self.losses)
               if l is not None and math.isfinite(l) and (l > 0 or not self.log_scale)]
        plt.title(self.title + (" (log)" if self.log_scale else ""))
        if pts:
            xs = [p[0] for p in pts]
            ys = [p[1] for p in pts]
            width = max(self.size.width, 20)
            # smooth over ~5% of the points: a short run is not flattened, a long one is readable
            sm = smooth(ys, alpha=min(0.3, max(0.005, 20.0 / len(ys))))
            dx, dy = downsample(xs, ys, 2 * width)
            _, ds = downsample(xs, sm, 2 * width)
            plt.scatter(dx, dy, marker="braille", color="gray", label="raw")
            plt.plot(dx, ds, marker="braille", color="orange", label="smoothed")
            if self.log_scale:
                plt.yscale("log")
