"""bench/quality.py: arm parsing and a smoke run
(only where the peer, denoising-diffusion-pytorch from the `bench` extra, is installed)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_quality_under_test", ROOT / "bench" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_arms_parse_with_default_networks_and_errors():
    q = _load_bench()
    arms = q.parse_arms("classic, fast,peer,fast@res-tiny")
    assert [(a.name, a.recipe, a.preset) for a in arms] == [
        ("classic", "classic", q.CLASSIC_PRESET), ("fast", "fast", q.FAST_PRESET), ("peer", "peer", None),
        ("fast@res-tiny", "fast", "res-tiny")]
    assert [a.preset for a in q.parse_arms("classic,fast", smoke=True)] == ["tiny", "res-tiny"]
    # "seed", the classic recipe's former name, is still an arm (named as today)
    assert [(a.name, a.recipe, a.preset) for a in q.parse_arms("seed,seed@tiny~1e-3")] == [
        ("classic", "classic", q.CLASSIC_PRESET), ("classic@tiny~1e-3", "classic", "tiny")]
    swept = q.parse_arms("fast,fast~6e-4,fast@res-tiny~1e-3,peer~3e-4")
    assert [(a.recipe, a.preset, a.lr, a.slug) for a in swept] == [
        ("fast", q.FAST_PRESET, None, "fast"), ("fast", q.FAST_PRESET, 6e-4, "fast-lr6e-4"),
        ("fast", "res-tiny", 1e-3, "fast-res-tiny-lr1e-3"), ("peer", None, 3e-4, "peer-lr3e-4")]
    config = q._train_config(swept[1], Path("/d"), argparse.Namespace(image_size=32, minutes=1, seed=0, smoke=False))
    assert (config["lr"], config["recipe"], config["run"]) == (6e-4, "fast", "fast-lr6e-4")
    edm = q.parse_arms("edm@res-tiny,edm")  # any recipe of core.training.options.RECIPES
    assert [(a.recipe, a.preset) for a in edm] == [("edm", "res-tiny"), ("edm", q.FAST_PRESET)]
    for bad, msg in [("nope", "unknown arm 'nope'"), ("fast@huge", "unknown preset 'huge'"),
                     ("peer@small", "network is fixed"), ("classic,classic", "listed twice"), ("seed,classic", "listed twice"), (" , ", "no arms"),
                     ("fast~abc", "learning rate"), ("peer~0", "learning rate"), ("fast~2", "learning rate")]:
        with pytest.raises(q.BenchError, match=msg):
            q.parse_arms(bad)


@pytest.mark.slow
def test_smoke_run_trains_samples_and_scores_every_arm(tmp_path):
    pytest.importorskip("denoising_diffusion_pytorch", reason="the peer needs the bench extra")
    pytest.importorskip("ema_pytorch", reason="the peer needs the bench extra")
    arms = ["classic", "fast", "peer"]
    cmd = [sys.executable, "-m", "bench.quality", "--smoke", "--out", str(tmp_path), "--arms", ",".join(arms), "--sweep"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    rows = results["arms"]
    assert [r["arm"] for r in rows] == arms
    for r in rows:
        assert r["steps"] == 2 and r["batch"] == 4 and r["images_per_s"] > 0 and r["parameters"] > 0
        with Image.open(r["grid"]) as im:
            assert im.size[0] > 16 and im.mode == "RGB"
        assert r["fid"] >= 0 and r["fid/peer"] >= 0 and 0 <= r["precision"] <= 1
    peer = next(r for r in rows if r["arm"] == "peer")
    assert peer["parameters"] == 2_610_883  # Unet(dim=32, dim_mults=(1, 2, 4)), as in the issue
    assert {row["sampler"] for row in results["sweep"]} == {"ddim", "dpmpp2m", "heun"}
    assert "grids:" in proc.stdout
