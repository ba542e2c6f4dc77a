"""--stop-when-flat / --stop-at-kid / --stop-at-fid stop the real trainer (tiny preset, 16 px,
the cheap settings of test_eval_during_training.py), the run ends "finished" naming the rule,
and checkpoints/best.pt holds the step of the best evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.diffusion.checkpoint import load_checkpoint
from core.quality import eval_log
from core.training.runs import checkpoints_dir
from core.training.train import TrainConfig, TrainError, train

pytestmark = pytest.mark.usefixtures("one_thread", "no_inception")  # tests/conftest.py, ./conftest.py


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")  # the dataset feature net trains once


def _config(data: Path, cache: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), preset="tiny", image_size=16, T=50, batch_size=4, epochs=20, save_frequency=1000,
                samples=1, sample_steps=2, log_every=1, amp="off", workers=1, cache_dir=str(cache),
                eval_every=2, eval_n=8)
    base.update(kw)
    return TrainConfig(**base)


def _evals(run: Path, metric: str) -> list[tuple[int, float]]:
    return [(r["step"], r["value"]) for r in eval_log.read_eval(run)[0] if r["metric"] == metric]


def _best_step(run: Path) -> int:
    return load_checkpoint(checkpoints_dir(run) / "best.pt")["step"]


def test_stop_when_flat_ends_a_run_that_no_longer_improves(demo, cache, tmp_path):
    """A learning rate too small to move the weights: every KID is the first one within its
    noise, so the run ends after 2 evaluations without a significant improvement (the third)."""
    run = tmp_path / "flat"
    final = train(_config(demo, cache, lr=1e-9, stop_when_flat=2), run)
    assert final["state"] == "finished", final
    assert final["message"].startswith("stop rule --stop-when-flat 2: 2 evaluations without"), final["message"]
    kids = _evals(run, "kid")
    assert [s for s, _ in kids] == [2, 4, 6] and final["step"] == 6
    assert _best_step(run) == min(kids, key=lambda sv: sv[1])[0]
    assert load_checkpoint(checkpoints_dir(run) / "last.pt")["step"] == 6


def test_stop_at_kid_and_at_fid_end_the_run_at_the_first_evaluation_under_the_limit(demo, cache, tmp_path):
    for flag, metric in (("stop_at_kid", "kid"), ("stop_at_fid", "fid")):
        run = tmp_path / metric
        final = train(_config(demo, cache, **{flag: 1e9}), run)
        assert final["state"] == "finished" and final["step"] == 2, final
        value = _evals(run, metric)[0][1]
        assert final["message"].startswith(f"stop rule --stop-at-{metric} 1e+09: {metric.upper()} {value:.4g} "
                                           "at step 2"), final["message"]
        assert _best_step(run) == 2


def test_best_pt_follows_the_lowest_fid_when_fid_is_the_only_rule(demo, cache, tmp_path):
    """The learning demo run of test_eval_during_training (FID falls every evaluation), with an
    FID limit it never reaches: best.pt is rewritten at each better evaluation, ends at the lowest."""
    run = tmp_path / "fid"
    config = _config(demo, cache, T=100, schedule="cosine", batch_size=10, epochs=2, lr=2e-3, ema_decay=0.9,
                     sample_steps=10, log_every=10, eval_every=2, eval_n=20, stop_at_fid=1e-9)
    assert train(config, run)["state"] == "finished"
    fids = _evals(run, "fid")
    assert len(fids) == 2 and _best_step(run) == min(fids, key=lambda sv: sv[1])[0]


def test_a_stop_rule_without_eval_every_is_refused_in_one_line(demo, cache, tmp_path):
    with pytest.raises(TrainError) as info:
        train(_config(demo, cache, eval_every=0, stop_when_flat=3, stop_at_kid=0.1), tmp_path / "refused")
    message = str(info.value)
    assert "\n" not in message and "--stop-when-flat, --stop-at-kid" in message and "--eval-every" in message
    assert not (tmp_path / "refused").exists()
