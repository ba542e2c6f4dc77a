"""`--recipe edm` end to end as a user runs it: train (grids, an evaluation while training,
examples), sample with each EDM sampler, eval, export, runs, resume; the one-line
refusals (VP-only options given with edm, ddpm and eta > 0 on an EDM model); and the
studio's Sample screen drawing from an EDM checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from core.diffusion.checkpoint import load_checkpoint
from core.training import runs
from ddpm_tui.cli import main
from studio_helpers import fill_sample_form, make_app, make_checkpoint_run, run_async, text_of, wait_for

TINY = ["--preset", "tiny", "--image-size", "16", "--batch-size", "4", "--samples", "2",
        "--sample-steps", "2", "--log-every", "1", "--amp", "off", "--workers", "1"]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def ws(tmp_path: Path, monkeypatch) -> Path:
    from core.data.demo import make_demo_dataset

    make_demo_dataset(tmp_path / "data" / "dogs", per_class=2, size=16, seed=0)  # 5 breeds, 10 images
    before = torch.hub.get_dir()  # an empty hub: evaluations use the dataset feature net
    torch.hub.set_dir(str(tmp_path / "empty-hub"))
    yield tmp_path
    torch.hub.set_dir(before)


def cli(ws: Path, *args: str) -> int:
    return main(["--workspace", str(ws), *args])


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_edm_train_sample_eval_export_resume(ws: Path, capsys):
    assert cli(ws, "train", "--run", "e", "--recipe", "edm", *TINY, "--epochs", "2", "--save_frequency", "1",
               "--eval-every", "5", "--eval-n", "4", "--examples", "--quiet") == 0
    run = ws / "runs" / "e"
    config = runs.read_config(run)
    assert config["formulation"] == "edm" and config["diffusion"]["kind"] == "edm"
    assert config["optimizer"] == "adamw" and config["grad_clip"] == 1.0 and config["ema_decay"] == 0.999
    assert load_checkpoint(run / "checkpoints" / "last.pt")["diffusion_config"]["sigma_data"] == 0.5
    for rel in ("samples/ema_epoch_0002.png", "forward_diffusion.png", "eval.jsonl"):
        assert (run / rel).is_file(), rel
    capsys.readouterr()

    for sampler in ("heun", "ddim", "dpmpp2m"):
        assert cli(ws, "sample", "e", "--sampler", sampler, "--n", "2", "--steps", "3", "--quiet") == 0
        (path,) = capsys.readouterr().out.split()
        assert f"{sampler}3" in path and Image.open(path).size[1] >= 16
    assert cli(ws, "sample", "e", "--sampler", "ddpm", "--n", "1", "--quiet") == 2
    err = one_line(capsys)
    assert "EDM model" in err and "ddim or dpmpp2m or heun" in err
    assert cli(ws, "sample", "e", "--sampler", "ddim", "--eta", "0.5", "--n", "1", "--quiet") == 2
    assert "eta must be 0" in one_line(capsys)

    assert cli(ws, "eval", "e", "--n", "4", "--steps", "2", "--features", "dataset", "--device", "cpu", "--json") == 0
    assert json.loads(capsys.readouterr().out)["fid"] >= 0
    assert cli(ws, "export", "e", "--out", str(ws / "e.safetensors")) == 0
    capsys.readouterr()
    assert cli(ws, "sample", str(ws / "e.safetensors"), "--sampler", "heun", "--n", "1", "--steps", "2",
               "--quiet") == 0
    capsys.readouterr()
    assert cli(ws, "runs", "--json") == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == ["e"]

    step = runs.read_status(run)["step"]
    assert cli(ws, "train", "--run", "e", "--resume", "--epochs", "3", "--quiet") == 0
    assert runs.read_status(run)["step"] > step and runs.read_config(run)["formulation"] == "edm"


@pytest.mark.parametrize("extra,named", [(["--schedule", "cosine"], "schedule cosine"),
                                         (["--recipe", "fast", "--formulation", "edm"], "prediction v")])
def test_vp_only_options_with_edm_are_refused_in_one_line(ws: Path, capsys, extra, named):
    args = ["--recipe", "edm", *extra] if extra[0] != "--recipe" else extra
    assert cli(ws, "train", "--run", "x", *args, *TINY, "--epochs", "1", "--quiet") == 2
    err = one_line(capsys)
    assert named in err and "formulation edm" in err
    assert not (ws / "runs" / "x" / "checkpoints").exists()


def test_studio_sample_screen_draws_an_edm_run(workspace):
    from textual.widgets import Static

    make_checkpoint_run(workspace, "edm-run", image_size=16, edm=True)

    async def go():
        app = make_app(workspace, start_mode="sample")
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            await fill_sample_form(app, pilot, sampler="heun", steps="3", count="2", seed="3")
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: screen._result is not None, 120, "the samples")
            assert screen._result.images.shape == (2, 16, 16, 3)
            await fill_sample_form(app, pilot, sampler="ddpm", count="1")
            screen._result = None
            await pilot.press("ctrl+r")
            status = screen.query_one("#sample-status", Static)
            await wait_for(pilot, lambda: "EDM model" in text_of(status), 60, "the refusal")

    run_async(go())
