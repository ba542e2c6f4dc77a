"""`ddpm-tui export`: EMA/raw weights as .safetensors that load back bit for bit (every
tensor, the same images), through the one checkpoint loader; bad files are one line."""

from __future__ import annotations

import json

import pytest
import torch

from core.diffusion.checkpoint import CheckpointError, build_model_from_checkpoint, load_checkpoint, save_checkpoint
from core.diffusion.sampling import SampleRequest, generate, load_for_sampling
from core.training.runs import checkpoints_dir, read_config
from studio_helpers import cli, make_checkpoint_run, one_line_error


@pytest.fixture
def run(workspace):
    """A conditional tiny run whose EMA weights differ from its raw ones (as after training)."""
    run_dir = make_checkpoint_run(workspace, "tiny-run", image_size=16, T=10, conditional=True)
    path = checkpoints_dir(run_dir) / "last.pt"
    ckpt = load_checkpoint(path)
    gen = torch.Generator().manual_seed(1)
    shadow = {k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in ckpt["ema"]["shadow"].items()}
    save_checkpoint(path, model_config=ckpt["model_config"], diffusion_config=ckpt["diffusion_config"],
                    model_state=ckpt["model"], ema_state={**ckpt["ema"], "shadow": shadow}, step=12, epoch=3,
                    extra=ckpt["extra"])
    return run_dir




def _images(source, weights="ema"):
    loaded = load_for_sampling(source, weights)
    request = SampleRequest(n=3, sampler="ddim", steps=3, seed=7, weights=weights, amp="off", batch_size=3)
    return loaded, torch.cat([s.images for s in generate(loaded, request, device="cpu") if s.images is not None])


@pytest.mark.parametrize("raw", [False, True])
def test_export_round_trips_bit_exactly(workspace, run, capsys, one_thread, raw):
    pt = checkpoints_dir(run) / "last.pt"
    kind = "raw" if raw else "ema"
    assert cli(workspace, "export", "tiny-run", *(["--raw"] if raw else [])) == 0
    out = run / "exports" / f"tiny-run-step0000012-{kind}.safetensors"
    assert str(out) in capsys.readouterr().out

    exported = load_checkpoint(out)
    assert exported["step"] == 12 and exported["extra"]["classes"] == read_config(run)["classes"]
    assert exported["extra"]["exported_weights"] == kind and exported["optimizer"] is None
    original_model, original_diffusion = build_model_from_checkpoint(load_checkpoint(pt), use_ema=not raw)
    model, diffusion = build_model_from_checkpoint(exported, use_ema=True)
    assert model.config == original_model.config and diffusion.config == original_diffusion.config
    ours, theirs = model.state_dict(), original_model.state_dict()
    assert ours.keys() == theirs.keys()
    for name in theirs:
        assert ours[name].dtype == theirs[name].dtype and torch.equal(ours[name], theirs[name]), name
    other, _ = build_model_from_checkpoint(load_checkpoint(pt), use_ema=raw)  # the other weights differ
    assert not all(torch.equal(other.state_dict()[k], theirs[k]) for k in theirs)

    loaded_pt, from_pt = _images(pt, kind)
    loaded_st, from_st = _images(out, "ema")
    assert torch.equal(from_pt, from_st)
    assert loaded_st.classes == loaded_pt.classes and loaded_st.step == 12
    assert loaded_st.weights_note == ("EMA" if not raw else "raw (this checkpoint has no EMA weights)")

    # the CLI samples it like a checkpoint
    assert cli(workspace, "sample", str(out), "--n", "2", "--steps", "2", "--seed", "1", "--device", "cpu",
                "--out", str(workspace.root / "s.png"), "--quiet") == 0
    assert (workspace.root / "s.png").is_file()


def test_export_writes_atomically_and_never_overwrites_without_force(workspace, run, capsys, tmp_path):
    folder = tmp_path / "out"
    target = folder / "dog.safetensors"
    assert cli(workspace, "export", "tiny-run", "--out", str(target)) == 0
    first = target.read_bytes()
    assert cli(workspace, "export", "tiny-run", "--out", str(target), "--raw") == 2
    one_line_error(capsys, "already exists", "--force")
    assert target.read_bytes() == first
    assert cli(workspace, "export", "tiny-run", "--out", str(target), "--raw", "--force") == 0
    assert target.read_bytes() != first
    assert [p.name for p in folder.iterdir()] == ["dog.safetensors"]  # no temp file left
    assert cli(workspace, "export", "tiny-run", "--out", str(folder / "dog.pt")) == 2
    one_line_error(capsys, ".safetensors")
    # metadata: plain JSON any safetensors reader can see
    from safetensors import safe_open

    with safe_open(str(target), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "ddpm-tui-weights" and meta["weights"] == "raw"
    assert json.loads(meta["model_config"])["preset"] == "tiny" and json.loads(meta["diffusion_config"])["T"] == 10


def test_ema_only_file_refuses_raw(workspace, run, capsys):
    assert cli(workspace, "export", "tiny-run") == 0
    out = next((run / "exports").iterdir())
    capsys.readouterr()
    assert cli(workspace, "sample", str(out), "--raw", "--n", "1", "--device", "cpu") == 2
    one_line_error(capsys, "only the EMA weights", "--raw")


def _write_st(path, tensors, metadata):
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)


def test_corrupt_or_foreign_safetensors_is_one_line(workspace, run, tmp_path):
    assert cli(workspace, "export", "tiny-run", "--out", str(tmp_path / "good.safetensors")) == 0
    good = (tmp_path / "good.safetensors").read_bytes()
    cases = {
        "truncated.safetensors": (good[: len(good) // 2], "truncated or corrupt"),
        "garbage.safetensors": (b"\x00" * 64, "corrupt .safetensors file"),
    }
    for name, (data, needle) in cases.items():
        (tmp_path / name).write_bytes(data)
    _write_st(tmp_path / "foreign.safetensors", {"w": torch.zeros(2)}, None)
    _write_st(tmp_path / "hub.bin", {"w": torch.zeros(2)}, {"format": "pt"})  # sniffed, whatever the name
    meta = {"format": "ddpm-tui-weights", "format_version": "1", "weights": "ema", "step": "1", "classes": "[]",
            "model_config": "{not json", "diffusion_config": "{}"}
    _write_st(tmp_path / "badmeta.safetensors", {"w": torch.zeros(2)}, meta)
    _write_st(tmp_path / "newer.safetensors", {"w": torch.zeros(2)}, {**meta, "format_version": "9"})
    _write_st(tmp_path / "wrongnet.safetensors", {"w": torch.zeros(2)},
              {**meta, "model_config": json.dumps({"preset": "tiny", "image_size": 16})})
    expected = {**{n: needle for n, (_, needle) in cases.items()},
                "foreign.safetensors": "without ddpm-tui metadata", "hub.bin": "without ddpm-tui metadata",
                "badmeta.safetensors": "'model_config' is not JSON", "newer.safetensors": "newer than this",
                "wrongnet.safetensors": "weights are missing"}
    for name, needle in expected.items():
        with pytest.raises(CheckpointError) as err:
            model, _ = build_model_from_checkpoint(load_checkpoint(tmp_path / name))
        text = str(err.value)
        assert "\n" not in text and needle in text and str(tmp_path / name) in text, (name, text)
