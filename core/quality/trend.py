"""Is the run still getting better? The recent slope of KID (or FID) from eval.jsonl, with its
uncertainty, and a plain verdict. Torch-free: `ddpm-tui runs`, `eval --trend`, the Train screen
and the trainer's stop rules read it.

Like with like: only evaluations made as the latest one was (:data:`TREND_KEYS`: the feature
net, n, guidance, sampler, steps and weights) are compared; a step evaluated twice counts once
(the latest record).

The noise of one evaluation (sigma): KID's std over subsets (the record's ``std``); FID has no
std written, so it is taken as :data:`FID_NOISE` of the value.

The rules, over the recent evaluations (the last :data:`WINDOW`, starting no earlier than the
lowest value, at least :data:`MIN_EVALS`; a fit weighted by 1/sigma^2):
- a change between two evaluations is significant when it exceeds 2x their combined sigma
  (2 * sqrt(sigma_a^2 + sigma_b^2)); the best-so-far walk (``since_best``) moves only on such
  a fall;
- "improving" / "getting worse": the slope is significant (beyond 2x its own uncertainty) or
  moves more than the typical sigma per evaluation interval, down / up;
- "flat": neither, i.e. the change per evaluation is within the noise;
- "too few evaluations": fewer than :data:`MIN_EVALS` comparable evaluations.
So a KID that falls by more than its std between evaluations is never "flat".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from core.quality.eval_log import LIKE_WITH_LIKE, number as _number

TREND_KEYS = (*LIKE_WITH_LIKE, "sampler", "steps", "weights")
WINDOW = 5  # evaluations the slope is fitted over
MIN_EVALS = 3
SIGNIFICANT = 2.0  # a change counts when it exceeds this many combined sigmas
FID_NOISE = 0.05  # FID's assumed noise, as a share of its value (no std is written for FID)


@dataclass(frozen=True)
class Point:
    step: int
    value: float
    sigma: float
    time: float | None


def series(records: Iterable[dict], metric: str | None = None) -> tuple[str, list[Point]]:
    """(metric, comparable points by step) of ``metric`` (default: KID when the records have
    KID with its std, else FID), like the latest evaluation of that metric."""
    records = list(records)
    if metric is None:
        has_kid = any(r.get("metric") == "kid" and _number(r.get("std")) is not None for r in records)
        metric = "kid" if has_kid else "fid"
    usable = [r for r in records if r.get("metric") == metric and _number(r.get("value")) is not None
              and _number(r.get("step")) is not None]
    if not usable:
        return metric, []
    latest = [usable[-1].get(k) for k in TREND_KEYS]
    by_step: dict[int, Point] = {}
    for r in usable:
        if [r.get(k) for k in TREND_KEYS] != latest:
            continue
        value = _number(r["value"])
        std = _number(r.get("std")) if metric == "kid" else None
        sigma = std if std is not None else FID_NOISE * abs(value)
        by_step[int(r["step"])] = Point(int(r["step"]), value, max(sigma, 1e-12), _number(r.get("time")))
    return metric, [by_step[k] for k in sorted(by_step)]


def significant(a: Point, b: Point) -> float:
    """The change from ``a`` to ``b`` that counts: SIGNIFICANT x their combined sigma."""
    return SIGNIFICANT * math.hypot(a.sigma, b.sigma)


def since_best(points: list[Point]) -> tuple[int, int]:
    """(index of the last significant improvement, evaluations after it). The best moves only
    to a value lower than it by more than :func:`significant`."""
    best = 0
    for i, p in enumerate(points[1:], 1):
        if points[best].value - p.value > significant(points[best], p):
            best = i
    return best, len(points) - 1 - best


def _fit(xs: list[float], points: list[Point]) -> tuple[float, float]:
    """(slope, its 1-sigma uncertainty) of value against ``xs``, weighted by 1/sigma^2."""
    w = [1.0 / p.sigma ** 2 for p in points]
    sw = sum(w)
    mx = sum(wi * x for wi, x in zip(w, xs)) / sw
    my = sum(wi * p.value for wi, p in zip(w, points)) / sw
    sxx = sum(wi * (x - mx) ** 2 for wi, x in zip(w, xs))
    if sxx <= 0:
        return 0.0, math.inf
    slope = sum(wi * (x - mx) * (p.value - my) for wi, x, p in zip(w, xs, points)) / sxx
    return slope, 1.0 / math.sqrt(sxx)


@dataclass(frozen=True)
class Trend:
    metric: str  # "kid" or "fid"
    verdict: str  # "improving", "flat", "worse" or "too few"
    since_step: int | None  # flat / worse since this step
    flat_evals: int  # evaluations since the last significant improvement
    points: int  # comparable evaluations
    window: int = 0  # the recent evaluations the slope is fitted over
    per_1k_steps: float | None = None
    per_1k_steps_err: float | None = None
    per_hour: float | None = None
    per_hour_err: float | None = None
    latest: Point | None = None
    best: Point | None = None  # the last significant improvement

    @property
    def text(self) -> str:
        """The plain verdict, one line."""
        if self.verdict == "too few":
            return f"too few evaluations ({self.points} comparable; a trend needs {MIN_EVALS})"
        if self.verdict == "improving":
            rate = (f"{_signed(self.per_hour)} {self.metric.upper()} per hour" if self.per_hour is not None
                    else f"{_signed(self.per_1k_steps)} {self.metric.upper()} per 1,000 steps")
            return f"improving ({rate})"
        if self.verdict == "flat":
            return (f"flat since step {self.since_step} (change within noise over the last "
                    f"{self.flat_evals} evaluation{'s' if self.flat_evals != 1 else ''})")
        return f"getting worse since step {self.since_step}"

    @property
    def short(self) -> str:
        """A table cell: 'improving', 'flat@1200', 'worse@800', 'too few'."""
        return f"{self.verdict}@{self.since_step}" if self.verdict in ("flat", "worse") else self.verdict

    def detail(self) -> list[str]:
        """The figures behind the verdict and the rule, for `eval --trend`."""
        name = self.metric.upper()
        out = [f"{name} trend over the last {self.window} of {self.points} comparable evaluations"
               if self.window else f"{self.points} comparable {name} evaluation{'s' if self.points != 1 else ''}"]
        if self.latest is not None:
            out.append(f"latest: {name} {self.latest.value:.4g} ± {self.latest.sigma:.2g} at step {self.latest.step}")
        if self.best is not None:
            out.append(f"last significant improvement: {self.best.value:.4g} at step {self.best.step} "
                       f"({self.flat_evals} evaluation{'s' if self.flat_evals != 1 else ''} since)")
        if self.per_1k_steps is not None:
            out.append(f"slope: {_signed(self.per_1k_steps)} ± {self.per_1k_steps_err:.2g} per 1,000 steps")
        if self.per_hour is not None:
            out.append(f"slope: {_signed(self.per_hour)} ± {self.per_hour_err:.2g} per hour")
        noise = "its std over subsets" if self.metric == "kid" else f"{FID_NOISE:.0%} of the value"
        out.append(f"rule: a change is significant beyond {SIGNIFICANT:g}x the combined noise ({noise}); flat = "
                   "the change per evaluation is within the noise")
        return out


def _signed(value: float | None) -> str:
    return "?" if value is None else f"{value:+.3g}".replace("-", "−")


def trend(records: Iterable[dict], metric: str | None = None) -> Trend:
    """The verdict on ``records`` (eval.jsonl's lines, in file order)."""
    metric, points = series(records, metric)
    if len(points) < MIN_EVALS:
        return Trend(metric, "too few", None, 0, len(points), latest=points[-1] if points else None)
    best_i, after = since_best(points)
    # From the lowest value on (a rise after it is not hidden by the fall before it), at least
    # MIN_EVALS and at most WINDOW evaluations.
    lowest = min(range(len(points)), key=lambda i: points[i].value)
    recent = points[max(len(points) - WINDOW, min(lowest, len(points) - MIN_EVALS)):]
    slope, err = _fit([p.step for p in recent], recent)
    gap = (recent[-1].step - recent[0].step) / (len(recent) - 1)
    typical = sum(p.sigma for p in recent) / len(recent)
    moves = abs(slope) > SIGNIFICANT * err or abs(slope) * gap > typical
    times = [p.time for p in recent]
    per_hour = per_hour_err = None
    if all(t is not None for t in times) and max(times) > min(times):
        h_slope, h_err = _fit([t / 3600.0 for t in times], recent)
        per_hour, per_hour_err = h_slope, h_err
    if moves and slope < 0:
        verdict, since = "improving", None
    elif moves:
        verdict, since = "worse", min(points, key=lambda p: p.value).step
    else:
        verdict = "flat"
        since = points[best_i].step if after else recent[0].step
        after = after or len(recent) - 1
    return Trend(metric, verdict, since, after, len(points), len(recent), slope * 1000, err * 1000, per_hour, per_hour_err,
                 points[-1], points[best_i])
