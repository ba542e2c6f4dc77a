"""train --tensorboard: the event files in RUN/tb/ hold the training scalars, the evaluation
figures and the sample grids (read back with TensorBoard's own reader); without the package
the flag is one line that says what to install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.training import runs, tensorboard
from core.training.train import TrainError, train

sys.path.insert(0, str(Path(__file__).parent))
from test_train import make_dataset, tiny  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
needs_tensorboard = pytest.mark.skipif(not tensorboard.available(),
                                       reason="tensorboard is not installed (the `tensorboard` or `test` extra)")


@needs_tensorboard
def test_event_files_hold_the_scalars_evaluations_and_grids(tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from core.quality import eval_log

    data = make_dataset(tmp_path / "dogs")
    run = tmp_path / "run"
    train(tiny(data, tensorboard=True, eval_every=4, eval_n=6, cache_dir=str(tmp_path / "cache")), run)
    events = EventAccumulator(str(runs.tensorboard_dir(run)), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert set(tags["scalars"]) >= {"train/loss", "train/lr", "train/grad_norm", "train/images_per_s",
                                    "eval/fid", "eval/kid"}
    records, _ = runs.read_metrics(run)
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [r["step"] for r in records] == list(range(1, 9))
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in records], rel=1e-6)
    assert all(e.value > 0 for e in events.Scalars("train/grad_norm"))
    fids = [(r["step"], r["value"]) for r in eval_log.read_eval(run)[0] if r["metric"] == "fid"]
    assert [(e.step, e.value) for e in events.Scalars("eval/fid")] == [(s, pytest.approx(v)) for s, v in fids]
    assert len(fids) == 2
    assert {"samples/raw", "samples/ema"} <= set(tags["images"])
    assert [e.step for e in events.Images("samples/ema")] == [4, 8]  # one grid per epoch


def test_without_the_package_the_flag_is_one_line(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setattr(tensorboard, "available", lambda: False)
    data = make_dataset(tmp_path / "dogs")
    with pytest.raises(TrainError) as exc:
        train(tiny(data, tensorboard=True), tmp_path / "run")
    assert str(exc.value) == tensorboard.MISSING and "pip install 'ddpm-tui[tensorboard]'" in str(exc.value)
    assert "\n" not in str(exc.value) and not (tmp_path / "run").exists()  # said before anything is written
    # The CLI: that line, no traceback.
    from ddpm_tui.cli import main

    code = main(["--workspace", str(tmp_path / "ws"), "train", "--data", str(data), "--run", "r", "--preset",
                 "tiny", "--image-size", "16", "--tensorboard", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and err.strip() == f"ddpm-tui: error: {tensorboard.MISSING}"


def test_the_package_is_imported_only_by_a_run_that_asks(tmp_path: Path):
    """`ddpm-tui --help`, `runs --tensorboard` and a run without the flag never import it."""
    code = ("import sys; from ddpm_tui.cli import main; import core.training.train; "
            "main(['--workspace', sys.argv[1], 'runs', '--tensorboard']); "
            "print('tensorboard' in sys.modules, 'torch.utils.tensorboard' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).parents[3])
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0] == f"tensorboard --logdir {tmp_path / 'runs'}"
    assert lines[-1] == "False False"
