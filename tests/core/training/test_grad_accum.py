"""--grad-accum: a step over N micro-batches is the step over the whole batch (same random
draws, gradients weighted by each micro-batch's share), and resume stays exact."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from core.diffusion.checkpoint import load_checkpoint
from core.training import runs
from core.training.build import micro_batches
from core.training.options import recipe_defaults
from core.training.train import TrainConfig, train

sys.path.insert(0, str(Path(__file__).parent))
from test_train import assert_bitwise_equal, make_dataset, tiny  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# The fast recipe's optimisation (v prediction, min-SNR, AdamW, warm-up, clipping at 1.0, EMA):
# what --grad-accum must reproduce, clipping of the summed gradient included.
FAST = {k: v for k, v in recipe_defaults("fast").items()
        if k in ("prediction", "schedule", "loss_weighting", "optimizer", "lr_warmup", "lr", "grad_clip",
                 "ema_decay", "ema_warmup")}


def test_micro_batches_cover_the_batch_once():
    assert micro_batches(256, 4) == [slice(0, 64), slice(64, 128), slice(128, 192), slice(192, 256)]
    assert micro_batches(8, 1) == [slice(0, 8)]
    assert micro_batches(10, 4) == [slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 10)]
    assert micro_batches(2, 4) == [slice(0, 1), slice(1, 2)]  # an epoch's short last batch


def test_accumulated_steps_equal_one_big_batch(tmp_path: Path):
    # 20 images, batch 8: the epoch ends on a batch of 4, split unevenly under --grad-accum 3.
    data = make_dataset(tmp_path / "dogs", per_breed=10)
    config = dict(batch_size=8, epochs=2, samples=0, conditional=True, **FAST)
    train(tiny(data, **config), tmp_path / "big")
    train(tiny(data, grad_accum=3, **config), tmp_path / "accum")
    big = load_checkpoint(tmp_path / "big" / "checkpoints" / "last.pt")
    accum = load_checkpoint(tmp_path / "accum" / "checkpoints" / "last.pt")
    assert big["step"] == accum["step"] == 6  # optimizer steps count whole batches
    assert big["extra"]["images_seen"] == accum["extra"]["images_seen"] == 40
    differs = 0
    for which in ("model", "ema"):
        a = big[which] if which == "model" else big[which]["shadow"]
        b = accum[which] if which == "model" else accum[which]["shadow"]
        for name in a:
            torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=2e-5, msg=f"{which} {name}")
            differs += not torch.equal(a[name], b[name])
    assert differs, "bit-identical: the micro-batches were not taken at all"
    # The learning-rate schedule (warm-up here) runs per optimizer step, and the logged loss is
    # the whole batch's mean (Adam hides a gradient off by a constant factor; the loss does not).
    lines = [runs.read_metrics(tmp_path / name)[0] for name in ("big", "accum")]
    assert [r["lr"] for r in lines[0]] == [r["lr"] for r in lines[1]] and len(lines[0]) == 6
    torch.testing.assert_close([r["loss"] for r in lines[1]], [r["loss"] for r in lines[0]], rtol=1e-4, atol=1e-6)


def test_resume_with_grad_accum_is_exact(tmp_path: Path):
    data = make_dataset(tmp_path / "dogs")
    config = dict(batch_size=4, grad_accum=2, samples=0, **FAST)
    train(tiny(data, epochs=2, **config), tmp_path / "once")
    train(tiny(data, epochs=1, **config), tmp_path / "twice")
    train(tiny(data, epochs=2, **config), tmp_path / "twice")
    once = load_checkpoint(tmp_path / "once" / "checkpoints" / "last.pt")
    twice = load_checkpoint(tmp_path / "twice" / "checkpoints" / "last.pt")
    for key in ("model", "ema", "optimizer"):
        assert_bitwise_equal(once[key], twice[key], key)


def test_grad_accum_larger_than_the_batch_is_refused():
    with pytest.raises(ValueError, match="grad_accum 8 is more than batch_size 4"):
        TrainConfig(data="/d", preset="tiny", batch_size=4, grad_accum=8).validate()
