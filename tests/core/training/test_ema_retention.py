"""--ema-snapshots: the trainer keeps at most N power-EMA snapshots, spread over the run, the
newest always; files it did not write stay; the removal is logged; a resumed run that saved at
the same steps keeps the same files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from core.diffusion.checkpoint import load_checkpoint
from core.training.train import train

sys.path.insert(0, str(Path(__file__).parent))
from test_train import make_dataset, tiny  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _names(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints" / "ema").iterdir())


def test_snapshots_are_thinned_to_n_and_foreign_files_stay(tmp_path: Path):
    data = make_dataset(tmp_path / "dogs")
    run = tmp_path / "run"
    cfg = dict(samples=0, ema_kind="power", save_every_steps=1, ema_snapshots=3)  # 4 steps an epoch
    final = train(tiny(data, epochs=1, **cfg), run)
    assert final["step"] == 4
    assert _names(run) == ["ema_0000001.safetensors", "ema_0000003.safetensors", "ema_0000004.safetensors"]
    assert "removed EMA snapshot ema_0000002.safetensors" in (run / "train.log").read_text()
    foreign = ["ema_5.safetensors", "ema_0000006.safetensors.bak", "notes.txt"]
    for name in foreign:
        (run / "checkpoints" / "ema" / name).write_bytes(b"mine")
    assert train(tiny(data, epochs=2, **cfg), run)["step"] == 8  # resumed
    assert _names(run) == sorted(["ema_0000001.safetensors", "ema_0000003.safetensors", "ema_0000008.safetensors",
                                  *foreign])
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 8
    # The kept set depends only on the steps saved: a run of 8 steps in one go keeps the same.
    train(tiny(data, epochs=2, **cfg), tmp_path / "straight")
    assert _names(tmp_path / "straight") == ["ema_0000001.safetensors", "ema_0000003.safetensors",
                                             "ema_0000008.safetensors"]
