"""--ema-length (sample, eval, export) and eval --sweep-ema on runs trained with the power EMA;
both refused in one line for a run with the exponential EMA."""

from __future__ import annotations

import json

import pytest

from core.data.demo import make_demo_dataset
from core.training.runs import read_config, write_config
from ddpm_tui.cli import main
from studio_helpers import make_checkpoint_run, one_line_error


def _make(workspace, name: str, ema_kind: str):
    data = workspace.dataset_dir("demo")
    if not data.is_dir():
        make_demo_dataset(data, per_class=6, size=16)
    run_dir = make_checkpoint_run(workspace, name, image_size=16, T=10, ema_kind=ema_kind)
    write_config(run_dir, {**read_config(run_dir), "data": str(data)})
    return run_dir


@pytest.fixture
def exp_run(workspace):
    return _make(workspace, "exp-run", "exp")


@pytest.fixture
def power_run(workspace):
    return _make(workspace, "power-run", "power")


def _cli(workspace, *args):
    return main(["--workspace", str(workspace.root), *args])


@pytest.mark.parametrize("command", ["sample", "eval", "export"])
def test_ema_length_on_an_exponential_ema_is_one_line(workspace, exp_run, capsys, command):
    quick = ("--n", "4", "--steps", "1") if command == "eval" else ()  # no CPU-time notice first
    assert _cli(workspace, command, "exp-run", "--ema-length", "0.07", *quick) == 2
    one_line_error(capsys, "exponential EMA", "--ema-length")


def test_eval_sweep_on_an_exponential_ema_is_one_line(workspace, exp_run, capsys):
    assert _cli(workspace, "eval", "exp-run", "--sweep-ema", "0.05,0.1", "--n", "4", "--steps", "1") == 2
    one_line_error(capsys, "exponential EMA", "--ema-length")


def test_ema_length_out_of_range_is_a_usage_error(workspace, power_run, capsys):
    with pytest.raises(SystemExit):
        _cli(workspace, "sample", "power-run", "--ema-length", "0.5")
    assert "--ema-length" in capsys.readouterr().err


def test_sample_and_export_at_a_chosen_length(workspace, power_run, capsys, tmp_path):
    from safetensors.torch import load_file

    from core.diffusion.checkpoint import load_checkpoint
    from core.diffusion.ema_snapshots import power_ema_weights

    out = tmp_path / "g.png"
    assert _cli(workspace, "sample", "power-run", "--ema-length", "0.07", "--n", "2", "--steps", "2",
                "--seed", "1", "--device", "cpu", "--out", str(out)) == 0
    assert "power EMA sigma_rel 0.07" in capsys.readouterr().out and out.is_file()

    exported = tmp_path / "w.safetensors"
    assert _cli(workspace, "export", "power-run", "--ema-length", "0.07", "--out", str(exported)) == 0
    ckpt = load_checkpoint(power_run / "checkpoints" / "last.pt")
    expected = power_ema_weights(ckpt, 0.07)
    got = load_file(str(exported))
    assert all((got[k] == expected[k]).all() for k in expected)
    # Without --ema-length: the run's own length (0.10, a tracked profile, exactly).
    default = tmp_path / "d.safetensors"
    assert _cli(workspace, "export", "power-run", "--out", str(default)) == 0
    got = load_file(str(default))
    assert all((got[k] == ckpt["ema"]["profiles"][1][k]).all() for k in expected)


def test_eval_sweep_prints_one_row_per_length(workspace, power_run, capsys, one_thread):
    args = ("eval", "power-run", "--n", "4", "--steps", "1", "--features", "dataset", "--device", "cpu")
    assert _cli(workspace, *args, "--sweep-ema", "0.05,0.07") == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in out if line.strip().split(" ")[0] in ("0.05", "0.07")]
    assert [r[0] for r in rows] == ["0.05", "0.07"] and all(len(r) >= 4 for r in rows)
    records = [json.loads(line) for line in (power_run / "eval.jsonl").read_text().splitlines()]
    assert sorted({r["ema_length"] for r in records}) == [0.05, 0.07]
    assert len({r["eval_id"] for r in records}) == 2  # two evaluations, not one reused


def test_sample_request_ema_length_picks_the_weights(workspace, power_run, exp_run):
    """SampleRequest(ema_length=...) from a checkpoint path: the benchmark's way in."""
    from core.diffusion.checkpoint import CheckpointError
    from core.diffusion.sampling import SampleRequest, generate_images

    path = power_run / "checkpoints" / "last.pt"
    images = {length: generate_images(path, SampleRequest(n=1, steps=1, seed=0, ema_length=length),
                                      device="cpu")[0] for length in (0.05, 0.1, None)}
    assert not (images[0.05] == images[0.1]).all()
    assert (images[None] == images[0.1]).all()  # the run's own length
    with pytest.raises(CheckpointError, match="exponential"):
        generate_images(exp_run / "checkpoints" / "last.pt", SampleRequest(n=1, steps=1, ema_length=0.07))
    with pytest.raises(ValueError, match="ema_length"):
        SampleRequest(ema_length=0.5)
