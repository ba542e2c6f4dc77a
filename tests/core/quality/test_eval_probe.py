"""Issue #24, probe rows 4, 7, 9, 12, 13 and newcomer row 7: the real-feature cache is checked
against the dataset it describes, eval's n is bounded and its memory too, ignored settings are
not recorded as used, and best FID compares like with like."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.diffusion.process import Diffusion, DiffusionConfig
from core.diffusion.unet import UNet, get_preset
from core.quality import eval_log, evaluate

pytestmark = pytest.mark.usefixtures("one_thread")


def _evaluator(data, cache):
    return evaluate.Evaluator(data, image_size=16, features="dataset", cache_dir=cache, feature_seconds=5)


def _cache_file(cache):
    (path,) = cache.glob("realfeat-*.npy")
    return path


@pytest.mark.parametrize("tamper", [
    lambda f: np.random.default_rng(1).normal(size=f.shape) * 100,   # right shape, wrong rows
    lambda f: np.full_like(f, np.nan),                                # NaN
    lambda f: np.zeros((f.shape[0], f.shape[1] + 3)),                 # another width
    lambda f: f[:-1],                                                 # another row count
], ids=["wrong-rows", "nan", "width", "rows"])
def test_a_tampered_real_feature_cache_is_recomputed(data, cache, tamper):
    first = _evaluator(data, cache)
    path = _cache_file(cache)
    np.save(path, tamper(first.real_features), allow_pickle=False)
    again = _evaluator(data, cache)
    np.testing.assert_array_equal(again.real_features, first.real_features)
    np.testing.assert_array_equal(np.load(path), first.real_features)  # and the cache is mended
    assert np.isfinite(again.score_features(first.real_features[:6], None)["fid"])


def test_a_cache_without_its_description_is_not_trusted(data, cache):
    first = _evaluator(data, cache)
    path = _cache_file(cache)
    path.with_suffix(".json").unlink()
    np.save(path, first.real_features * 7, allow_pickle=False)
    np.testing.assert_array_equal(_evaluator(data, cache).real_features, first.real_features)


def test_features_the_metrics_refuse_are_one_line(data, cache):
    ev = _evaluator(data, cache)
    for fake in (np.full((6, ev.real_features.shape[1]), np.nan), np.zeros((6, 5))):
        with pytest.raises(evaluate.EvalError, match="^cannot compute the metrics: [^\n]*$"):
            ev.score_features(fake, None)


def test_n_is_bounded_like_sample(data):
    from core.diffusion.registry import MAX_IMAGES

    with pytest.raises(evaluate.EvalError, match=f"at most {MAX_IMAGES}"):
        evaluate.EvalSettings(n=10**12).validate()
    evaluate.EvalSettings(n=MAX_IMAGES).validate()
    from core.diffusion.sampling import SampleRequest

    with pytest.raises(ValueError, match="n must"):
        SampleRequest(n=MAX_IMAGES + 1)


def _model(conditional: bool):
    torch.manual_seed(0)
    model = UNet(get_preset("tiny", image_size=16, num_classes=3 if conditional else 0))
    return model.eval(), Diffusion(DiffusionConfig(T=10))


def test_evaluation_keeps_one_batch_of_images_at_a_time(data, cache, monkeypatch):
    ev = _evaluator(data, cache)
    seen = []
    embed = ev.net.embed

    def spy(images, **kw):
        seen.append(len(images))
        return embed(images, **kw)

    monkeypatch.setattr(ev.net, "embed", spy)
    model, diffusion = _model(False)
    result = ev.evaluate(model, diffusion, evaluate.EvalSettings(n=10, steps=1), step=1, batch_size=4)
    assert sum(seen) == 10 and max(seen) <= 4 and np.isfinite(result.values["fid"])


def test_ignored_settings_are_recorded_as_used_and_reused(data, cache, tmp_path):
    ev = _evaluator(data, cache)
    model, diffusion = _model(False)
    run_dir = tmp_path / "run"
    plain = ev.evaluate(model, diffusion, evaluate.EvalSettings(n=6, steps=1, sampler="dpmpp2m"), step=1,
                        run_dir=run_dir)
    assert plain.settings.guidance == 1.0 and plain.settings.eta == 0.0
    noisy = evaluate.EvalSettings(n=6, steps=1, sampler="dpmpp2m", eta=0.7, guidance=5.0)
    again = ev.evaluate(model, diffusion, noisy, step=1, run_dir=run_dir)
    assert again.reused and again.values == plain.values


def test_ignored_settings_say_so():
    from core.diffusion.sampling import ignored_settings

    (eta,) = ignored_settings("dpmpp2m", True, eta=0.5)
    assert "eta 0.5 is ignored" in eta and "ddim" in eta
    assert ignored_settings("ddim", True, eta=0.5) == [] and ignored_settings("dpmpp2m", True, eta=0.0) == []
    (guidance,) = ignored_settings("ddim", False, guidance=4.0)
    assert "unconditional" in guidance and ignored_settings("ddim", True, guidance=4.0) == []


def test_best_fid_compares_like_with_like(tmp_path):
    base = {"metric": "fid", "sampler": "ddim", "steps": 5, "features": "dataset", "feature_key": "k",
            "guidance": 1.0, "time": 0}
    eval_log.append_records(tmp_path, [{**base, "step": 100, "n": 50, "value": 10.0},
                                       {**base, "step": 200, "n": 200, "value": 30.0},
                                       {**base, "step": 300, "n": 200, "value": 25.0}])
    assert eval_log.best_fid(tmp_path) == (25.0, 300, "dataset")  # not the n=50 figure
    eval_log.append_records(tmp_path, [{**base, "step": 400, "n": 50, "value": 12.0}])
    assert eval_log.best_fid(tmp_path) == (10.0, 100, "dataset")
    eval_log.append_records(tmp_path, [{**base, "step": 500, "n": 50, "value": 11.0, "feature_key": "other"}])
    assert eval_log.best_fid(tmp_path) == (11.0, 500, "dataset")  # a retrained dataset net: its own scale
