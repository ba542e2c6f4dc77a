"""eval.jsonl is never left half-written and a reused evaluation is checked before it is
trusted (issue #24, probe rows 1, 3 and 8): a real full tmpfs, a cut file, hand-edited
values, and an eval.jsonl that is a folder."""

from __future__ import annotations

import json
import os

import pytest
import torch

from core.diffusion.checkpoint import save_checkpoint
from core.diffusion.ema import EMA
from core.diffusion.process import DiffusionConfig
from core.diffusion.unet import UNet, get_preset
from core.data.demo import make_demo_dataset
from core.quality import eval_log, evaluate
from core.training.runs import checkpoints_dir, read_config, write_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _fill(folder) -> None:
    """Write into ``folder`` until its file system has no free page left."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def test_a_full_disk_appends_nothing_and_says_so(small_disk):
    run_dir = small_disk("64k")
    record = {"step": 1, "metric": "fid", "value": 1.0, "sampler": "ddim", "steps": 2, "n": 2,
              "features": "dataset", "time": 0}
    eval_log.append_records(run_dir, [record])
    before = eval_log.eval_path(run_dir).read_bytes()
    _fill(run_dir)
    # bigger than the slack left in eval.jsonl's last page: the kernel writes part of it
    big = [{**record, "step": 2, "note": "x" * 3000}, {**record, "step": 2, "metric": "kid", "note": "y" * 3000}]
    with pytest.raises(eval_log.EvalLogError, match="eval.jsonl.*nothing was appended"):
        eval_log.append_records(run_dir, big)
    assert eval_log.eval_path(run_dir).read_bytes() == before


def test_a_short_write_is_finished_not_dropped(tmp_path, monkeypatch):
    real_write = os.write

    def short_write(fd, data):  # what a nearly full disk does without raising
        return real_write(fd, bytes(data[:7]))

    monkeypatch.setattr(os, "write", short_write)
    eval_log.append_records(tmp_path, [{"step": 3, "metric": "fid", "value": 2.5}])
    assert json.loads(eval_log.eval_path(tmp_path).read_text()) == {"step": 3, "metric": "fid", "value": 2.5}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data = tmp_path_factory.mktemp("evalrec") / "demo"
    make_demo_dataset(data, per_class=6, size=16, seed=0)
    torch.manual_seed(0)
    config = get_preset("tiny", image_size=16)
    model = UNet(config)
    run_dir = tmp_path_factory.mktemp("run")
    ckpt = checkpoints_dir(run_dir) / "last.pt"
    save_checkpoint(ckpt, model_config=config, diffusion_config=DiffusionConfig(T=10), model_state=model.state_dict(),
                    ema_state=EMA(model).state_dict(), step=5, extra={"classes": []})
    write_config(run_dir, {"preset": "tiny", "image_size": 16, "data": str(data), "classes": []})
    return run_dir, ckpt, tmp_path_factory.mktemp("cache")


def _evaluate(run, *, sample=True, monkeypatch=None):
    run_dir, ckpt, cache = run
    if not sample:
        def no_sampling(*a, **k):
            raise AssertionError("must not sample")
        monkeypatch.setattr(evaluate, "generate_images", no_sampling)
    return evaluate.evaluate_checkpoint(ckpt, run_dir=run_dir, run_config=read_config(run_dir),
                                        settings=evaluate.EvalSettings(n=8, steps=2), features="dataset",
                                        cache_dir=cache, batch_size=8)


def _rewrite(run_dir, edit) -> None:
    path = eval_log.eval_path(run_dir)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in edit(lines)))


def _edit_value(value):
    def edit(lines):
        return [{**r, "value": value} if r["metric"] == "precision" else r for r in lines]
    return edit


@pytest.mark.parametrize("edit", [
    lambda lines: lines[:-2],                                   # cut inside the evaluation's lines
    _edit_value("abc"), _edit_value(None),                      # hand-edited values
    lambda lines: [{**r, "std": None} if r["metric"] == "kid" else r for r in lines],
], ids=["truncated", "text", "null", "kid-std-null"])
def test_a_damaged_earlier_evaluation_is_computed_again(run, edit, monkeypatch):
    run_dir = run[0]
    eval_log.eval_path(run_dir).unlink(missing_ok=True)
    first = _evaluate(run)
    assert not first.reused and _evaluate(run, sample=False, monkeypatch=monkeypatch).reused
    monkeypatch.undo()
    _rewrite(run_dir, edit)
    again = _evaluate(run)
    assert not again.reused and again.values == first.values
    assert _evaluate(run, sample=False, monkeypatch=monkeypatch).reused  # the new lines are trusted


def test_nan_written_by_hand_is_not_reused(run, monkeypatch):
    run_dir = run[0]
    eval_log.eval_path(run_dir).unlink(missing_ok=True)
    _evaluate(run)
    path = eval_log.eval_path(run_dir)
    path.write_text(path.read_text().replace('"metric": "fid", "value": ', '"metric": "fid", "value": NaN, "was": '))
    assert not _evaluate(run).reused


def test_eval_jsonl_that_is_a_folder_fails_before_sampling(run, monkeypatch):
    run_dir = run[0]
    eval_log.eval_path(run_dir).unlink(missing_ok=True)
    eval_log.eval_path(run_dir).mkdir()
    try:
        with pytest.raises(evaluate.EvalError, match="eval.jsonl is not a file"):
            _evaluate(run, sample=False, monkeypatch=monkeypatch)
    finally:
        eval_log.eval_path(run_dir).rmdir()
