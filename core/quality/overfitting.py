"""The overfitting warning: from eval.jsonl's records alone (torch-free), said by the
trainer's log, ``ddpm-tui runs`` and the studio's Train screen."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

COPY_RISE = 0.10  # the copy rate must have risen by 10 points above its lowest...
FLAT_EVALS = 2  # ...while none of the last 2 evaluations beat the earlier best FID...
FID_GAIN = 0.02  # ...by more than 2 %
FLAG = "copying?"
ADVICE = "more data, augmentation (--flip), a smaller net (--preset), or stop here"


@dataclass(frozen=True)
class OverfitWarning:
    step: int  # the evaluation that set it off
    copy_from: float
    copy_to: float
    best_fid: float
    best_step: int
    against_holdout: bool

    @property
    def message(self) -> str:
        side = "held-out images" if self.against_holdout else "the training images"
        return (f"overfitting? at step {self.step} the copy rate rose to {self.copy_to:.0%} "
                f"(from {self.copy_from:.0%}) while FID against {side} has not improved since step "
                f"{self.best_step} ({self.best_fid:.4g}); try {ADVICE}")


def _points(records: Iterable[dict]) -> tuple[list[tuple[int, float, float]], bool]:
    """(step, fid, copy rate) per evaluation that has both (the latest record of a step wins),
    by step; FID against held-out images when the run has any."""
    records = [r for r in records if isinstance(r, dict) and isinstance(r.get("step"), int)
               and isinstance(r.get("value"), (int, float)) and not isinstance(r.get("value"), bool)]
    holdout = any(r.get("real") == "holdout" for r in records)
    fid: dict[int, float] = {}
    copy: dict[int, float] = {}
    for r in records:
        if holdout and r.get("real") != "holdout":
            continue
        if r.get("metric") == "fid":
            fid[r["step"]] = float(r["value"])
        elif r.get("metric") == "copy_rate":
            copy[r["step"]] = float(r["value"])
    return [(s, fid[s], copy[s]) for s in sorted(fid) if s in copy], holdout


def overfitting_warning(records: Iterable[dict]) -> OverfitWarning | None:
    """A warning when the model starts copying its training images instead of improving.

    The rule: over the evaluations that have both FID and a copy rate (FID against held-out
    images when the run holds any out), it fires when (a) the latest copy rate is at least
    ``COPY_RISE`` (10 points) above the lowest earlier one, and (b) FID stopped falling:
    none of the last ``FLAT_EVALS`` evaluations has a FID more than ``FID_GAIN`` (2 %) below
    the best FID before them. It needs at least FLAT_EVALS + 1 evaluations; None otherwise.
    """
    points, holdout = _points(records)
    if len(points) <= FLAT_EVALS:
        return None
    earlier, recent = points[:-FLAT_EVALS], points[-FLAT_EVALS:]
    lowest_copy = min(c for _, _, c in points[:-1])
    step, _, copy_now = points[-1]
    best_step, best_fid, _ = min(earlier, key=lambda p: p[1])
    still_falling = any(f < best_fid * (1 - FID_GAIN) for _, f, _ in recent)
    if copy_now - lowest_copy < COPY_RISE or still_falling:
        return None
    return OverfitWarning(step, lowest_copy, copy_now, best_fid, best_step, holdout)
