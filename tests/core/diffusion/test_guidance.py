"""Class labels and classifier-free guidance in the samplers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.diffusion.process import Diffusion, DiffusionConfig
from core.diffusion.samplers import ddim_sample, ddpm_sample, iter_ddim

NUM_CLASSES = 3


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class LabelRecorder(nn.Module):
    """A class-conditional stub: eps depends on the label; records every call."""

    null_label = NUM_CLASSES

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor | None] = []
        self.batch_sizes: list[int] = []

    def eps(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return 0.1 * x + 0.2 * (labels.float() - 1.5).reshape(-1, 1, 1, 1)

    def forward(self, x, t, labels=None):
        self.seen.append(None if labels is None else labels.clone())
        self.batch_sizes.append(x.shape[0])
        lab = labels if labels is not None else torch.full((x.shape[0],), self.null_label)
        return self.eps(x, lab)


D = Diffusion(DiffusionConfig(T=20))
SHAPE = (4, 1, 4, 4)
LABELS = torch.tensor([0, 1, 2, 1])


def test_labels_none_runs_unconditional_only() -> None:
    model = LabelRecorder()
    ddim_sample(model, D, SHAPE, steps=5, seed=0, guidance=4.0)  # guidance ignored without labels
    assert model.seen == [None] * 5 and model.batch_sizes == [4] * 5


def test_labels_with_guidance_one_runs_conditional_only() -> None:
    model = LabelRecorder()
    ddpm_sample(model, D, SHAPE, seed=0, labels=LABELS, guidance=1.0)
    assert len(model.seen) == 20 and model.batch_sizes == [4] * 20
    assert all(torch.equal(s, LABELS) for s in model.seen)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_guidance_batches_conditional_and_null_in_one_forward(sampler: str) -> None:
    model = LabelRecorder()
    if sampler == "ddpm":
        ddpm_sample(model, D, SHAPE, seed=0, labels=LABELS, guidance=3.0)
        n = 20
    else:
        ddim_sample(model, D, SHAPE, steps=6, seed=0, labels=LABELS, guidance=3.0)
        n = 6
    expected = torch.cat([LABELS, torch.full((4,), NUM_CLASSES)])
    assert model.batch_sizes == [8] * n  # one 2B forward per step, not two B forwards
    assert all(torch.equal(s, expected) for s in model.seen)


@pytest.mark.parametrize("g", [0.0, 1.0, 2.5, 7.0])
def test_guided_eps_is_uncond_plus_g_times_difference(g: float) -> None:
    """One DDIM step outputs x0 = (x_T - sqrt(1 - ab) eps) / sqrt(ab): check eps exactly."""
    model = LabelRecorder()
    x = ddim_sample(model, D, SHAPE, steps=1, seed=3, labels=LABELS, guidance=g, clip_x0=False)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    cond = model.eps(x_T, LABELS)
    uncond = model.eps(x_T, torch.full((4,), NUM_CLASSES))
    eps = uncond + g * (cond - uncond)
    ab = D.alpha_bars[-1].double()
    expected = (x_T.double() - (1 - ab).sqrt() * eps.double()) / ab.sqrt()
    assert torch.allclose(x.double(), expected, rtol=1e-5, atol=1e-5)


def test_outputs_differ_between_paths() -> None:
    model = LabelRecorder()
    kw = dict(steps=5, seed=0, clip_x0=False)
    uncond = ddim_sample(model, D, SHAPE, **kw)
    cond = ddim_sample(model, D, SHAPE, labels=LABELS, **kw)
    guided = ddim_sample(model, D, SHAPE, labels=LABELS, guidance=3.0, **kw)
    assert not torch.allclose(uncond, cond) and not torch.allclose(cond, guided)
    # labels equal to the null label everywhere would reproduce the unconditional path; real ones don't
    assert not torch.allclose(uncond, guided)


def test_int_label_broadcasts_and_bad_labels_are_named() -> None:
    model = LabelRecorder()
    ddim_sample(model, D, SHAPE, steps=2, seed=0, labels=2)
    assert torch.equal(model.seen[0], torch.full((4,), 2))
    with pytest.raises(ValueError, match=r"label 3 is out of range; the model knows classes 0\.\.2"):
        ddim_sample(model, D, SHAPE, steps=2, labels=[0, 1, 3, 0])
    with pytest.raises(ValueError, match=r"labels must be an int or have shape \(4,\)"):
        ddim_sample(model, D, SHAPE, steps=2, labels=[0, 1])
    with pytest.raises(ValueError, match="guidance must be a finite number"):
        ddim_sample(model, D, SHAPE, steps=2, labels=LABELS, guidance=float("nan"))


def test_tiny_conditional_unet_both_ways() -> None:
    unet_mod = pytest.importorskip("core.diffusion.unet")
    torch.manual_seed(0)
    model = unet_mod.UNet(unet_mod.get_preset("tiny", image_size=16, num_classes=NUM_CLASSES))
    # a fresh label embedding is random, so the conditional path already differs from the null one
    batches: list[int] = []
    model.register_forward_hook(lambda m, i, o: batches.append(i[0].shape[0]))
    shape = (2, 3, 16, 16)
    labels = torch.tensor([0, 2])
    uncond = ddim_sample(model, D, shape, steps=3, seed=1, clip_x0=False)
    guided = ddim_sample(model, D, shape, steps=3, seed=1, labels=labels, guidance=3.0, clip_x0=False)
    assert batches == [2] * 3 + [4] * 3
    assert torch.isfinite(uncond).all() and torch.isfinite(guided).all()
    assert not torch.allclose(uncond, guided, atol=1e-4)
    # the UNet's null label is what labels=None means: the guided unconditional half is the same call
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([5, 5])
    with torch.no_grad():
        assert torch.allclose(model(x, t, None), model(x, t, torch.full((2,), model.null_label)))
    # progress works through guidance too
    steps = list(iter_ddim(model, D, shape, steps=3, seed=1, labels=labels, guidance=3.0, clip_x0=False))
    assert torch.equal(steps[-1].x_t, guided)
