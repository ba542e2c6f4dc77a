"""A run written before the classic preset and recipe were renamed (they were "seed") loads
and resumes bit-exactly: tests/ddpm_tui/old_run_d1622b1/ was written by main at d1622b1 with
`--recipe seed --preset seed` and resumed there for 2 more steps (make_fixture.py says how);
resuming it here must give the same weights."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from core.diffusion import unet_config
from core.diffusion.checkpoint import load_checkpoint
from core.training import runs
from core.training.train import weights_digest
from ddpm_tui.cli import main

FIXTURE = Path(__file__).resolve().parent / "old_run_d1622b1"

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py (the fixture was made on 1 thread)


def _maker():
    spec = importlib.util.spec_from_file_location("make_old_run_fixture", FIXTURE / "make_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def old_run(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """A workspace holding the old run and the demo images it trained on."""
    maker = _maker()
    # The fixture's network: the old "seed" preset narrowed the same way when it was made.
    monkeypatch.setitem(unet_config.PRESETS, "classic", unet_config.UNetConfig(preset="classic", **maker.TEST_NETWORK))
    ws = tmp_path / "ws"
    assert main(["--workspace", str(ws), "data", "demo", "--per-class", "4"]) == 0
    run = ws / "runs" / "old"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("config.json", "status.json", "metrics.jsonl", "checkpoints/last.pt"):
        shutil.copy(FIXTURE / name, run / name)
    return ws, run


def test_the_fixture_is_an_old_run_that_says_seed():
    config = json.loads((FIXTURE / "config.json").read_text())
    assert (config["recipe"], config["preset"], config["model"]["preset"]) == ("seed", "seed", "seed")
    assert load_checkpoint(FIXTURE / "checkpoints" / "last.pt")["model_config"]["preset"] == "seed"
    assert (FIXTURE / "checkpoints" / "last.pt").stat().st_size < 1_500_000


@pytest.mark.parametrize("model_args", [
    ["--recipe", "seed", "--preset", "seed"],  # as old main was given them when the fixture was made
    ["--recipe", "classic", "--preset", "classic"],  # today's names
    [],  # the run's own
])
def test_old_run_saying_seed_resumes_bit_exactly(old_run, model_args, capsys):
    ws, run = old_run
    maker = _maker()
    args = [a for a in maker.ARGS if a not in ("--recipe", "--preset", "seed")] + model_args
    assert main(["--workspace", str(ws), "train", "--run", "old", "--resume", "--data", str(ws / "data" / "demo"),
                 "--max-steps", str(maker.RESUMED_STEPS), *args]) == 0, capsys.readouterr().err
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    expected = json.loads((FIXTURE / "expected_after_resume.json").read_text())
    assert ckpt["step"] == expected["step"] == maker.RESUMED_STEPS
    assert weights_digest(ckpt["model"]) == expected["model"]
    assert weights_digest(ckpt["ema"]["shadow"]) == expected["ema"]
    # The resumed run is written in today's names (the same network and training).
    config = runs.read_config(run)
    assert (config["recipe"], config["preset"], ckpt["model_config"]["preset"]) == ("classic", "classic", "classic")
    assert runs.read_status(run)["state"] == "finished"
