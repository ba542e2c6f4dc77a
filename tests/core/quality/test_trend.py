"""core.quality.trend: the verdict on constructed eval.jsonl records."""

from __future__ import annotations

import pytest

from core.quality import trend


def _kid(step: int, value: float, std: float, *, n: int = 100, hour: float | None = None) -> dict:
    return {"step": step, "metric": "kid", "value": value, "std": std, "features": "dataset", "feature_key": "k",
            "n": n, "guidance": 1.0, "sampler": "ddim", "steps": 10, "weights": "ema",
            "time": 1000.0 + 3600.0 * (step / 100 if hour is None else hour)}


def test_a_kid_falling_by_more_than_its_std_each_evaluation_is_never_flat():
    """The issue's must-hold: falls of 1.1 std between evaluations, 3 to 8 evaluations."""
    for count in range(3, 9):
        records = [_kid(100 * i, 1.0 - 0.011 * i, 0.01) for i in range(count)]
        got = trend.trend(records)
        assert got.verdict == "improving", (count, got.text)
        assert got.text.startswith("improving (−") and "per hour" in got.text
        assert got.per_1k_steps == pytest.approx(-0.11) and got.per_hour == pytest.approx(-0.011)


def test_changes_within_the_noise_are_flat_since_the_last_significant_improvement():
    values = [1.0, 0.5, 0.2, 0.203, 0.198, 0.201, 0.2]  # a plateau from step 200, wiggles of 0.3 std
    got = trend.trend([_kid(100 * i, v, 0.01) for i, v in enumerate(values)])
    assert got.verdict == "flat" and got.since_step == 200 and got.flat_evals == 4
    assert got.text == "flat since step 200 (change within noise over the last 4 evaluations)"
    assert got.short == "flat@200"


def test_a_rising_kid_is_getting_worse_since_its_best():
    values = [1.0, 0.5, 0.3, 0.35, 0.4, 0.45]
    got = trend.trend([_kid(100 * i, v, 0.01) for i, v in enumerate(values)])
    assert got.verdict == "worse" and got.text == "getting worse since step 200" and got.short == "worse@200"


def test_too_few_and_like_with_like():
    assert trend.trend([_kid(0, 1.0, 0.01), _kid(100, 0.5, 0.01)]).text.startswith("too few evaluations")
    # Evaluations with another n are not compared with the latest ones (n=50 reads higher).
    records = [_kid(0, 9.0, 0.01, n=50), _kid(100, 8.0, 0.01, n=50), _kid(200, 0.2, 0.01), _kid(300, 0.2, 0.01)]
    assert trend.trend(records).verdict == "too few"


def test_fid_alone_is_judged_with_its_assumed_noise():
    fids = [{**_kid(100 * i, v, 0.0), "metric": "fid"} for i, v in enumerate([300.0, 200.0, 120.0, 60.0])]
    for r in fids:
        del r["std"]
    got = trend.trend(fids)
    assert got.metric == "fid" and got.verdict == "improving"
    flat = [{**r, "value": 100.0 + i} for i, r in enumerate(fids)]  # 1 a step against a 5 noise
    assert trend.trend(flat).verdict == "flat"
