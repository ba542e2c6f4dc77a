"""Evaluation orchestration: eval.jsonl written, reused, read tolerantly; the real side scores 0."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from core.quality import eval_log, evaluate
from core.diffusion.checkpoint import save_checkpoint
from core.diffusion.registry import DEFAULT_SAMPLER
from core.data.demo import make_demo_dataset
from core.diffusion.process import Diffusion, DiffusionConfig
from core.diffusion.ema import EMA
from core.training.runs import checkpoints_dir, read_config, write_config
from core.diffusion.unet import UNet, get_preset


def _run(tmp_path, data, *, conditional=False):
    torch.manual_seed(0)
    classes = sorted(p.name for p in data.iterdir()) if conditional else []
    config = get_preset("tiny", image_size=16, num_classes=len(classes))
    model = UNet(config)
    run_dir = tmp_path / "run"
    ckpt = checkpoints_dir(run_dir) / "last.pt"
    save_checkpoint(ckpt, model_config=config, diffusion_config=DiffusionConfig(T=10), model_state=model.state_dict(),
                    ema_state=EMA(model).state_dict(), step=7, extra={"classes": classes})
    write_config(run_dir, {"preset": "tiny", "image_size": 16, "data": str(data), "classes": classes})
    return run_dir, ckpt


def test_real_images_against_themselves_score_zero(data, cache, one_thread):
    ev = evaluate.Evaluator(data, image_size=16, features="dataset", cache_dir=cache)
    from core.data.dataset import DataOptions, ImageFolderDataset

    real = ImageFolderDataset(data, DataOptions(image_size=16, flip=False))
    values = ev.score(real.images, labels=real.labels.tolist())
    assert values["fid"] == pytest.approx(0.0, abs=1e-6)
    assert values["precision"] == 1.0 and values["recall"] == 1.0
    assert values["class_accuracy"] >= 0.9
    # a second Evaluator reuses the cached net and the cached real features
    again = evaluate.Evaluator(data, image_size=16, features="dataset", cache_dir=cache)
    assert again.net.cached
    np.testing.assert_array_equal(again.real_features, ev.real_features)


def test_evaluate_checkpoint_appends_then_reuses(data, cache, tmp_path, monkeypatch, one_thread):
    run_dir, ckpt = _run(tmp_path, data)
    settings = evaluate.EvalSettings(n=12, steps=2)
    first = evaluate.evaluate_checkpoint(ckpt, run_dir=run_dir, run_config=read_config(run_dir),
                                         settings=settings, features="dataset",
                                         cache_dir=cache, batch_size=5)
    assert not first.reused and first.step == 7
    assert set(first.values) >= {"fid", "kid", "kid_std", "precision", "recall", "class_entropy"}
    records, _ = eval_log.read_eval(run_dir)
    assert {r["metric"] for r in records} == {"fid", "kid", "precision", "recall", "class_entropy", "copy_rate"}
    for r in records:
        assert all(k in r for k in eval_log.RECORD_KEYS)
        assert r["step"] == 7 and r["n"] == 12 and r["sampler"] == DEFAULT_SAMPLER and r["features"] == "dataset"

    def no_sampling(*a, **k):
        raise AssertionError("a reused evaluation must not sample")

    monkeypatch.setattr(evaluate, "generate_images", no_sampling)
    second = evaluate.evaluate_checkpoint(ckpt, run_dir=run_dir, run_config=read_config(run_dir),
                                         settings=settings, features="dataset",
                                          cache_dir=cache)
    assert second.reused and second.values == first.values
    assert len(eval_log.read_eval(run_dir)[0]) == len(records)
    # other settings are a new evaluation
    with pytest.raises(AssertionError, match="must not sample"):
        evaluate.evaluate_checkpoint(ckpt, run_dir=run_dir, run_config=read_config(run_dir),
                                         settings=evaluate.EvalSettings(n=12, steps=3),
                                     features="dataset", cache_dir=cache)


def test_conditional_run_reports_class_accuracy(data, cache, tmp_path, one_thread):
    run_dir, ckpt = _run(tmp_path, data, conditional=True)
    result = evaluate.evaluate_checkpoint(ckpt, run_dir=run_dir, run_config=read_config(run_dir),
                                         settings=evaluate.EvalSettings(n=10, steps=1),
                                          features="dataset", cache_dir=cache)
    assert "class_entropy" not in result.values
    # The recorded accuracy is the feature net's verdict on the checkpoint's own samples,
    # image i asked for class i mod C (an untrained model: whatever that verdict is).
    from core.diffusion.checkpoint import build_model_from_checkpoint, load_checkpoint

    model, diffusion = build_model_from_checkpoint(load_checkpoint(ckpt), use_ema=True)
    samples = torch.cat(list(evaluate.generate_images(model, diffusion, 10, evaluate.EvalSettings(n=10, steps=1))))
    classes = read_config(run_dir)["classes"]
    ev = evaluate.Evaluator(data, image_size=16, features="dataset", cache_dir=cache, classes=classes)
    _, probs = ev.net.embed(samples)
    assert result.values["class_accuracy"] == (probs.argmax(1) == np.arange(10) % len(classes)).mean()


def test_eval_log_tolerates_torn_lines_and_finds_best_fid(tmp_path):
    run_dir = tmp_path / "run"
    base = {"metric": "fid", "sampler": "ddim", "steps": 5, "n": 4, "features": "dataset", "time": 0}
    eval_log.append_records(run_dir, [{**base, "step": 100, "value": 50.0}])
    with open(eval_log.eval_path(run_dir), "ab") as fh:
        fh.write(b'{"step": 150, "metric": "fi')  # a writer killed mid-line
    records, offset = eval_log.read_eval(run_dir)
    assert [r["step"] for r in records] == [100]
    eval_log.append_records(run_dir, [{**base, "step": 200, "value": 20.0},
                                      {**base, "step": 200, "metric": "kid", "value": 0.1}])
    more, _ = eval_log.read_eval(run_dir, offset)
    assert [(r["step"], r["metric"]) for r in more] == [(200, "fid"), (200, "kid")]
    assert eval_log.best_fid(run_dir) == (20.0, 200, "dataset")
    assert eval_log.format_best_fid(eval_log.best_fid(run_dir)) == "20@200"
    # a later evaluation with another feature net: its own scale decides the best
    eval_log.append_records(run_dir, [{**base, "step": 300, "value": 80.0, "features": "inception"}])
    assert eval_log.best_fid(run_dir) == (80.0, 300, "inception")
    assert eval_log.best_fid(tmp_path / "none") is None and eval_log.format_best_fid(None) == "–"
    json.loads(eval_log.eval_path(run_dir).read_text().splitlines()[-1])  # plain JSON lines


def test_bad_settings_and_inputs_are_one_line_errors(data, tmp_path):
    with pytest.raises(evaluate.EvalError, match="at least 2 images"):
        evaluate.EvalSettings(n=1).validate()
    with pytest.raises(evaluate.EvalError, match="not found"):
        evaluate.Evaluator(tmp_path / "missing", image_size=16, features="dataset")
    with pytest.raises(evaluate.EvalError, match="Inception weights not found"):
        evaluate.Evaluator(data, image_size=16, features="inception", fid_weights=tmp_path / "absent.pth")
    assert evaluate.resolve_features("auto", tmp_path / "absent.pth") == "inception"  # named: then it must exist


def test_in_process_evaluation_as_the_trainer_calls_it(data, cache, tmp_path, one_thread):
    """Evaluator built once, evaluate() every N steps with the live (EMA) model."""
    torch.manual_seed(0)
    model = UNet(get_preset("tiny", image_size=16)).eval()
    diffusion = Diffusion(DiffusionConfig(T=10))
    ev = evaluate.Evaluator(data, image_size=16, features="dataset", cache_dir=cache)
    run_dir = tmp_path / "run"
    settings = evaluate.EvalSettings(n=8, steps=1)
    for step in (10, 20):
        result = ev.evaluate(model, diffusion, settings, step=step, run_dir=run_dir)
        assert not result.reused and result.step == step
    assert ev.evaluate(model, diffusion, settings, step=20, run_dir=run_dir).reused
    steps = [s for s, _, _ in eval_log.fid_points(eval_log.read_eval(run_dir)[0])]
    assert steps == [10, 20]


# ---------------------------------------------------------------------------- metrics that can fail


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    """Other pictures of the same classes (the demo generator with another seed): real
    images the feature net and the real features have never seen."""
    from core.data.dataset import DataOptions, ImageFolderDataset

    root = tmp_path_factory.mktemp("heldout") / "demo"
    make_demo_dataset(root, per_class=8, size=16, seed=1)
    return ImageFolderDataset(root, DataOptions(image_size=16, flip=False))


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    from torchvision.transforms.functional import gaussian_blur

    size = 2 * math.ceil(3 * sigma) + 1
    return gaussian_blur(images.float(), [size, size], [sigma, sigma]).round().clamp(0, 255).to(torch.uint8)


def test_fid_and_kid_rank_real_below_blurred_below_noise(data, cache, heldout, one_thread):
    ev = evaluate.Evaluator(data, image_size=16, features="dataset", cache_dir=cache)
    real = heldout.images
    noise = torch.randint(0, 256, real.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ladder = [real, _blur(real, 1.0), _blur(real, 2.0), noise]
    scores = [ev.score(images) for images in ladder]
    fids = [s["fid"] for s in scores]
    kids = [s["kid"] for s in scores]
    assert fids == sorted(fids) and len(set(fids)) == 4, fids
    assert kids == sorted(kids) and len(set(kids)) == 4, kids
    # each FID rung clearly apart (seen: 1.5, 8.7, 23, 86): at least 1.5x the one below
    assert all(b > 1.5 * a for a, b in zip(fids, fids[1:])), fids


def test_precision_and_recall_of_a_one_class_set_and_the_swap(data, cache, heldout, one_thread):
    """Held-out pictures of one class only: realistic (high precision) but covering a
    fifth of the real set (low recall). Swapping real and fake would swap the two."""
    ev = evaluate.Evaluator(data, image_size=16, features="dataset", cache_dir=cache)
    one_class = heldout.images[heldout.labels == 0]
    many = torch.cat([one_class] * (len(ev.real_features) // len(one_class)))
    jitter = torch.randint(-2, 3, many.shape, generator=torch.Generator().manual_seed(1))
    many = (many.to(torch.int16) + jitter).clamp(0, 255).to(torch.uint8)  # no exact duplicates
    values = ev.score(many)
    assert values["precision"] >= 0.6 and values["recall"] <= 0.35, values
    everything = ev.score(heldout.images)
    assert everything["recall"] > values["recall"] + 0.3, (everything, values)


def test_class_accuracy_of_shuffled_labels_falls_to_chance(data, cache, heldout, one_thread):
    ev = evaluate.Evaluator(data, image_size=16, features="dataset", cache_dir=cache)
    labels = heldout.labels.tolist()
    assert ev.score(heldout.images, labels=labels)["class_accuracy"] >= 0.9
    shuffled = [labels[i] for i in torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    chance = 1 / len(ev.classes)
    assert ev.score(heldout.images, labels=shuffled)["class_accuracy"] <= chance + 0.15
    wrong = [(y + 1) % len(ev.classes) for y in labels]
    assert ev.score(heldout.images, labels=wrong)["class_accuracy"] <= 0.1


class _ClassTemplates(torch.nn.Module):
    """A conditional 'model' that predicts x0 = a fixed picture of the class it is asked
    for: one DDIM step then draws exactly that picture, so class accuracy is known."""

    def __init__(self, templates: torch.Tensor) -> None:
        super().__init__()
        from types import SimpleNamespace

        self.templates = torch.nn.Parameter(templates.float() / 127.5 - 1, requires_grad=False)
        self.config = SimpleNamespace(image_size=templates.shape[-1], in_channels=3, num_classes=len(templates))

    def forward(self, x, t, labels=None):
        # the null label (classifier-free guidance's unconditional half) draws the mean picture
        return torch.cat([self.templates, self.templates.mean(0, keepdim=True)])[labels]


def test_evaluate_labels_conditional_samples_with_the_classes_they_were_drawn_for(data, cache, heldout, tmp_path,
                                                                                  one_thread):
    ev = evaluate.Evaluator(data, image_size=16, features="dataset", cache_dir=cache, classes=heldout.classes)
    templates = torch.stack([heldout.images[heldout.labels == c][0] for c in range(len(heldout.classes))])
    model = _ClassTemplates(templates)
    diffusion = Diffusion(DiffusionConfig(T=10, prediction="x0"))
    settings = evaluate.EvalSettings(n=10, steps=1, weights="raw")
    result = ev.evaluate(model, diffusion, settings, step=1)
    # every template is recognised as its class (so labels one class off would score 0)
    _, probs = ev.net.embed(templates)
    assert probs.argmax(1).tolist() == list(range(len(templates)))
    assert result.values["class_accuracy"] == 1.0, result.values
