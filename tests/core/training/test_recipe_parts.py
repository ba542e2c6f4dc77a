"""The fast recipe's optimiser parts, each shown to act inside the trainer (not only to be
accepted as options): --grad-clip bounds the gradient the optimiser steps with, AdamW's
--weight-decay shrinks a weight whose gradient is zero, and --ema-warmup gives the EMA the
decay schedule core/diffusion/ema.py documents."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import core.training.build as build_mod
from core.diffusion.ema import EMA
from core.training.train import train

sys.path.insert(0, str(Path(__file__).parent))
from test_train import make_dataset, tiny  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "dogs")


def hooked_optimizer(monkeypatch, pre=None, post=None) -> None:
    """The trainer's own optimizer, with step hooks that see the parameters' gradients just
    before each step (after clipping) and the weights just after."""
    real = build_mod.make_optimizer

    def make(config, model, device):
        opt = real(config, model, device)
        params = [p for group in opt.param_groups for p in group["params"]]
        if pre:
            opt.register_step_pre_hook(lambda o, args, kwargs: pre(o, params))
        if post:
            opt.register_step_post_hook(lambda o, args, kwargs: post(o, params))
        return opt

    monkeypatch.setattr(build_mod, "make_optimizer", make)


def grad_norm(params) -> float:
    return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])).item()


def test_grad_clip_bounds_the_gradient_the_optimizer_steps_with(tmp_path: Path, data: Path, monkeypatch):
    norms: list[float] = []
    hooked_optimizer(monkeypatch, pre=lambda opt, params: norms.append(grad_norm(params)))
    train(tiny(data, epochs=1, samples=0, optimizer="adamw"), tmp_path / "free")
    free = list(norms)
    bound = min(free) / 4  # below every unclipped step's norm: every step must be clipped
    norms.clear()
    train(tiny(data, epochs=1, samples=0, optimizer="adamw", grad_clip=bound), tmp_path / "clipped")
    assert len(free) == len(norms) == 4
    assert all(n <= bound * (1 + 1e-4) for n in norms), (bound, norms)
    assert all(n >= bound * 0.99 for n in norms), (bound, norms)  # clipped to the bound, not zeroed


def test_weight_decay_shrinks_a_weight_whose_gradient_is_zero(tmp_path: Path, data: Path, monkeypatch):
    """AdamW's decoupled decay: with a zero gradient (and so zero moments) the only change to
    a weight is w <- w * (1 - lr * weight_decay), at every step."""
    seen: list[tuple[torch.Tensor, torch.Tensor, float]] = []
    before: dict[str, torch.Tensor] = {}

    def zero_and_remember(opt, params):
        p = params[0]
        p.grad = torch.zeros_like(p)
        before["w"] = p.detach().clone()

    def after(opt, params):
        seen.append((before["w"], params[0].detach().clone(), opt.param_groups[0]["lr"]))

    hooked_optimizer(monkeypatch, pre=zero_and_remember, post=after)
    wd = 0.5
    train(tiny(data, epochs=1, samples=0, optimizer="adamw", weight_decay=wd, lr=1e-2), tmp_path / "decay")
    assert len(seen) == 4
    for w0, w1, lr in seen:
        assert w0.abs().sum() > 0
        torch.testing.assert_close(w1, w0 * (1 - lr * wd), rtol=1e-6, atol=1e-9)
    seen.clear()
    train(tiny(data, epochs=1, samples=0, optimizer="adamw", weight_decay=0.0, lr=1e-2), tmp_path / "none")
    assert all(torch.equal(w0, w1) for w0, w1, _ in seen)  # no decay: a zero gradient moves nothing


class _RecordingEMA(EMA):
    """The trainer's EMA, recording one parameter's average and source around each update."""

    log: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def update(self, model, active=None):
        name, p = next(iter(model.named_parameters()))
        n, shadow = self.num_updates, self.shadow[name].clone()
        super().update(model, active)
        self.log.append((n, shadow, p.detach().float().clone(), self.shadow[name].clone()))


@pytest.mark.parametrize("warmup", [0, 10])
def test_ema_warmup_gives_the_documented_decay_schedule(tmp_path: Path, data: Path, monkeypatch, warmup: int):
    """shadow <- d * shadow + (1 - d) * weight with d = min(decay, (1 + n) / (W + n)) after the
    n-th update (W = --ema-warmup; d = decay without it): early, random weights are forgotten."""
    _RecordingEMA.log = []
    monkeypatch.setattr(build_mod, "EMA", _RecordingEMA)
    decay = 0.999
    train(tiny(data, epochs=1, samples=0, ema_decay=decay, ema_warmup=warmup), tmp_path / "run")
    assert [n for n, *_ in _RecordingEMA.log] == [0, 1, 2, 3]
    for n, shadow, weight, updated in _RecordingEMA.log:
        d = min(decay, (1 + n) / (warmup + n)) if warmup else decay
        torch.testing.assert_close(updated, d * shadow + (1 - d) * weight, rtol=1e-5, atol=1e-7)
    n, shadow, weight, updated = _RecordingEMA.log[0]
    moved = (updated - shadow).abs().max() / (weight - shadow).abs().max()
    assert moved == pytest.approx(0.9 if warmup else 0.001, rel=2e-2)  # first update: 1 - 1/10, or 1 - decay
