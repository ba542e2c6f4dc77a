"""Standard FID statistics (pytorch-fid / clean-fid .npz: mu, sigma): written and read back
they give FID 0 against themselves and the same FID as the in-memory path; `eval
--write-stats` / `--ref-stats` do that end to end with random-but-fixed Inception weights
from a temp file (nothing downloaded); a malformed .npz is one line."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from core.data.demo import make_demo_dataset
from core.quality import metrics
from core.quality.features import INCEPTION_FILE, INCEPTION_SHA256_PREFIX
from core.quality.fid_stats import StatsError, read_stats, write_stats
from core.training.runs import read_config, write_config
from studio_helpers import cli, make_checkpoint_run, one_line_error


def _features(seed, n=40, d=6):
    return np.random.default_rng(seed).normal(size=(n, d)) * np.arange(1, d + 1)


def test_written_stats_read_back_exactly_and_give_the_in_memory_fid(tmp_path):
    real, fake = _features(0), _features(1) + 0.3
    mu, sigma = metrics.gaussian_stats(real)
    path = tmp_path / "ref.npz"
    write_stats(path, mu, sigma, n=len(real), feature_key="abc")
    ref = read_stats(path)
    assert np.array_equal(ref.mu, mu) and np.array_equal(ref.sigma, sigma) and ref.n == 40 and ref.feature_key == "abc"
    assert metrics.frechet_distance(ref.mu, ref.sigma, ref.mu, ref.sigma) == pytest.approx(0.0, abs=1e-9)
    in_memory = metrics.fid(real, fake)
    assert in_memory > 0.1
    assert metrics.frechet_distance(ref.mu, ref.sigma, *metrics.gaussian_stats(fake)) == in_memory
    # pytorch-fid's own files: only mu and sigma, float32 is fine too
    np.savez(tmp_path / "theirs.npz", mu=mu.astype(np.float32), sigma=sigma.astype(np.float32))
    theirs = read_stats(tmp_path / "theirs.npz")
    assert theirs.n is None and theirs.feature_key is None and theirs.mu.dtype == np.float64
    with pytest.raises(StatsError, match="already exists"):
        write_stats(path, mu, sigma)


def test_malformed_stats_are_one_line(tmp_path):
    mu, sigma = np.zeros(4), np.eye(4)
    bad_sigma = sigma.copy()
    bad_sigma[1, 2] = np.nan
    files = {
        "nomu.npz": dict(sigma=sigma),
        "nosigma.npz": dict(mu=mu),
        "shape.npz": dict(mu=mu, sigma=np.eye(3)),
        "mu2d.npz": dict(mu=np.zeros((2, 2)), sigma=sigma),
        "nan.npz": dict(mu=mu, sigma=bad_sigma),
        "inf.npz": dict(mu=np.full(4, np.inf), sigma=sigma),
        "text.npz": dict(mu=np.array(["a", "b"]), sigma=np.eye(2)),
    }
    for name, arrays in files.items():
        np.savez(tmp_path / name, **arrays)
    np.save(tmp_path / "single.npy", mu)
    np.savez(tmp_path / "pickled.npz", mu=np.array([{"x": 1}], dtype=object), sigma=sigma)
    (tmp_path / "junk.npz").write_bytes(b"<html>not stats</html>")
    buf = io.BytesIO()
    np.savez(buf, mu=mu, sigma=sigma)
    (tmp_path / "cut.npz").write_bytes(buf.getvalue()[:200])
    expected = {"nomu.npz": "no 'mu'", "nosigma.npz": "no 'sigma'", "shape.npz": "4x4", "mu2d.npz": "vector",
                "nan.npz": "NaN", "inf.npz": "NaN or infinite", "text.npz": "numeric", "single.npy": "single .npy",
                "pickled.npz": "not a readable .npz", "junk.npz": "not a readable .npz", "cut.npz": "not a readable",
                "missing.npz": "no such file"}
    for name, needle in expected.items():
        with pytest.raises(StatsError) as err:
            read_stats(tmp_path / name)
        assert "\n" not in str(err.value) and needle in str(err.value), (name, str(err.value))


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """Random-but-fixed InceptionV3 weights in a temp file: the real path, no download."""
    from torchvision.models.inception import Inception3

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("inception") / INCEPTION_FILE
    torch.save(Inception3(aux_logits=True, init_weights=False).state_dict(), path)
    return path




@pytest.mark.slow
def test_eval_write_stats_then_ref_stats_matches_the_in_memory_fid(workspace, inception_file, capsys, tmp_path,
                                                                   one_thread):
    data = workspace.dataset_dir("demo")
    make_demo_dataset(data, per_class=2, size=16)
    run = make_checkpoint_run(workspace, "tiny-run", image_size=16, T=10)
    write_config(run, {**read_config(run), "data": str(data)})
    stats = tmp_path / "demo.npz"
    common = ("--features", "inception", "--fid-weights", str(inception_file), "--device", "cpu")
    assert cli(workspace, "eval", "--write-stats", str(data), str(stats), "--image-size", "16", *common) == 0
    assert str(stats) in capsys.readouterr().out
    ref = read_stats(stats)
    assert ref.mu.shape == (2048,) and ref.sigma.shape == (2048, 2048) and ref.n and ref.feature_key
    assert metrics.frechet_distance(ref.mu, ref.sigma, ref.mu, ref.sigma) == pytest.approx(0.0, abs=1e-6)

    sampling = ("--n", "4", "--steps", "2", "--json", *common)
    assert cli(workspace, "eval", "tiny-run", *sampling) == 0
    in_memory = json.loads(capsys.readouterr().out)
    log = (run / "eval.jsonl").read_text()
    assert cli(workspace, "eval", "tiny-run", "--ref-stats", str(stats), *sampling) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert from_file["fid"] == pytest.approx(in_memory["fid"], rel=1e-9) and from_file["fid"] > 0
    assert "kid" not in from_file and from_file["ref_stats"] == str(stats)
    assert (run / "eval.jsonl").read_text() == log  # not mixed into the run's own FIDs

    # never overwritten without --force; refusals are one line
    assert cli(workspace, "eval", "--write-stats", str(data), str(stats), *common) == 2
    one_line_error(capsys, "already exists", "--force")
    assert cli(workspace, "eval", "tiny-run", "--ref-stats", str(stats), "--features", "dataset") == 2
    one_line_error(capsys, "Inception statistics")
    np.savez(tmp_path / "small.npz", mu=np.zeros(3), sigma=np.eye(3))
    assert cli(workspace, "eval", "tiny-run", "--ref-stats", str(tmp_path / "small.npz"), *common) == 2
    one_line_error(capsys, "3-d features", "2048")


def test_missing_inception_names_the_file_and_its_checksum(workspace, capsys, tmp_path):
    data = workspace.dataset_dir("demo")
    make_demo_dataset(data, per_class=2, size=16)
    nowhere = tmp_path / "nowhere.pth"
    assert cli(workspace, "eval", "--write-stats", str(data), str(tmp_path / "s.npz"),
                "--fid-weights", str(nowhere), "--device", "cpu") == 2
    one_line_error(capsys, str(nowhere), INCEPTION_FILE, f"sha256 starting {INCEPTION_SHA256_PREFIX}", "--fid-weights")
    assert not (tmp_path / "s.npz").exists()
    assert cli(workspace, "eval") == 2
    one_line_error(capsys, "RUN_OR_CHECKPOINT", "--write-stats")
