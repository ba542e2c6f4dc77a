"""--eval-every: the evaluation judges the EMA weights, leaves the training itself (weights,
optimizer, random streams) bit for bit as it would be without it, and its FID falls as the
model learns the demo set."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch

from core.diffusion.checkpoint import load_checkpoint
from core.quality import eval_log, evaluate
from core.training.runs import checkpoints_dir, read_metrics
from core.training.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread", "no_inception")  # tests/conftest.py, ./conftest.py


@contextlib.contextmanager
def _one_thread():
    """tests/conftest.py's one_thread for module fixtures (which run before it is set up)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _config(data: Path, cache: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), preset="tiny", image_size=16, T=50, batch_size=4, epochs=2, save_frequency=1,
                samples=2, sample_steps=2, log_every=1, amp="off", workers=1, cache_dir=str(cache))
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One cache for the module: the dataset feature net trains once (about 3 s)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def twin_runs(demo, cache, tmp_path_factory):
    """The same 10-step run twice, with an evaluation every 5 steps and without."""
    base = tmp_path_factory.mktemp("twins")
    plain = base / "plain"
    judged = base / "judged"
    with _one_thread():
        assert train(_config(demo, cache), plain)["state"] == "finished"
        assert train(_config(demo, cache, eval_every=5, eval_n=8), judged)["state"] == "finished"
    return plain, judged, cache


def _last(run_dir: Path) -> dict:
    return load_checkpoint(checkpoints_dir(run_dir) / "last.pt")


def _assert_same_tensors(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_an_evaluation_leaves_training_bit_for_bit_as_it_was(twin_runs):
    plain, judged, _ = twin_runs
    fids = [r for r in eval_log.read_eval(judged)[0] if r["metric"] == "fid"]
    assert [r["step"] for r in fids] == [5, 10] and not eval_log.read_eval(plain)[0]
    a, b = _last(plain), _last(judged)
    assert a["step"] == b["step"] == 10
    for part in ("model", "ema", "optimizer", "rng"):
        _assert_same_tensors(a[part], b[part], part)
    losses = [[r["loss"] for r in read_metrics(run)[0] if "loss" in r] for run in (plain, judged)]
    assert losses[0] == losses[1] and len(losses[0]) == 10


def test_the_evaluation_scores_the_ema_weights(twin_runs, demo):
    """The FID recorded at step 10 is the final EMA weights' FID (the same settings again,
    from last.pt), not the raw weights' (visibly different after 10 steps at decay 0.995)."""
    _, judged, cache = twin_runs
    (recorded,) = [r["value"] for r in eval_log.read_eval(judged)[0] if r["metric"] == "fid" and r["step"] == 10]
    ckpt = checkpoints_dir(judged) / "last.pt"
    again = {weights: evaluate.evaluate_checkpoint(
        ckpt, run_dir=None, run_config={"data": str(demo)},
        settings=evaluate.EvalSettings(n=8, steps=2, weights=weights), features="dataset",
        cache_dir=cache, amp="off").values["fid"] for weights in ("ema", "raw")}
    assert abs(again["ema"] - again["raw"]) > 0.05 * again["ema"], again
    assert recorded == pytest.approx(again["ema"], rel=1e-6), (recorded, again)


def test_fid_falls_as_the_model_learns_the_demo_set(demo, cache, tmp_path):
    """The cheapest honest setting found (about 4 s of training and evaluation on one CPU
    thread, plus the shared feature net): 20 demo images, 40 steps at lr 2e-3, EMA decay
    0.9, FID of 20 ten-step DDIM samples every 10 steps. Seen: 677, 540, 387, 237."""
    config = _config(demo, cache, T=100, schedule="cosine", batch_size=10, epochs=20, lr=2e-3, ema_decay=0.9,
                     save_frequency=1000, samples=1, sample_steps=10, log_every=10, eval_every=10, eval_n=20)
    assert train(config, tmp_path / "run")["state"] == "finished"
    fids = [r["value"] for r in eval_log.read_eval(tmp_path / "run")[0] if r["metric"] == "fid"]
    assert len(fids) == 4
    assert fids == sorted(fids, reverse=True), fids  # every evaluation better than the one before
    assert fids[-1] < 0.5 * fids[0], fids
