"""train --init-from: a new run starts from another run's weights (EMA by default), refuses
another network in one line, matches a conditional run's breeds by name, and records its
source in config.json; the CLI refuses it on an existing run."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from core.diffusion.checkpoint import load_checkpoint
from core.training import runs
from core.training.init_from import LABEL_EMBEDDING
from core.training.train import TrainError, train

sys.path.insert(0, str(Path(__file__).parent))
from test_train import make_dataset, tiny  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A finished conditional tiny run on beagle and pug."""
    root = tmp_path_factory.mktemp("init")
    data = make_dataset(root / "dogs")
    train(tiny(data, conditional=True, epochs=1, samples=0), root / "runs" / "src")
    return root / "runs" / "src"


def first_weights(run: Path) -> dict:
    """The new run's weights before its first step: its EMA with decay 1 never moves."""
    return load_checkpoint(run / "checkpoints" / runs.LAST_CHECKPOINT)["ema"]["shadow"]


def test_a_new_run_starts_from_the_ema_weights_and_matches_breeds_by_name(source: Path, tmp_path: Path):
    data = make_dataset(tmp_path / "dogs", breeds=("husky", "pug"))
    run = tmp_path / "runs" / "new"
    train(tiny(data, conditional=True, epochs=1, samples=0, ema_decay=1.0, init_from=str(source)), run)
    src = load_checkpoint(source / "checkpoints" / runs.LAST_CHECKPOINT)
    got = first_weights(run)
    for name, weight in src["ema"]["shadow"].items():
        if name != LABEL_EMBEDDING:
            assert torch.equal(got[name], weight), name  # EMA, not raw, weights
    old, new = src["ema"]["shadow"][LABEL_EMBEDDING], got[LABEL_EMBEDDING]
    assert torch.equal(new[1], old[1])  # pug: row 1 in both runs keeps its embedding
    assert not any(torch.equal(new[0], old[i]) for i in range(3))  # husky: fresh
    assert torch.equal(new[2], old[2])  # "no label" (guidance)
    config = runs.read_config(run)
    assert config["init_from"] == str(source)  # as given (the CLI gives the checkpoint file)
    assert config["initialized_from"] == {"path": str((source / "checkpoints" / "last.pt").resolve()), "weights": "ema", "step": src["step"],
                                          "kept_classes": ["pug"], "new_classes": ["husky"]}
    log = (run / runs.LOG_FILE).read_text()
    assert "breeds keeping their embedding: pug; new breeds (fresh embedding): husky" in log
    # A later session of the new run continues from its own checkpoint and keeps the record.
    train(tiny(data, conditional=True, epochs=2, samples=0, ema_decay=1.0, init_from=str(source)), run)
    assert runs.read_config(run)["initialized_from"] == config["initialized_from"]


def test_raw_weights_on_request(source: Path, tmp_path: Path):
    data = make_dataset(tmp_path / "dogs")
    run = tmp_path / "runs" / "raw"
    train(tiny(data, conditional=True, epochs=1, samples=0, ema_decay=1.0, init_from=str(source),
               init_from_raw=True), run)
    src = load_checkpoint(source / "checkpoints" / runs.LAST_CHECKPOINT)
    assert all(torch.equal(first_weights(run)[k], src["model"][k]) for k in src["ema"]["shadow"])
    assert runs.read_config(run)["initialized_from"]["weights"] == "raw"


@pytest.mark.parametrize("change, says", [
    ({"preset": "res-tiny"}, "preset: checkpoint 'tiny' vs expected 'res-tiny'"),
    ({"image_size": 32}, "image_size: checkpoint 16 vs expected 32"),
    ({"conditional": False}, "is conditional and this run is unconditional"),
])
def test_another_network_is_refused_in_one_line(source: Path, tmp_path: Path, change, says):
    data = make_dataset(tmp_path / "dogs")
    config = tiny(data, **{"conditional": True, "init_from": str(source), **change})
    with pytest.raises(TrainError) as exc:
        train(config, tmp_path / "runs" / "other")
    text = str(exc.value)
    assert text.startswith("--init-from: ") and says in text and "\n" not in text
    assert not (tmp_path / "runs" / "other").exists()  # refused before anything is written


def test_the_cli_resolves_run_names_and_refuses_an_existing_run(source: Path, tmp_path: Path, capsys):
    from ddpm_tui.cli import main

    workspace = tmp_path / "ws"
    shutil.copytree(source, workspace / "runs" / "src")
    data = make_dataset(tmp_path / "dogs")
    common = ["--workspace", str(workspace), "train", "--data", str(data), "--preset", "tiny", "--image-size",
              "16", "--T", "50", "--batch_size", "4", "--epochs", "1", "--samples", "0", "--amp", "off",
              "--conditional", "--quiet"]
    assert main([*common, "--run", "new", "--init-from", "src"]) == 0
    assert runs.read_config(workspace / "runs" / "new")["init_from"] == str(
        (workspace / "runs" / "src" / "checkpoints" / "last.pt").resolve())
    capsys.readouterr()
    assert main([*common, "--run", "new", "--init-from", "src"]) != 0
    assert "--init-from starts a new run, and run 'new' exists" in capsys.readouterr().err
    assert main([*common, "--run", "newer", "--init-from", "nowhere"]) != 0
    assert "--init-from nowhere: no such checkpoint file, run folder or run in" in capsys.readouterr().err


def test_the_cli_takes_the_sources_network_when_none_is_given(source: Path, tmp_path: Path):
    """`--init-from RUN` alone continues the source's network (preset, size, breed labels),
    not the default one (on a CPU: res-small at 32 px, which the source is not)."""
    from ddpm_tui.cli import main

    workspace = tmp_path / "ws"
    shutil.copytree(source, workspace / "runs" / "src")
    data = make_dataset(tmp_path / "dogs")
    assert main(["--workspace", str(workspace), "train", "--data", str(data), "--run", "child", "--init-from", "src",
                 "--T", "50", "--batch_size", "4", "--epochs", "1", "--samples", "0", "--amp", "off",
                 "--device", "cpu", "--quiet"]) == 0
    want = runs.read_config(source)
    got = runs.read_config(workspace / "runs" / "child")
    assert (got["preset"], got["image_size"], got["conditional"]) == (want["preset"], want["image_size"], True)
