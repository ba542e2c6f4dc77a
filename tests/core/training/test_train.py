"""The trainer, in process, on tiny generated datasets: exact resume, refusing a changed
model, NaN/inf and out-of-memory handling, broken files, budgets, the run directory."""

from __future__ import annotations

import json
import struct
import threading
import zlib
import os
from pathlib import Path
from typing import get_type_hints

import numpy as np
import pytest
import torch
from PIL import Image

import core.training.build as build_mod
import core.training.records as records_mod
import core.training.saving as saving_mod
from core.training import events, runs
from core.diffusion.checkpoint import load_checkpoint
from core.diffusion.unet import get_preset
from core.training.train import TrainConfig, TrainError, epoch_order, train, weights_digest


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make_dataset(root: Path, breeds=("beagle", "pug"), per_breed: int = 8, seed: int = 0) -> Path:
    """Breed folders of small PNGs: a coloured square on a background, one colour per breed."""
    rng = np.random.default_rng(seed)
    for b, breed in enumerate(breeds):
        (root / breed).mkdir(parents=True, exist_ok=True)
        for i in range(per_breed):
            img = np.full((20, 20, 3), 40 + 60 * b, dtype=np.uint8)
            x, y = rng.integers(0, 10, size=2)
            img[y : y + 8, x : x + 8] = (200, 80 + 40 * b, 60)
            Image.fromarray(img).save(root / breed / f"{i:02d}.png")
    return root


def tiny(data: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), preset="tiny", image_size=16, T=50, batch_size=4, epochs=2,
                save_frequency=1, samples=2, sample_steps=2, log_every=1, amp="off", workers=1)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "dogs")


def test_config_round_trip_and_validation():
    cfg = TrainConfig(data="/d", preset="tiny", image_size=32, conditional=True, max_time=60.0)
    again = TrainConfig.from_dict(json.loads(json.dumps({**cfg.to_dict(), "classes": ["a"], "model": {}})))
    assert again == cfg
    with pytest.raises(ValueError, match="unknown train option.*bogus"):
        TrainConfig.from_dict({"bogus": 1})
    for bad, match in (({"lr": 0}, "lr"), ({"batch_size": 0}, "batch_size"), ({"preset": "huge"}, "huge"),
                       ({"amp": "fp8"}, "amp"), ({"label_dropout": 1.0}, "label_dropout"),
                       ({"image_size": 20}, "divisible")):
        with pytest.raises(ValueError, match=match):
            TrainConfig(**{"data": "/d", "preset": "tiny", **bad}).validate()


def test_epoch_order_shards_partition_the_permutation():
    full = epoch_order(10, seed=3, epoch=1)
    assert sorted(full.tolist()) == list(range(10))
    assert not torch.equal(full, epoch_order(10, seed=3, epoch=2))  # a new order each epoch
    shards = [epoch_order(10, seed=3, epoch=1, rank=r, world_size=3) for r in range(3)]
    assert {len(s) for s in shards} == {4}  # padded by wrapping, like DistributedSampler
    assert set(torch.cat(shards).tolist()) == set(range(10))


def test_train_writes_the_run_directory(tmp_path: Path, data: Path):
    events = []
    final = train(tiny(data, conditional=True), tmp_path / "run", progress=events.append, examples=True)
    run = tmp_path / "run"
    assert final["state"] == "finished" and final["step"] == 8 and final["epoch"] == 2
    status = runs.read_status(run)
    assert status["state"] == "finished" and status["step"] == 8
    config = runs.read_config(run)
    assert config["classes"] == ["beagle", "pug"] and config["model"]["num_classes"] == 2
    records, _ = runs.read_metrics(run)
    assert [r["step"] for r in records] == list(range(1, 9))
    assert all(r["loss"] > 0 and r["images_per_s"] > 0 and "device_mem_mb" in r for r in records)
    names = sorted(p.name for p in runs.samples_dir(run).iterdir())
    assert names == ["ema_epoch_0001.png", "ema_epoch_0002.png", "epoch_0001.png", "epoch_0002.png"]
    assert Image.open(runs.samples_dir(run) / "epoch_0002.png").size == (2 * 16 + 3 * 2, 16 + 2 * 2)
    assert (run / "examples.png").is_file() and (run / "forward_diffusion.png").is_file()
    log = (run / runs.LOG_FILE).read_text()
    assert "starting run run" in log and "saved checkpoint at step 8" in log
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["step"] == 8 and ckpt["extra"]["classes"] == ["beagle", "pug"]
    assert ckpt["ema"]["num_updates"] == 8 and ckpt["optimizer"]["state"]
    assert {e["event"] for e in events} >= {"loading", "step", "saving", "sampling", "wrote"}
    # The EMA and the raw grids come from different weights.
    raw = np.asarray(Image.open(runs.samples_dir(run) / "epoch_0002.png"))
    ema = np.asarray(Image.open(runs.samples_dir(run) / "ema_epoch_0002.png"))
    assert not np.array_equal(raw, ema)


def assert_bitwise_equal(a, b, where: str = "") -> None:
    """Nested dicts/lists of tensors and plain values, equal bit for bit (NaN == NaN)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_bitwise_equal(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_bitwise_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a.view(torch.uint8) if a.dim() else a.reshape(1).view(torch.uint8),
                           b.view(torch.uint8) if b.dim() else b.reshape(1).view(torch.uint8)), where
    else:
        assert a == b, where


@pytest.mark.slow
@pytest.mark.parametrize("ema_kind", ["exp", "power"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU"))])
def test_resume_is_exact(tmp_path: Path, data: Path, device: str, ema_kind: str):
    """N steps, a stop, N more steps == 2N steps in one go (weights, EMA, optimizer). On
    CUDA that takes --deterministic (the README says when resume is bit-exact). With the
    power EMA both profiles are exact too, and each save left its EMA snapshot."""
    cfg = tiny(data, epochs=3, conditional=True, grad_clip=1.0, device=device, ema_kind=ema_kind,
               ema_length=0.07, deterministic=device != "cpu")  # 4 steps an epoch, 12 in all
    straight = train(cfg, tmp_path / "straight")
    assert straight["step"] == 12

    stop = threading.Event()

    def stop_at_step_5(event):
        if event.get("event") == "step" and event["step"] >= 5:
            stop.set()

    first = train(cfg, tmp_path / "resumed", progress=stop_at_step_5, stop_event=stop)
    assert first["state"] == "stopped" and first["step"] == 6  # finishes the step it was in
    ckpt = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert (ckpt["step"], ckpt["epoch"], ckpt["extra"]["pos"]) == (6, 1, 8)  # mid-epoch
    second = train(cfg, tmp_path / "resumed")
    assert second["state"] == "finished" and second["step"] == 12

    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert_bitwise_equal(a["model"], b["model"])
    # The power EMA's "shadow" (the 0.07 average, for readers of the exponential EMA's field) is
    # rebuilt from the snapshots, and the interrupted run has one more (step 6): the state is exact.
    assert_bitwise_equal({k: v for k, v in a["ema"].items() if k != "shadow" or ema_kind == "exp"},
                         {k: v for k, v in b["ema"].items() if k != "shadow" or ema_kind == "exp"})
    assert_bitwise_equal(a["optimizer"], b["optimizer"])  # every state tensor, step counts, hyper-parameters
    if ema_kind == "power":
        assert a["ema"]["kind"] == "power" and a["ema"]["num_updates"] == 12
        snaps = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints" / "ema").iterdir())
        assert snaps == ["ema_0000004.safetensors", "ema_0000006.safetensors", "ema_0000008.safetensors",
                         "ema_0000012.safetensors"]  # each epoch's save, and the stop's
        from core.diffusion.safetensors_file import read_tensors

        straight_snap, _ = read_tensors(tmp_path / "straight" / "checkpoints" / "ema" / snaps[2])
        resumed_snap, meta = read_tensors(tmp_path / "resumed" / "checkpoints" / "ema" / snaps[2])
        assert_bitwise_equal(straight_snap, resumed_snap)
        assert (meta["step"], meta["num_updates"]) == ("8", "8")
        # The trainer's own 0.07 (grids, evaluations, the checkpoint's shadow) is rebuilt from
        # the snapshots too, as sample --ema-length 0.07 rebuilds it later.
        from core.diffusion.ema_snapshots import power_ema_weights

        assert_bitwise_equal(b["ema"]["shadow"], power_ema_weights(b, 0.07))
    # The resumed run's log says where it continued from; its metrics cover every step.
    assert "continuing from step 6" in (tmp_path / "resumed" / "train.log").read_text()
    steps = [r["step"] for r in runs.read_metrics(tmp_path / "resumed")[0]]
    assert steps == list(range(1, 13))


def test_changed_model_config_is_refused(tmp_path: Path, data: Path):
    run = tmp_path / "run"
    train(tiny(data, epochs=1), run)
    before = (run / "status.json").read_text()
    with pytest.raises(TrainError, match=r"image_size: checkpoint 16 vs expected 32") as info:
        train(tiny(data, epochs=2, image_size=32, T=60), run)
    assert "T: checkpoint 50 vs expected 60" in str(info.value)
    assert (run / "status.json").read_text() == before  # a refused start changes nothing
    # Training options may change: more epochs continue the run.
    assert train(tiny(data, epochs=2, lr=1e-4), run)["step"] == 8
    # A finished run asked for nothing more says so.
    assert "already finished" in train(tiny(data, epochs=2), run)["message"]


def test_changing_the_ema_kind_on_resume_is_refused(tmp_path: Path, data: Path):
    run = tmp_path / "run"
    train(tiny(data, epochs=1, samples=0), run)  # exp, the classic default
    with pytest.raises(TrainError, match="ema_kind: run has 'exp', asked for 'power'"):
        train(tiny(data, epochs=2, samples=0, ema_kind="power"), run)
    # --ema-length may change: it only picks among the averages.
    power = tmp_path / "power"
    train(tiny(data, epochs=1, samples=0, ema_kind="power"), power)
    assert train(tiny(data, epochs=2, samples=0, ema_kind="power", ema_length=0.05), power)["step"] == 8
    assert load_checkpoint(power / "checkpoints" / "last.pt")["ema"]["length"] == 0.05


def test_conditional_resume_keeps_its_breeds(tmp_path: Path, data: Path):
    run = tmp_path / "run"
    train(tiny(data, epochs=1, conditional=True, samples=0), run)
    make_dataset(data, breeds=("corgi",), per_breed=4)  # a breed added after the run started
    final = train(tiny(data, epochs=2, conditional=True, samples=0), run)
    assert final["state"] == "finished" and final["step"] == 8  # still 16 images: corgi is not a class
    assert runs.read_config(run)["classes"] == ["beagle", "pug"]
    assert "corgi is not one of this run's classes" in (run / "train.log").read_text()


class _NanAfter(build_mod.UNet):
    """A network whose output turns NaN on chosen forward calls."""

    calls = 0
    nan_calls: set[int] = set()

    def forward(self, x, t, labels=None):
        out = super().forward(x, t, labels)
        type(self).calls += 1
        return out * float("nan") if type(self).calls in type(self).nan_calls else out


def test_nan_steps_are_skipped_then_the_run_fails(tmp_path: Path, data: Path, monkeypatch):
    monkeypatch.setattr(build_mod, "UNet", _NanAfter)
    # Two bad steps in a row: skipped, counted, training goes on.
    _NanAfter.calls, _NanAfter.nan_calls = 0, {3, 4}
    final = train(tiny(data, epochs=2, samples=0), tmp_path / "ok")
    assert final["state"] == "finished" and final["nonfinite_skipped"] == 2
    ckpt = load_checkpoint(tmp_path / "ok" / "checkpoints" / "last.pt")
    assert ckpt["ema"]["num_updates"] == 6  # 8 steps, 2 skipped
    records = {r["step"]: r for r in runs.read_metrics(tmp_path / "ok")[0]}
    assert "loss" not in records[3] and records[3]["skipped"] == 1 and records[5]["loss"] > 0
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())

    # Five in a row: the last good weights are saved and the run fails with the reason.
    _NanAfter.calls, _NanAfter.nan_calls = 0, set(range(3, 100))
    final = train(tiny(data, epochs=5, samples=0), tmp_path / "bad")
    assert final["state"] == "failed" and "NaN/inf for 5 steps in a row" in final["message"]
    assert runs.read_status(tmp_path / "bad")["state"] == "failed"
    ckpt = load_checkpoint(tmp_path / "bad" / "checkpoints" / "last.pt")
    assert ckpt["step"] == 7 and ckpt["ema"]["num_updates"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


class _NanWeights(build_mod.UNet):
    """A network whose weights turn NaN on a chosen forward call (so every later loss is NaN)."""

    calls = 0

    def forward(self, x, t, labels=None):
        type(self).calls += 1
        if type(self).calls == 3:
            with torch.no_grad():
                next(self.parameters()).fill_(float("nan"))
        return super().forward(x, t, labels)


def test_nan_guard_does_not_save_nan_weights_as_good(tmp_path: Path, data: Path):
    before = build_mod.UNet
    build_mod.UNet, _NanWeights.calls = _NanWeights, 0
    try:
        final = train(tiny(data, epochs=5, samples=0, save_frequency=100), tmp_path / "run")
    finally:
        build_mod.UNet = before
    assert final["state"] == "failed"
    assert "saved the last good weights" not in final["message"]
    assert "NaN too and were not saved" in final["message"] and "last checkpoint on disk: none" in final["message"]
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_out_of_memory_fails_with_batch_size_advice(tmp_path: Path, data: Path, monkeypatch):
    class _Oom(build_mod.UNet):
        def forward(self, x, t, labels=None):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(build_mod, "UNet", _Oom)
    final = train(tiny(data, batch_size=8), tmp_path / "run")
    assert final["state"] == "failed" and "--batch_size (e.g. 4)" in final["message"]
    assert runs.read_status(tmp_path / "run")["state"] == "failed"


def _png_bomb(path: Path, width: int = 30000, height: int = 30000) -> None:
    """A PNG whose header claims a huge image (what a decompression bomb looks like)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_broken_files_are_skipped_and_reported(tmp_path: Path, data: Path):
    good = data / "beagle" / "00.png"
    Image.open(good).convert("RGB").save(data / "beagle" / "whole.jpg", quality=90)
    jpeg = (data / "beagle" / "whole.jpg").read_bytes()
    (data / "beagle" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (data / "pug" / "empty.jpg").write_bytes(b"")
    (data / "pug" / "notes.jpg").write_text("this is not a picture of a dog\n")
    _png_bomb(data / "pug" / "bomb.png")
    events = []
    final = train(tiny(data, epochs=1, batch_size=17), tmp_path / "run", progress=events.append)
    assert final["state"] == "finished"
    assert runs.read_config(tmp_path / "run")["num_images"] == 17  # 16 + whole.jpg
    reported = [e for e in events if e["event"] == "bad_files"][0]["files"]
    assert sorted(Path(p).name for p, _ in reported) == ["bomb.png", "empty.jpg", "notes.jpg", "truncated.jpg"]
    log = (tmp_path / "run" / "train.log").read_text()
    for name in ("bomb.png", "empty.jpg", "notes.jpg", "truncated.jpg"):
        assert name in log
        assert (data / ("pug" if name != "truncated.jpg" else "beagle") / name).exists()  # never deleted
    assert runs.read_status(tmp_path / "run")["bad_files"] == 4


def test_a_failed_save_keeps_training_and_is_reported(tmp_path: Path, data: Path, monkeypatch):
    from core.diffusion.checkpoint import CheckpointError

    real = saving_mod.save_checkpoint
    calls = []

    def full_disk_after_first(path, **kw):
        calls.append(kw["step"])
        if len(calls) > 1:
            raise CheckpointError(f"could not write checkpoint {path}: No space left on device")
        real(path, **kw)

    monkeypatch.setattr(saving_mod, "save_checkpoint", full_disk_after_first)
    final = train(tiny(data, epochs=3, samples=0), tmp_path / "run")
    # Training went on after the failed save at step 8; the end retried once more.
    assert calls == [4, 8, 12, 12]
    assert final["state"] == "failed"
    assert "No space left on device" in final["message"] and "last checkpoint on disk: step 4" in final["message"]
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 4  # the old one, intact


def test_budgets_save_and_stop(tmp_path: Path, data: Path):
    # A step budget mid-epoch finishes the run, with a checkpoint and samples named by step.
    final = train(tiny(data, epochs=5, max_steps=3), tmp_path / "steps")
    assert final["state"] == "finished" and final["step"] == 3 and "max_steps 3" in final["message"]
    assert load_checkpoint(tmp_path / "steps" / "checkpoints" / "last.pt")["step"] == 3
    assert (tmp_path / "steps" / "samples" / "ema_step_0000003.png").is_file()
    # A time budget stops (resumable) after the step in progress.
    final = train(tiny(data, epochs=5, max_time=1e-6, samples=0), tmp_path / "time")
    assert final["state"] == "stopped" and final["step"] == 1 and "time budget" in final["message"]
    assert load_checkpoint(tmp_path / "time" / "checkpoints" / "last.pt")["step"] == 1


def test_milestones_and_step_checkpoints(tmp_path: Path, data: Path):
    final = train(tiny(data, epochs=3, keep_milestones=2, save_every_steps=3, samples=0), tmp_path / "run")
    assert final["step"] == 12
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["epoch_0002.pt", "epoch_0003.pt", "last.pt"]
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "epoch_0002.pt")["step"] == 8


def test_missing_dataset_and_running_run_are_refused(tmp_path: Path, data: Path):
    with pytest.raises(TrainError, match="does not exist"):
        train(tiny(tmp_path / "nowhere"), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing written for a start that cannot happen
    run = tmp_path / "busy"
    run.mkdir()
    runs.write_status(run, state="running", pid=1, host=None)  # pid 1 is alive
    with pytest.raises(TrainError, match="already training"):
        train(tiny(data), run)


def test_weights_digest_tells_weights_apart():
    a = build_mod.UNet(get_preset("tiny", image_size=16))
    b = build_mod.UNet(get_preset("tiny", image_size=16))
    b.load_state_dict(a.state_dict())
    assert weights_digest(a) == weights_digest(b)
    with torch.no_grad():
        next(b.parameters()).view(-1)[0] += 1e-6
    assert weights_digest(a) != weights_digest(b)


@pytest.mark.parametrize("extra", [{"amp": "bf16"}, {"channels_last": True}, {"amp": "bf16", "channels_last": True}],
                         ids=["bf16", "channels_last", "bf16+channels_last"])
def test_trainer_end_to_end_with_bf16_and_channels_last(tmp_path: Path, data: Path, extra):
    final = train(tiny(data, epochs=1, **extra), tmp_path / "run")
    assert final["state"] == "finished" and final["step"] == 4
    records, _ = runs.read_metrics(tmp_path / "run")
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in records)
    log = (tmp_path / "run" / runs.LOG_FILE).read_text()
    assert ("amp bfloat16" in log) == (extra.get("amp") == "bf16")
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in ckpt["model"].values())


def _compile_works() -> str:
    """'' when torch.compile can build a kernel here, else why not."""
    try:
        fn = torch.compile(lambda x: torch.sin(x) * 2)
        fn(torch.ones(3))
    except Exception as exc:  # no C++ compiler, unsupported Python, ...
        return f"torch.compile does not work on this machine: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return ""


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_trainer_end_to_end_with_compile(tmp_path: Path, data: Path):
    import os

    if not torch.cuda.is_available() and os.environ.get("DDPM_TUI_COMPILE_TEST") != "1":
        pytest.skip("compiling the UNet's training step takes over 5 minutes on a small CPU-only machine; "
                    "set DDPM_TUI_COMPILE_TEST=1 to run it here")
    why = _compile_works()
    if why:
        pytest.skip(why)
    final = train(tiny(data, epochs=1, compile=True, samples=0), tmp_path / "run")
    assert final["state"] == "finished" and final["step"] == 4
    plain = train(tiny(data, epochs=1, samples=0), tmp_path / "plain")
    assert plain["step"] == 4
    # The compiled network is the same network: its checkpoint loads into a plain UNet.
    a = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "plain" / "checkpoints" / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-3, atol=1e-4)


def test_nan_steps_are_counted_at_the_metrics_line(tmp_path: Path, data: Path, monkeypatch):
    """The step never reads the loss on the host: with a metrics line every 10 steps the
    skipped steps are still skipped on the device, then counted, and the EMA's count agrees."""
    monkeypatch.setattr(build_mod, "UNet", _NanAfter)
    _NanAfter.calls, _NanAfter.nan_calls = 0, {2, 6}
    final = train(tiny(data, epochs=2, samples=0, log_every=10), tmp_path / "run")
    assert final["state"] == "finished" and final["nonfinite_skipped"] == 2
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["ema"]["num_updates"] == 6
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert all(torch.isfinite(v).all() for v in ckpt["ema"]["shadow"].values())
    records = runs.read_metrics(tmp_path / "run")[0]
    assert [(r["step"], r["skipped"]) for r in records] == [(4, 1), (8, 1)]  # a line per epoch end
    # The skipped steps did not move the optimizer: its step count is the trained steps.
    assert {float(state["step"]) for state in ckpt["optimizer"]["state"].values()} == {6.0}


def test_eval_every_scores_the_ema_weights_into_eval_jsonl(data, tmp_path):
    from core.quality import eval_log

    run_dir = tmp_path / "runs" / "ev"
    final = train(tiny(data, eval_every=4, eval_n=6, cache_dir=str(tmp_path / "cache")), run_dir)
    assert final["state"] == "finished"
    records, _ = eval_log.read_eval(run_dir)
    fid_steps = sorted(r["step"] for r in records if r["metric"] == "fid")
    assert fid_steps == [4, 8]  # 16 images, batch 4: 4 steps an epoch, 2 epochs
    assert {r["n"] for r in records} == {6} and all(np.isfinite(r["value"]) for r in records)
    log = (run_dir / "train.log").read_text()
    assert "evaluation at step 4" in log and "evaluation at step 8" in log


def test_batches_built_on_the_device_train_the_same_weights(tmp_path: Path, data: Path, monkeypatch):
    """The resident-data path (core.data.dataset.DeviceBatches: gather, flip and convert where the
    network runs) trains bit for bit what the host path trains: same indices, flips and
    label dropout from the same generators. On the CPU both run here; on a GPU the first."""
    from core.data.dataset import DeviceBatches

    cfg = tiny(data, epochs=2, conditional=True, samples=0)
    train(cfg, tmp_path / "host")
    assert "data: the decoded images" in (tmp_path / "host" / "train.log").read_text()
    monkeypatch.setattr(build_mod, "batches_on",
                        lambda dataset, device: (DeviceBatches.from_dataset(dataset, device), "data: resident (test)"))
    train(cfg, tmp_path / "resident")
    assert "data: resident (test)" in (tmp_path / "resident" / "train.log").read_text()
    a = load_checkpoint(tmp_path / "host" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "resident" / "checkpoints" / "last.pt")
    assert_bitwise_equal(a["model"], b["model"])
    assert_bitwise_equal(a["optimizer"], b["optimizer"])


def test_deterministic_sets_the_kernel_switches_for_the_run_only(tmp_path: Path, data: Path):
    seen = []

    def look(event):
        if event.get("event") == "step":
            seen.append((torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
                         torch.backends.cudnn.benchmark))

    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)
    final = train(tiny(data, epochs=1, deterministic=True), tmp_path / "det", progress=look)  # sample grids too
    assert final["state"] == "finished" and seen and set(seen) == {(True, True, False)}
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] in (":4096:8", ":16:8")
    assert "kernels: deterministic kernels" in (tmp_path / "det" / "train.log").read_text()
    assert runs.read_config(tmp_path / "det")["deterministic"] is True
    seen.clear()
    train(tiny(data, epochs=1, samples=0), tmp_path / "fast", progress=look)
    assert set(seen) == {(False, False, True)}  # cuDNN autotuning without it
    after = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    assert after == before  # process-wide switches: restored when train() returns


class _CountingWrapper(torch.nn.Module):
    """Stands in for torch.compile's wrapper: forwards, and counts the calls."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


def test_compile_is_announced_timed_and_cached_in_the_workspace(tmp_path: Path, data: Path, monkeypatch):
    """--compile's first step (and the first step of each new batch size) is said before,
    timed and said after, in train.log, status.json and the progress events; the compile
    cache goes under the workspace's cache/ unless TORCHINDUCTOR_CACHE_DIR is set."""
    wrapped = []
    monkeypatch.setattr(build_mod, "compile_network", lambda m: wrapped.append(_CountingWrapper(m)) or wrapped[-1])
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    events: list[dict] = []
    cache = tmp_path / "ws" / "cache"
    # 16 images, batch 5: steps of 5, 5, 5 and 1 image(s) an epoch: two batch sizes.
    cfg = tiny(data, epochs=2, batch_size=5, samples=0, compile=True, log_every=2, cache_dir=str(cache))
    final = train(cfg, tmp_path / "run", progress=events.append)
    assert final["state"] == "finished" and final["step"] == 8 and wrapped[0].calls == 8
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(cache / build_mod.COMPILE_CACHE_DIR)
    assert (cache / build_mod.COMPILE_CACHE_DIR).is_dir()
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"compile cache in {cache / build_mod.COMPILE_CACHE_DIR}" in log
    assert "compiling the network (first step)..." in log and "compiling the network (batch of 1)..." in log
    assert log.count("compiled in ") == 2  # once per batch size, not again in epoch 2
    kinds = [(e["event"], e.get("what")) for e in events if e["event"] in ("compiling", "compiled")]
    assert kinds == [("compiling", "first step"), ("compiled", "first step"),
                     ("compiling", "batch of 1"), ("compiled", "batch of 1")]
    status = runs.read_status(tmp_path / "run")
    assert status["compile_s"] >= 0 and status["state"] == "finished"
    # The compile steps are left out of images/s where the window has other steps.
    records = runs.read_metrics(tmp_path / "run")[0]
    assert [r["step"] for r in records] == [2, 4, 6, 8] and all(r["images_per_s"] > 0 for r in records)
    # A user's TORCHINDUCTOR_CACHE_DIR is kept.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    train(tiny(data, epochs=1, samples=0, compile=True, cache_dir=str(cache)), tmp_path / "run2")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")
    assert f"compile cache in {tmp_path / 'mine'}" in (tmp_path / "run2" / "train.log").read_text()


def test_routine_status_writes_leave_the_training_thread(tmp_path: Path, data: Path, monkeypatch):
    """The per-metrics-line status.json writes (two fsyncs each) are done by a writer thread;
    forced ones (start, saves, the end) in order after them, so the last word is the end."""
    writes = []
    real = runs.write_status

    def spy(run_dir, **fields):
        writes.append((threading.current_thread().name, "images_per_s" in fields))
        return real(run_dir, **fields)

    monkeypatch.setattr(runs, "write_status", spy)
    monkeypatch.setattr(records_mod, "STATUS_EVERY_S", 0.0)  # a routine write at every metrics line
    final = train(tiny(data, epochs=2, samples=0), tmp_path / "run")
    assert final["state"] == "finished"
    routine = {name for name, per_line in writes if per_line}
    assert routine == {"ddpm-status-writer"}
    assert writes[-1] == ("MainThread", False)  # the final status, written last
    assert runs.read_status(tmp_path / "run")["state"] == "finished"
    assert [r["step"] for r in runs.read_metrics(tmp_path / "run")[0]] == list(range(1, 9))


# -- the contract of events and status.json (core/training/events.py) ---------------------------


def check_keys(record: dict, contract: type) -> None:
    """``record`` has every key ``contract`` requires and none it does not declare."""
    assert contract.__required_keys__ <= record.keys(), (contract.__name__, record)
    assert record.keys() <= contract.__required_keys__ | contract.__optional_keys__, (contract.__name__, record)


def test_the_event_kinds_and_their_types_are_declared_once():
    assert set(events.EVENT_TYPES) == set(events.EVENT_KINDS)
    for kind, cls in events.EVENT_TYPES.items():
        assert get_type_hints(cls)["event"].__args__ == (kind,)
    assert runs.RUN_STATES == events.RUN_STATES


def test_every_event_the_trainer_emits_is_declared(tmp_path: Path, monkeypatch):
    data = make_dataset(tmp_path / "dogs")
    (data / "pug" / "broken.jpg").write_bytes(b"not an image")  # a bad_files event
    # A stand-in for torch.compile: the compiling/compiled events without minutes of compiling.
    monkeypatch.setattr(build_mod, "compile_network", lambda model: model)
    seen: list[dict] = []
    cfg = tiny(data, epochs=2, compile=True, eval_every=8, eval_n=4, cache_dir=str(tmp_path / "cache"))
    final = train(cfg, tmp_path / "run", progress=seen.append, examples=True)
    assert final["state"] == events.FINISHED
    for event in seen:
        assert event["event"] in events.EVENT_KINDS, event
        check_keys(event, events.EVENT_TYPES[event["event"]])
    assert {e["event"] for e in seen} == set(events.EVENT_KINDS)  # this run goes through every kind
    status = runs.read_status(tmp_path / "run")
    assert status["state"] in events.RUN_STATES
    assert status.keys() <= events.RunStatus.__optional_keys__, status.keys() - events.RunStatus.__optional_keys__
    assert final.keys() <= events.RunStatus.__optional_keys__
    assert status["step"] == final["step"] == 8
