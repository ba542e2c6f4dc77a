"""The stop rules of --eval-every (--stop-when-flat K, --stop-at-kid X, --stop-at-fid X) and which
evaluation is the best so far (checkpoints/best.pt). Torch-free: judged on eval.jsonl's records.

The metric: KID (it has a std, so "significant" means something) whenever --stop-when-flat or
--stop-at-kid is given; FID when --stop-at-fid is the only rule. The best is the lowest value of
that metric among the evaluations comparable with the latest (core.quality.trend.series); a tie
keeps the earlier one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.quality import trend
from core.quality.eval_log import read_eval

BEST_CHECKPOINT = "best.pt"
# Every stop-rule message starts so: the trainer ends such a run "finished", not "stopped".
STOP_RULE_PREFIX = "stop rule"


@dataclass(frozen=True)
class Judgement:
    stop: str | None  # the message naming the rule and the figures, when the run should end
    best: bool  # the latest evaluation is the best so far: keep its weights as best.pt


class StopRules:
    def __init__(self, config) -> None:
        self.flat = int(config.stop_when_flat)
        self.kid = float(config.stop_at_kid)
        self.fid = float(config.stop_at_fid)
        self.metric = "fid" if self.fid and not (self.flat or self.kid) else "kid"

    @property
    def enabled(self) -> bool:
        return bool(self.flat or self.kid or self.fid)

    def judge(self, run_dir: Path, step: int) -> Judgement:
        """The verdict after the evaluation at ``step`` (already in eval.jsonl)."""
        records = read_eval(run_dir)[0]
        _, points = trend.series(records, self.metric)
        latest = points[-1] if points and points[-1].step == step else None
        if latest is None:  # the evaluation failed: nothing new to judge
            return Judgement(None, False)
        best = min(points, key=lambda p: p.value)
        return Judgement(self._stop(records, points, latest), best is latest)

    def _stop(self, records: list[dict], points: list[trend.Point], latest: trend.Point) -> str | None:
        for metric, limit in (("kid", self.kid), ("fid", self.fid)):
            if not limit:
                continue
            _, own = trend.series(records, metric)
            if own and own[-1].step == latest.step and own[-1].value <= limit:
                return (f"{STOP_RULE_PREFIX} --stop-at-{metric} {limit:g}: {metric.upper()} {own[-1].value:.4g} "
                        f"at step {latest.step}")
        if self.flat:
            best_i, after = trend.since_best(points)
            if after >= self.flat:
                best = points[best_i]
                return (f"{STOP_RULE_PREFIX} --stop-when-flat {self.flat}: {after} evaluations without a "
                        f"significant improvement on {self.metric.upper()} {best.value:.4g} ± {best.sigma:.2g} "
                        f"at step {best.step} (latest {latest.value:.4g} at step {latest.step})")
        return None
