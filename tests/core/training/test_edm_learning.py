"""EDM learns: the tiny UNet, unchanged, trained through EDM's preconditioning on four 16x16
images, with the edm recipe's optimiser (AdamW, warm-up, grad clip 1) but a larger learning
rate for a test of seconds. The loss is measured on one fixed set of (image, sigma, noise)
triples before and after (sigma log-normal as in training), so the comparison does not
depend on which noise levels a batch drew. Measured: EDM loss 1.66 -> 0.38 over 150 steps
(about 10 s on one thread); the check asks for a fall of 3x, and Heun samples of the
trained network must land near the images.

Then, through core.training.train with recipe edm: the run's process is EDM and a run that
stopped resumes (the CLI test tests/ddpm_tui/test_cli_edm.py runs the whole CLI path)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.diffusion.edm import EDM
from core.diffusion.edm_samplers import iter_heun
from core.diffusion.samplers import run_to_end
from core.diffusion.unet import UNet, get_preset
from core.training.options import RECIPES, recipe_defaults
from core.training.runs import read_config, read_status
from core.training.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SIZE, STEPS, BATCH = 16, 150, 16


def _images() -> torch.Tensor:
    """Four images, one colour pair and one shape each."""
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    masks = [yy < 8, xx < 8, yy > xx, (yy - 7.5).abs() + (xx - 7.5).abs() < 6]
    colours = [(1.0, -1.0, -0.5), (-1.0, 1.0, -0.5), (-0.5, -1.0, 1.0), (0.8, 0.8, 0.8)]
    out = [torch.where(m, torch.tensor(c).view(3, 1, 1), -torch.tensor(c).view(3, 1, 1) * 0.3)
           for m, c in zip(masks, colours)]
    return torch.stack(out)


def _fixed_loss(model, edm: EDM, images: torch.Tensor, drawn) -> float:
    model.eval()
    with torch.no_grad():
        loss = edm.training_loss(model, images, drawn=drawn).item()
    model.train()
    return loss


def test_edm_loss_falls_on_a_tiny_network() -> None:
    torch.manual_seed(0)
    recipe = RECIPES["edm"]
    model = UNet(get_preset("tiny", image_size=SIZE))
    edm = EDM()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=recipe["weight_decay"])
    images = _images()
    probe = images.repeat(16, 1, 1, 1)
    drawn = edm.draw_training_noise(probe, torch.Generator().manual_seed(1))
    before = _fixed_loss(model, edm, probe, drawn)
    gen = torch.Generator().manual_seed(2)
    for step in range(STEPS):
        for group in opt.param_groups:
            group["lr"] = 2e-3 * min(1.0, (step + 1) / 20)
        x0 = images[torch.randint(0, 4, (BATCH,), generator=gen)]
        loss = edm.training_loss(model, x0, generator=gen)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe["grad_clip"])
        opt.step()
    after = _fixed_loss(model, edm, probe, drawn)
    assert after < before / 3, (before, after)
    # Heun-18 samples of the trained network land near the images: measured 6 of 16 within half
    # the blur baseline (the images' mean squared distance to their average), all 4 images hit.
    model.eval()
    x = run_to_end(iter_heun(model, edm, (16, 3, SIZE, SIZE), steps=18, seed=1))
    dist = ((x[:, None] - images[None]) ** 2).mean(dim=(2, 3, 4))
    blur = ((images - images.mean(0, keepdim=True)) ** 2).mean().item()
    assert (dist.min(1).values < blur / 2).sum() >= 4 and len(set(dist.argmin(1).tolist())) >= 3


def test_recipe_edm_run_trains_edm_and_resumes(tmp_path: Path) -> None:
    from core.data.demo import make_demo_dataset

    data = tmp_path / "data"
    make_demo_dataset(data, per_class=2, size=16, seed=0)
    values = {**recipe_defaults("edm"), "data": str(data), "preset": "tiny", "image_size": 16, "batch_size": 4,
              "samples": 0, "log_every": 1, "amp": "off", "workers": 1, "max_steps": 3,
              "cache_dir": str(tmp_path / "cache")}
    run = tmp_path / "run"
    assert train(TrainConfig(**values), run)["state"] == "finished"
    assert read_config(run)["diffusion"] == {**EDM().config.to_dict()}
    assert train(TrainConfig(**{**values, "max_steps": 6}), run)["state"] == "finished"
    assert read_status(run)["step"] == 6
