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
    assert list(results["sets"]) == ["demo"]
    rows = results["sets"]["demo"]["arms"]
    assert [r["arm"] for r in rows] == arms
    for r in rows:
        assert r["steps"] == 2 and r["batch"] == 4 and r["images_per_s"] > 0 and r["parameters"] > 0
        with Image.open(r["grid"]) as im:
            assert im.size[0] > 16 and im.mode == "RGB"
        assert r["fid"] >= 0 and 0 <= r["precision"] <= 1
    assert all(r["fid/peer"] >= 0 and r["fid/classic"] >= 0 for r in results["sets"]["demo"]["summary"])
    peer = next(r for r in rows if r["arm"] == "peer")
    assert peer["parameters"] == 2_610_883  # Unet(dim=32, dim_mults=(1, 2, 4)), as in the issue
    assert {row["sampler"] for row in results["sets"]["demo"]["sweep"]} == {"ddim", "dpmpp2m", "heun"}
    assert "grids:" in proc.stdout


def test_arm_syntax_takes_batch_any_recipe_and_the_peers_lr_sweep(monkeypatch):
    q = _load_bench()
    arms = q.parse_arms("fast~6e-4/64,fast/16,peer~3e-4/64,classic@tiny/8")
    assert [(a.recipe, a.preset, a.lr, a.batch, a.slug) for a in arms] == [
        ("fast", q.FAST_PRESET, 6e-4, 64, "fast-lr6e-4-b64"), ("fast", q.FAST_PRESET, None, 16, "fast-b16"),
        ("peer", None, 3e-4, 64, "peer-lr3e-4-b64"), ("classic", "tiny", None, 8, "classic-tiny-b8")]
    config = q._train_config(arms[0], Path("/d"), argparse.Namespace(image_size=32, minutes=1, seed=0, smoke=False))
    assert (config["lr"], config["batch_size"]) == (6e-4, 64)
    for bad in ("fast/0", "fast/x", "fast/64~1e-3", "peer/99999"):
        with pytest.raises(q.BenchError, match="batch size"):
            q.parse_arms(bad)
    # any recipe of core.training.options.RECIPES is an arm, on the fast arm's network by default
    from core.training import options

    monkeypatch.setitem(options.RECIPES, "edm", {"lr": 1e-3})
    assert [(a.recipe, a.preset) for a in q.parse_arms("edm,edm@res-tiny~1e-3")] == [
        ("edm", q.FAST_PRESET), ("edm", "res-tiny")]
    # --peer-lrs: each peer arm without ~LR becomes one per rate (its batch kept); one is added if none is listed
    names = [a.name for a in q.parse_arms("fast,peer/64,peer~1e-4", peer_lrs="8e-5, 3e-4")]
    assert names == ["fast", "peer~8e-5/64", "peer~3e-4/64", "peer~1e-4"]
    assert [a.name for a in q.parse_arms("fast", peer_lrs="8e-5,1e-3")] == ["fast", "peer~8e-5", "peer~1e-3"]
    for lrs in ("abc", "0", "1e-4,1e-4"):
        with pytest.raises(q.BenchError, match="learning rate|listed twice"):
            q.parse_arms("peer", peer_lrs=lrs)


def test_repeat_interleaves_and_tables_take_medians_and_the_best_peer(capsys):
    q = _load_bench()
    a, b = q.parse_arms("classic,fast")
    assert [(k, arm.name) for k, arm in q.schedule([a, b], 3)] == [
        (0, "classic"), (0, "fast"), (1, "classic"), (1, "fast"), (2, "classic"), (2, "fast")]
    rows = [{"arm": "classic", "recipe": "classic", "fid": 10.0, "steps": 5}, {"arm": "fast", "recipe": "fast", "fid": 4.0},
            {"arm": "fast@ema0.1", "recipe": "fast", "fid": 3.0}, {"arm": "peer~8e-5", "recipe": "peer", "fid": 40.0},
            {"arm": "peer~1e-3", "recipe": "peer", "fid": 20.0},
            {"arm": "classic", "recipe": "classic", "fid": 14.0, "steps": 7}, {"arm": "fast", "recipe": "fast", "fid": 6.0},
            {"arm": "classic", "recipe": "classic", "fid": 11.0, "steps": 6}]
    summary = {r["arm"]: r for r in q.summarise(rows)}
    assert list(summary) == ["classic", "fast", "fast@ema0.1", "peer~8e-5", "peer~1e-3"]
    c = summary["classic"]
    assert (c["fid"], c["fids"], c["steps"], c["repeats"]) == (11.0, "10 14 11", 6, 3)
    assert summary["fast"]["fid"] == 5.0 and summary["fast"]["fid/classic"] == pytest.approx(5 / 11)
    assert summary["fast"]["fid/peer"] == pytest.approx(5 / 20)  # the peer at its best lr: 1e-3
    assert summary["peer~8e-5"]["fid/peer"] == 2.0 and summary["fast@ema0.1"]["fid/peer"] == pytest.approx(0.15)
    q.print_summary("strokes", list(summary.values()), scored=True, repeat=3)
    out = capsys.readouterr().out
    assert "== strokes; fid/peer: against peer~1e-3 (the peer at its best swept lr); fid/classic: against classic" in out
    assert "10 14 11" in out and "fid/classic" in out.splitlines()[1]


def test_command_line_parses_suite_repeat_ema_lengths_and_sampler(capsys):
    q = _load_bench()
    args = q.parse_args(["--suite", "demo,strokes", "--repeat", "3", "--ema-lengths", "0.05,0.2", "--sampler", "heun",
                         "--sample-steps", "20"])
    assert (args.suite, args.repeat, args.ema_lengths, args.sampler, args.sample_steps) == (
        "demo,strokes", 3, (0.05, 0.2), "heun", 20)
    # Defaults are the product's drawing defaults; the peer keeps its DDIM-50 whatever ours use.
    from core.diffusion.registry import DEFAULT_SAMPLER, default_steps

    plain = q.parse_args([])
    assert (plain.sampler, plain.sample_steps, plain.peer_sample_steps) == (
        DEFAULT_SAMPLER, default_steps(DEFAULT_SAMPLER), 50)
    assert q.parse_args(["--sampler", "ddim"]).sample_steps == default_steps("ddim")
    for argv, msg in [(["--repeat", "0"], "--repeat"), (["--ema-lengths", "0.05,x"], "ema-lengths"),
                      (["--ema-lengths", "1.5"], "ema-lengths"), (["--suite", "demo", "--data", "x"], "give one")]:
        with pytest.raises(SystemExit):
            q.parse_args(argv)
        assert msg in capsys.readouterr().err
    assert "--peer-lrs" in q.parser().format_help() and "strokes" in q.parser().format_help()


def test_unknown_set_sampler_or_missing_post_hoc_ema_is_one_line(tmp_path, capsys):
    q = _load_bench()
    assert q.main(["--smoke", "--arms", "fast", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    assert "neither a dev set (demo, strokes, textures) nor a folder" in capsys.readouterr().err
    assert q.main(["--smoke", "--arms", "fast", "--sampler", "euler9", "--out", str(tmp_path)]) == 2
    assert "--sampler 'euler9'" in capsys.readouterr().err
    if not q.has_ema_length():
        assert q.main(["--smoke", "--arms", "fast", "--ema-lengths", "0.1", "--out", str(tmp_path)]) == 2
        assert "post-hoc EMA" in capsys.readouterr().err


@pytest.mark.slow
def test_smoke_suite_runs_the_arms_on_each_dev_set(tmp_path):
    pytest.importorskip("denoising_diffusion_pytorch", reason="the peer needs the bench extra")
    pytest.importorskip("ema_pytorch", reason="the peer needs the bench extra")
    cmd = [sys.executable, "-m", "bench.quality", "--smoke", "--out", str(tmp_path), "--suite", "strokes,textures",
           "--arms", "classic,fast,peer/4", "--peer-lrs", "1e-4,1e-3"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["sets"]) == ["strokes", "textures"]
    for name, found in results["sets"].items():
        assert found["data"] == str(tmp_path / "work" / name)
        assert [r["arm"] for r in found["summary"]] == ["classic", "fast", "peer~1e-4/4", "peer~1e-3/4"]
        best = min(found["summary"][2:], key=lambda r: r["fid"])
        for r in found["summary"]:
            assert r["fid/peer"] == pytest.approx(r["fid"] / best["fid"]) and r["fid/classic"] > 0
        assert f"== {name}; fid/peer: against {best['arm']}" in proc.stdout
        assert (tmp_path / name / "fast.png").is_file()


def test_arm_options_set_any_training_option():
    """+OPTION=VALUE reaches the trainer's config, parsed as `train` parses it; bad ones are one line."""
    quality = _load_bench()
    (arm,) = quality.parse_arms("fast~6e-4+ema_warmup=3+grad-clip=0.5")
    assert arm.options == (("ema_warmup", 3), ("grad_clip", 0.5)) and arm.slug == "fast-lr6e-4_ema_warmup3_grad-clip0.5"
    cfg = quality._train_config(arm, Path("/d"), argparse.Namespace(image_size=32, minutes=1, seed=0, smoke=False))
    assert (cfg["ema_warmup"], cfg["grad_clip"], cfg["lr"]) == (3, 0.5, 6e-4)
    for bad, says in (("fast+nope=1", "not OPTION=VALUE"), ("fast+ema_warmup=x", "not an integer"),
                      ("fast+lr", "not OPTION=VALUE"), ("peer+lr=1e-3", "peer's settings are fixed")):
        with pytest.raises(quality.BenchError, match=says):
            quality.parse_arms(bad)
