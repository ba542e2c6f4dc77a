"""`ddpm-tui eval`: writes eval.jsonl, reuses it, and answers bad input with one line."""

from __future__ import annotations

import json

import pytest

from core.data.demo import make_demo_dataset
from core.training.runs import read_config, write_config
from ddpm_tui.cli import main
from studio_helpers import make_checkpoint_run, one_line_error


@pytest.fixture
def run(workspace):
    data = workspace.dataset_dir("demo")
    make_demo_dataset(data, per_class=6, size=16)
    run_dir = make_checkpoint_run(workspace, "tiny-run", image_size=16, T=10)
    write_config(run_dir, {**read_config(run_dir), "data": str(data)})
    return run_dir


def _eval(workspace, *args):
    return main(["--workspace", str(workspace.root), "eval", *args])


def test_eval_writes_then_reuses(workspace, run, capsys, one_thread):
    args = ("tiny-run", "--n", "10", "--steps", "2", "--features", "dataset", "--device", "cpu")
    assert _eval(workspace, *args, "--json") == 0
    first = json.loads(capsys.readouterr().out)
    assert first["reused"] is False and first["step"] == 12 and first["fid"] >= 0
    lines = (run / "eval.jsonl").read_text().splitlines()
    assert {json.loads(line)["metric"] for line in lines} >= {"fid", "kid", "precision", "recall"}

    assert _eval(workspace, *args) == 0
    out = capsys.readouterr().out
    assert "reused from eval.jsonl" in out and "FID" in out and "KID" in out and "±" in out
    assert (run / "eval.jsonl").read_text().splitlines() == lines

    # the runs table shows the best FID and its step
    assert main(["--workspace", str(workspace.root), "runs", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["best_fid"] == {"value": first["fid"], "step": 12, "features": "dataset"}
    assert main(["--workspace", str(workspace.root), "runs"]) == 0
    assert f"{first['fid']:.3g}@12" in capsys.readouterr().out



def test_eval_bad_input_is_one_line(workspace, run, capsys, tmp_path):
    assert _eval(workspace, "tiny-run", "--n", "1") == 2
    one_line_error(capsys, "--n", "at least 2")

    assert _eval(workspace, "tiny-run", "--n", "4", "--features", "inception",
                 "--fid-weights", str(tmp_path / "absent.pth")) == 2
    one_line_error(capsys, "Inception weights not found", "--fid-weights")

    empty = workspace.run_dir("empty")
    (empty / "checkpoints").mkdir(parents=True)
    write_config(empty, {"preset": "tiny"})
    assert _eval(workspace, "empty") == 2
    one_line_error(capsys, "no checkpoint")

    write_config(run, {**read_config(run), "data": str(tmp_path / "gone")})
    assert _eval(workspace, "tiny-run", "--n", "4", "--features", "dataset") == 2
    one_line_error(capsys, "gone", "--data")


def test_eval_refuses_a_huge_n_before_any_work(workspace, run, capsys, monkeypatch):
    import core.quality.evaluate as evaluate

    monkeypatch.setattr(evaluate, "evaluate_checkpoint", lambda *a, **k: pytest.fail("must not start"))
    assert _eval(workspace, "tiny-run", "--n", "1000000000000") == 2
    one_line_error(capsys, "--n", "at most 50000")


def test_garbage_fid_weights_is_one_plain_line(workspace, run, capsys, tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x80\x02garbage that is not a zip nor a pickle" * 50)
    assert _eval(workspace, "tiny-run", "--n", "4", "--features", "inception", "--fid-weights", str(garbage)) == 2
    err = capsys.readouterr().err
    assert err == f"ddpm-tui: error: {garbage}: not a PyTorch weights file\n", err


def test_eval_says_what_it_ignores_how_long_and_on_which_scale(workspace, run, capsys, one_thread):
    assert _eval(workspace, "tiny-run", "--n", "10", "--steps", "2", "--features", "dataset", "--device", "cpu",
                 "--sampler", "dpmpp2m", "--eta", "0.5", "--guidance", "4") == 0
    captured = capsys.readouterr()
    notes = [line for line in captured.err.splitlines() if line.startswith("note: ")]
    assert any("eta 0.5 is ignored" in n for n in notes) and any("guidance 4 is ignored" in n for n in notes)
    assert "own scale" in captured.out
    # the default n on a CPU: a notice before the work (the work itself is not wanted here)
    import core.quality.evaluate as evaluate

    def stop(*a, **k):
        raise evaluate.EvalError("stopped by the test")

    evaluate_checkpoint = evaluate.evaluate_checkpoint
    evaluate.evaluate_checkpoint = stop
    try:
        assert _eval(workspace, "tiny-run", "--device", "cpu") == 2
    finally:
        evaluate.evaluate_checkpoint = evaluate_checkpoint
    assert "on the CPU can take tens of minutes" in capsys.readouterr().err


def test_eval_and_sample_share_one_guidance_default():
    from core.diffusion.registry import DEFAULT_GUIDANCE
    from core.diffusion.sampling import SampleRequest
    from core.quality.evaluate import EvalSettings

    assert EvalSettings().guidance == SampleRequest().guidance == DEFAULT_GUIDANCE
