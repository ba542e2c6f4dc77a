"""The FID-against-step plot beside the loss: points from the run's eval.jsonl.

The Train screen's poller reads eval.jsonl incrementally (``core.quality.eval_log.read_eval``) in
its thread and hands the new records to :meth:`FidPlot.add_records` on the event loop.
FIDs of different feature nets are not comparable, so the plot shows the feature net of
the latest evaluation only. Its title carries the quality trend (core.quality.trend): whether
KID (FID without KID) is improving, flat or getting worse, from every record read so far.
The copy rate (core.quality.memorisation, 0..1) rides on the right-hand axis in percent, so
it never squashes FID's scale; ``warning`` is the overfitting warning
(core.quality.overfitting) of the records read so far, which the Train screen shows.
"""

from __future__ import annotations

from core.quality.eval_log import fid_points
from core.quality.overfitting import OverfitWarning, overfitting_warning
from core.quality.trend import Trend, trend
from ddpm_tui.widgets.lossplot import StepPlot


class FidPlot(StepPlot):
    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.display = False
        self.points: dict[str, dict[int, float]] = {}  # features -> step -> fid (a rerun replaces)
        self.latest: str | None = None
        self.records: list[dict] = []  # every eval.jsonl record read, for the trend
        self.trend: Trend | None = None
        self.copies: dict[str, dict[int, float]] = {}  # features -> step -> copy rate (0..1)
        self.warning: OverfitWarning | None = None

    def add_records(self, records: list[dict], *, reset: bool = False) -> None:
        if reset:
            self.points, self.latest, self.records, self.trend = {}, None, [], None
            self.copies, self.warning = {}, None
        if records:
            self.records.extend(records)
            self.trend = trend(self.records)
            self.warning = overfitting_warning(self.records)
        new = fid_points(records)
        for step, value, features in new:
            self.points.setdefault(features, {})[step] = value
            self.latest = features
        rates = [r for r in records if r.get("metric") == "copy_rate" and isinstance(r.get("step"), int)
                 and isinstance(r.get("value"), (int, float)) and not isinstance(r.get("value"), bool)]
        for r in rates:
            self.copies.setdefault(str(r.get("features") or ""), {})[r["step"]] = float(r["value"])
        if new or rates or reset:
            self._replot()

    @property
    def series(self) -> list[tuple[int, float]]:
        """(step, fid) of the plotted feature net, by step."""
        return sorted(self.points.get(self.latest, {}).items()) if self.latest else []

    @property
    def copy_series(self) -> list[tuple[int, float]]:
        """(step, copy rate 0..1) measured with the plotted feature net, by step."""
        return sorted(self.copies.get(self.latest, {}).items()) if self.latest else []

    @property
    def verdict(self) -> str:
        """The trend in a few words for the title: 'KID flat since step 1200'."""
        t = self.trend
        if t is None or not t.points:
            return ""
        if t.verdict == "too few":
            return "trend: too few evaluations"
        if t.verdict == "improving":
            rate = f"{t.per_hour:+.2g}/h" if t.per_hour is not None else f"{t.per_1k_steps:+.2g}/1k steps"
            return f"{t.metric.upper()} improving {rate.replace('-', '−')}"
        return f"{t.metric.upper()} {'flat' if t.verdict == 'flat' else 'worse'} since step {t.since_step}"

    def _draw(self, plt) -> None:
        pts = self.series
        self.display = bool(pts)  # a run never evaluated keeps the whole width for its loss
        plt.title(f"FID ({self.latest}) · {self.verdict}" if self.verdict else f"FID ({self.latest})")
        if pts:
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            plt.plot(xs, ys, marker="braille", color="cyan", label="FID")
        copies = self.copy_series
        if pts and copies:  # a rate on its own axis (right, in %): FID's scale stays FID's
            plt.plot([c[0] for c in copies], [100.0 * c[1] for c in copies], marker="braille",
                     color="magenta", label="copy %", yside="right")
            plt.ylim(0, 100, yside="right")
