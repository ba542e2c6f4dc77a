"""Checkpoints: bit-identical round trip, atomic writes, and clear refusals of bad files."""

from __future__ import annotations

import os
import pickle
import random
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import core.diffusion.checkpoint as ckpt_mod
from core.diffusion.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    build_model_from_checkpoint,
    capture_rng_state,
    check_compatible,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from core.diffusion.process import Diffusion, DiffusionConfig
from core.diffusion.ema import EMA
from core.diffusion.unet import UNet, get_preset


def _train_steps(model, opt, ema, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(2, 3, 16, 16, generator=g)
        t = torch.randint(0, 1000, (2,), generator=g)
        loss = model(x, t).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update(model)


def _make_state(seed: int = 0):
    torch.manual_seed(seed)
    model = UNet(get_preset("tiny", image_size=16))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ema = EMA(model, decay=0.9, warmup_steps=10)
    _train_steps(model, opt, ema, 2, seed)
    return model, opt, ema


def _save(path, model, opt, ema, step=2, **kw):
    save_checkpoint(
        path,
        model_config=model.config.to_dict(),
        diffusion_config=DiffusionConfig(T=1000, schedule="cosine").to_dict(),
        model_state=model.state_dict(),
        ema_state=ema.state_dict(),
        optimizer_state=opt.state_dict(),
        step=step,
        epoch=1,
        rng_state=capture_rng_state(),
        **kw,
    )


@pytest.fixture
def saved(tmp_path) -> SimpleNamespace:
    """A tiny model, optimizer and EMA after two steps, saved to tmp_path/c.pt."""
    model, opt, ema = _make_state()
    path = tmp_path / "c.pt"
    _save(path, model, opt, ema)
    return SimpleNamespace(path=path, model=model, opt=opt, ema=ema)


def _assert_nested_equal(a, b, where="root"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _assert_nested_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_nested_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_round_trip_is_bit_identical_and_resumes_exactly(tmp_path):
    model, opt, ema = _make_state()
    path = tmp_path / "run" / "checkpoints" / "last.pt"  # parents are created
    _save(path, model, opt, ema, extra={"note": "hello", "losses": [0.5, 0.25]})
    ckpt = load_checkpoint(path)
    assert ckpt["format_version"] == FORMAT_VERSION
    assert (ckpt["step"], ckpt["epoch"]) == (2, 1)
    assert ckpt["extra"] == {"note": "hello", "losses": [0.5, 0.25]}
    assert ckpt["model_config"] == model.config.to_dict()
    assert ckpt["diffusion_config"] == {"T": 1000, "schedule": "cosine", "prediction": "eps",
                                        "loss_weighting": "uniform", "min_snr_gamma": 5.0, "zero_terminal_snr": False,
                                        "kind": "vp"}
    _assert_nested_equal(dict(model.state_dict()), ckpt["model"])
    _assert_nested_equal(ema.state_dict(), ckpt["ema"])
    _assert_nested_equal(opt.state_dict(), ckpt["optimizer"])

    # Resume into fresh objects: the next steps match the uninterrupted run exactly.
    model2 = UNet(get_preset("tiny", image_size=16))
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-3)
    ema2 = EMA(model2)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["optimizer"])
    ema2.load_state_dict(ckpt["ema"])
    _train_steps(model, opt, ema, 2, seed=7)
    _train_steps(model2, opt2, ema2, 2, seed=7)
    for (name, p), p2 in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(p, p2), name
    for name in ema.shadow:
        assert torch.equal(ema.shadow[name], ema2.shadow[name]), name


def test_build_model_from_checkpoint_uses_ema_or_raw_weights(saved):
    model, ema = saved.model, saved.ema
    ckpt = load_checkpoint(saved.path)
    ema_model, diffusion = build_model_from_checkpoint(ckpt)
    raw_model, _ = build_model_from_checkpoint(ckpt, use_ema=False)
    assert isinstance(diffusion, Diffusion) and diffusion.config == DiffusionConfig(T=1000, schedule="cosine")
    assert ema_model.config == model.config and not ema_model.training
    for name, p in ema_model.named_parameters():
        assert torch.equal(p, ema.shadow[name]), name
    for (name, p), ref in zip(raw_model.named_parameters(), model.parameters()):
        assert torch.equal(p, ref), name
    assert not torch.equal(ema_model.output.weight, raw_model.output.weight)


def test_crash_between_write_and_rename_keeps_the_old_file(tmp_path, monkeypatch):
    model, opt, ema = _make_state()
    path = tmp_path / "last.pt"
    _save(path, model, opt, ema, step=1)

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_mod.os, "replace", crash)
    with pytest.raises(CheckpointError, match="could not write checkpoint .*last.pt: No space left"):
        _save(path, model, opt, ema, step=2)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1  # the old checkpoint, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # temp file cleaned up


def test_crash_in_the_middle_of_writing_keeps_the_old_file(tmp_path, monkeypatch):
    model, opt, ema = _make_state()
    path = tmp_path / "last.pt"
    _save(path, model, opt, ema, step=1)
    real_save = torch.save

    def half_write(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        f.truncate(100)  # as if the process died half-way through
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_mod.torch, "save", half_write)
    with pytest.raises(KeyboardInterrupt):
        _save(path, model, opt, ema, step=2)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_unstorable_field_is_refused_before_writing(tmp_path):
    model, opt, ema = _make_state()
    with pytest.raises(TypeError, match=r"extra\['where'\] is a PosixPath"):
        _save(tmp_path / "c.pt", model, opt, ema, extra={"where": Path("/x")})
    assert list(tmp_path.iterdir()) == []


def test_missing_empty_directory_and_junk_files(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pt: no such file"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pt: empty file"):
        load_checkpoint(tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"hello, not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"junk\.pt: not a PyTorch checkpoint file"):
        load_checkpoint(tmp_path / "junk.pt")


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_file_is_reported(tmp_path, saved, keep):
    data = saved.path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match=r"cut\.pt: truncated or corrupt") as info:
        load_checkpoint(cut)
    assert "\n" not in str(info.value)


class _RunsCode:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("style", ["torch_zip", "raw_pickle"])
def test_pickle_that_would_run_code_is_refused(tmp_path, style):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    payload = {"format": "ddpm-tui-checkpoint", "model": _RunsCode(marker)}
    if style == "torch_zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused, it contains Python objects that would run code"):
        load_checkpoint(path)
    assert not marker.exists()


def test_plain_state_dict_points_to_import_checkpoint(tmp_path):
    path = tmp_path / "model_state.pth"
    torch.save(UNet(get_preset("tiny")).state_dict(), path)
    with pytest.raises(CheckpointError, match="plain state_dict .*`ddpm-tui import-checkpoint`"):
        load_checkpoint(path)
    other = tmp_path / "list.pt"
    torch.save([1, 2, 3], other)
    with pytest.raises(CheckpointError, match="not a ddpm-tui checkpoint"):
        load_checkpoint(other)


def test_newer_format_version_is_refused(saved):
    path = saved.path
    raw = torch.load(path, weights_only=True)
    raw["format_version"] = FORMAT_VERSION + 1
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=f"format version {FORMAT_VERSION + 1} is newer"):
        load_checkpoint(path)
    del raw["format_version"], raw["optimizer"]
    raw["format_version"] = FORMAT_VERSION
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="corrupt \\(missing field 'optimizer'\\)"):
        load_checkpoint(path)


def test_checkpoint_from_another_preset_names_the_fields(saved):
    model = saved.model
    ckpt = load_checkpoint(saved.path)
    check_compatible(ckpt, model.config, DiffusionConfig(T=1000, schedule="cosine"))  # same: fine
    check_compatible(ckpt, model.config.to_dict())  # dicts work too
    with pytest.raises(CheckpointError) as info:
        check_compatible(ckpt, get_preset("small"))
    msg = str(info.value)
    assert "c.pt" in msg and "preset: checkpoint 'tiny' vs expected 'small'" in msg
    assert "base_channels: checkpoint 16 vs expected 32" in msg
    with pytest.raises(CheckpointError, match="schedule: checkpoint 'cosine' vs expected 'linear'"):
        check_compatible(ckpt, diffusion_config=DiffusionConfig())


def test_checkpoint_with_mismatched_weights_is_a_clear_error(tmp_path):
    model, opt, ema = _make_state()
    path = tmp_path / "c.pt"
    state = dict(model.state_dict())
    state.pop("output.bias")
    save_checkpoint(path, model_config=model.config.to_dict(), diffusion_config={"T": 10, "schedule": "linear"},
                    model_state=state)
    with pytest.raises(CheckpointError, match="weights are missing 'output.bias'"):
        build_model_from_checkpoint(load_checkpoint(path))
    save_checkpoint(path, model_config={**model.config.to_dict(), "wings": 2}, diffusion_config={},
                    model_state=model.state_dict())
    with pytest.raises(CheckpointError, match="bad config .*wings"):
        build_model_from_checkpoint(load_checkpoint(path))


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    state = capture_rng_state()
    expected = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(3))
    model, opt, ema = _make_state()
    path = tmp_path / "c.pt"
    save_checkpoint(path, model_config=model.config.to_dict(), diffusion_config={}, model_state=model.state_dict(),
                    rng_state=state)
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    restore_rng_state(load_checkpoint(path)["rng"])
    got = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(3))
    assert got[:4] == expected[:4]
    assert torch.equal(got[4], expected[4])


def _can_mount_tmpfs() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs root to mount a tiny tmpfs")
def test_full_disk_keeps_the_old_checkpoint(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("could not mount tmpfs here")
    try:
        small = torch.nn.Linear(4, 4)
        path = disk / "last.pt"
        save_checkpoint(path, model_config={"preset": "x"}, diffusion_config={}, model_state=small.state_dict(), step=1)
        big = {"w": torch.zeros(1024, 1024)}  # 4 MiB: does not fit
        with pytest.raises(CheckpointError, match="could not write checkpoint .*last.pt"):
            save_checkpoint(path, model_config={"preset": "x"}, diffusion_config={}, model_state=big, step=2)
        assert load_checkpoint(path)["step"] == 1
        assert [p.name for p in disk.iterdir()] == ["last.pt"]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_checkpoint_from_before_the_new_diffusion_fields_is_compatible(tmp_path):
    """A checkpoint whose diffusion config predates prediction/weighting/zero-SNR resumes as eps."""
    from core.diffusion.unet import UNet

    model = UNet(get_preset("tiny", image_size=16))
    path = tmp_path / "old.pt"
    save_checkpoint(path, model_config=model.config.to_dict(), diffusion_config={"T": 10, "schedule": "linear"},
                    model_state=model.state_dict())
    ckpt = load_checkpoint(path)
    check_compatible(ckpt, diffusion_config=DiffusionConfig(T=10))
    with pytest.raises(CheckpointError, match="prediction: checkpoint 'eps' vs expected 'v'"):
        check_compatible(ckpt, diffusion_config=DiffusionConfig(T=10, prediction="v"))
    _, diffusion = build_model_from_checkpoint(ckpt)
    assert diffusion.config.prediction == "eps" and diffusion.config.loss_weighting == "uniform"


@pytest.mark.parametrize("field,value", [("base_channels", 2**20), ("time_dim", 2**30), ("num_classes", 2**40)])
def test_crafted_config_that_would_allocate_huge_tensors_is_refused_before_building(tmp_path, field, value):
    """The config asks for a network of terabytes; the weights in the file are tiny. Building
    it would exhaust memory: the shapes are checked on a meta model first."""
    model = UNet(get_preset("tiny", image_size=16))
    path = tmp_path / "crafted.pt"
    save_checkpoint(path, model_config={**model.config.to_dict(), field: value}, diffusion_config={"T": 10},
                    model_state=model.state_dict())
    with pytest.raises(CheckpointError, match=r"crafted\.pt: (weight|bad config)"):
        build_model_from_checkpoint(load_checkpoint(path))
    save_checkpoint(path, model_config=model.config.to_dict(), diffusion_config={"T": 10**12},
                    model_state=model.state_dict())
    with pytest.raises(CheckpointError, match="T must be at most 100,000"):
        build_model_from_checkpoint(load_checkpoint(path))


@pytest.mark.parametrize("content,what", [(b"\xff\xd8\xff\xe0" + bytes(200), "JPEG image"),
                                          (bytes(range(7, 250)) * 20, None)])
def test_random_bytes_or_an_image_named_pt_is_not_called_code(tmp_path, content, what):
    path = tmp_path / "photo.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "not a PyTorch checkpoint file" in msg and "run code" not in msg and "weights_only" not in msg
    if what:
        assert what in msg
