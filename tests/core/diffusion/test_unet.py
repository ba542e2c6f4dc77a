"""The UNet: the classic preset is the original project's network; presets, sizes, conditioning, bf16, layout."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from core.diffusion.unet import (
    BLOCKS,
    PRESETS,
    ORIGINAL_PARAMETER_COUNT,
    UNet,
    UNetConfig,
    count_parameters,
    from_original_state_dict,
    get_preset,
    original_parameter_shapes,
    timestep_embedding,
)
from core.diffusion.unet import Attention, SelfAttention

HERE = Path(__file__).resolve().parent
# Every key and shape of a model_state.pth written by the original's train.py (incl. unused sa8.*).
ORIGINAL_KEYS_TSV = HERE / "original_state_dict_keys.tsv"


def _original_tsv() -> dict[str, tuple[int, ...]]:
    rows = ORIGINAL_KEYS_TSV.read_text().splitlines()[1:]
    out = {}
    for row in rows:
        key, shape = row.split("\t")
        out[key] = tuple(int(n) for n in shape.split("x"))
    return out


def _load_original_baseline():
    """bench/original_baseline.py: the original's network written the original's way (MHA, repeat, views)."""
    path = HERE.parents[2] / "bench" / "original_baseline.py"
    spec = importlib.util.spec_from_file_location("original_baseline_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _random_original_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) * 0.02 for k, shape in _original_tsv().items()}


@pytest.fixture(scope="module")
def zero_original_state_dict() -> dict[str, torch.Tensor]:
    return {k: torch.zeros(shape) for k, shape in _original_tsv().items()}


# --- the classic preset --------------------------------------------------------------------


def test_classic_preset_parameter_count():
    with torch.device("meta"):
        model = UNet(get_preset("classic"))
    assert count_parameters(model) == ORIGINAL_PARAMETER_COUNT == 93_392_643


def test_classic_preset_keys_and_shapes_are_the_originals():
    ours = original_parameter_shapes()
    theirs = {k: v for k, v in _original_tsv().items() if not k.startswith("sa8.")}
    assert list(ours) == list(theirs)  # same names, same order
    assert ours == theirs
    # The original's own total includes its unused 64x64 attention block.
    assert sum(math.prod(s) for s in _original_tsv().values()) == 93_417_859


def test_original_baseline_is_an_independent_reference_with_the_originals_shapes():
    """bench/original_baseline.py imports nothing from the product, and its state_dict is exactly
    the original's model_state.pth layout (tests/core/diffusion/original_state_dict_keys.tsv, from the original)."""
    source = (HERE.parents[2] / "bench" / "original_baseline.py").read_text()
    assert not re.search(r"^\s*(from|import)\s+(core|ddpm_tui|bench)\b", source, re.MULTILINE)
    with torch.device("meta"):
        reference = _load_original_baseline().OriginalBaselineUNet()
    shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert list(shapes) == list(_original_tsv()) and shapes == _original_tsv()


@pytest.fixture(scope="module")
def random_original_state_dict() -> dict[str, torch.Tensor]:
    return _random_original_state_dict()


def test_random_original_state_dict_round_trips(random_original_state_dict):
    sd = random_original_state_dict
    model = from_original_state_dict(sd)
    assert model.config == get_preset("classic")
    loaded = model.state_dict()
    assert set(loaded) == {k for k in sd if not k.startswith("sa8.")}
    for key, value in loaded.items():
        assert torch.equal(value, sd[key]), key
    # The model owns its tensors: changing it leaves the caller's dict alone.
    with torch.no_grad():
        model.output.bias.add_(1.0)
    assert not torch.equal(model.output.bias, sd["output.bias"])
    assert all(p.requires_grad and p.device.type == "cpu" for p in model.parameters())


def test_original_state_dict_with_module_prefix_loads(random_original_state_dict):
    sd = {f"module.{k}": v for k, v in random_original_state_dict.items()}
    model = from_original_state_dict(sd)
    assert torch.equal(model.conv0.double_conv[0].weight, sd["module.conv0.double_conv.0.weight"])


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda sd: sd.pop("up2.emb_layer.1.bias"), "missing key 'up2.emb_layer.1.bias'"),
        (lambda sd: sd.__setitem__("up5.conv.weight", torch.zeros(3)), "unexpected key 'up5.conv.weight'"),
        (lambda sd: sd.__setitem__("sa3.ln.weight", torch.zeros(7)), "'sa3.ln.weight' has shape (7,), expected (512,)"),
        (lambda sd: sd.__setitem__("output.bias", torch.tensor([1.0, float("nan"), 0.0])), "'output.bias' contains NaN"),
        (lambda sd: sd.__setitem__("output.bias", torch.zeros(3, dtype=torch.long)), "'output.bias' has dtype"),
        (lambda sd: sd.__setitem__("output.bias", [0.0, 0.0, 0.0]), "'output.bias' is a list"),
    ],
)
def test_bad_original_state_dict_names_the_key(zero_original_state_dict, mutate, expected):
    sd = dict(zero_original_state_dict)  # mutations replace entries, the shared tensors stay intact
    mutate(sd)
    with pytest.raises(ValueError) as info:
        from_original_state_dict(sd)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_original_state_dict_must_be_a_mapping():
    with pytest.raises(ValueError, match="expected a state_dict"):
        from_original_state_dict([1, 2, 3])


@pytest.mark.slow
def test_classic_preset_computes_the_originals_function():
    """Our classic preset, loaded with weights, equals the original-style network on the same input."""
    baseline_mod = _load_original_baseline()
    torch.manual_seed(0)
    reference = baseline_mod.OriginalBaselineUNet().eval()
    state = {k: v for k, v in reference.state_dict().items()}
    ours = from_original_state_dict(state).eval()
    x = torch.randn(1, 3, 64, 64)
    t = torch.tensor([421])
    with torch.no_grad():
        expected = reference(x, t)
        got = ours(x, t)
    assert got.shape == expected.shape == (1, 3, 64, 64)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


# --- attention -----------------------------------------------------------------------------


def test_attention_equals_nn_multihead_attention():
    torch.manual_seed(0)
    ours = Attention(32, 4)
    with torch.no_grad():
        ours.in_proj_bias.normal_()
        ours.out_proj.bias.normal_()
    mha = nn.MultiheadAttention(32, 4, batch_first=True)
    mha.load_state_dict(ours.state_dict())  # identical parameter names
    x = torch.randn(3, 10, 32)
    expected, weights = mha(x, x, x)  # the original's call: attention weights returned
    assert weights.shape == (3, 10, 10)
    torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-5)


def test_self_attention_block_equals_original_block_at_any_layout():
    baseline_mod = _load_original_baseline()
    torch.manual_seed(0)
    original_block = baseline_mod.OriginalSelfAttention(64, 8).eval()
    ours = SelfAttention(64, 4).eval()
    ours.load_state_dict(original_block.state_dict())
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        expected = original_block(x)
        torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-5)
        out_cl = ours(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out_cl, expected, rtol=1e-5, atol=1e-5)
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    # Sizes follow the input: the same block works on 4x4 and non-square maps.
    with torch.no_grad():
        assert ours(torch.randn(1, 64, 4, 4)).shape == (1, 64, 4, 4)
        assert ours(torch.randn(1, 64, 2, 6)).shape == (1, 64, 2, 6)


def test_timestep_embedding_matches_the_original_formula():
    baseline_mod = _load_original_baseline()
    t = torch.tensor([0, 1, 17, 500, 999])
    ref = baseline_mod.OriginalBaselineUNet.pos_encoding(None, t.unsqueeze(-1).float(), 256)
    torch.testing.assert_close(timestep_embedding(t, 256), ref)


# --- presets and configs -------------------------------------------------------------------


def test_presets_exist_and_configs_round_trip_through_json():
    assert {"classic", "small", "tiny", "res-small", "res-tiny"} <= set(PRESETS)
    for name, cfg in PRESETS.items():
        assert cfg.preset == name
        data = json.loads(json.dumps(cfg.to_dict()))
        assert UNetConfig.from_dict(data) == cfg


def test_get_preset_overrides_and_errors():
    cfg = get_preset("tiny", num_classes=5, image_size=16)
    assert cfg.num_classes == 5 and cfg.image_size == 16 and cfg.preset == "tiny"
    assert PRESETS["tiny"].num_classes == 0  # the preset itself is untouched
    with pytest.raises(ValueError, match="unknown UNet preset 'huge'.*classic, small, tiny"):
        get_preset("huge")
    with pytest.raises(ValueError, match="bad override"):
        get_preset("tiny", widht=3)
    with pytest.raises(ValueError, match="divisible by 16"):
        get_preset("tiny", image_size=40)
    with pytest.raises(ValueError, match="unknown field"):
        UNetConfig.from_dict({**PRESETS["tiny"].to_dict(), "colour": "red"})
    with pytest.raises(ValueError, match="num_heads"):
        get_preset("tiny", num_heads=3)


def test_small_presets_are_small():
    tiny = count_parameters(UNet(get_preset("tiny")))
    small = count_parameters(UNet(get_preset("small")))
    assert tiny < 1_000_000 < small < 20_000_000


# --- forward: sizes, conditioning, dtype, layout -------------------------------------------


@pytest.mark.parametrize("size", [(16, 16), (32, 32), (48, 48), (16, 32)])
def test_output_shape_follows_input(size):
    torch.manual_seed(0)
    model = UNet(get_preset("tiny"))
    x = torch.randn(2, 3, *size)
    out = model(x, torch.tensor([3, 900]))
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_bad_inputs_raise_clear_errors():
    model = UNet(get_preset("tiny"))
    with pytest.raises(ValueError, match="divisible by 16"):
        model(torch.randn(1, 3, 20, 20), torch.tensor([1]))
    with pytest.raises(ValueError, match="3 input channels"):
        model(torch.randn(1, 1, 16, 16), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"t must have shape \(2,\)"):
        model(torch.randn(2, 3, 16, 16), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.randn(1, 3, 16, 16), torch.tensor([1]), torch.tensor([0]))


def test_scalar_t_is_broadcast_over_the_batch():
    torch.manual_seed(0)
    model = UNet(get_preset("tiny")).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x, torch.tensor(7)), model(x, torch.tensor([7, 7])))


def test_class_conditioning_paths_run_and_differ():
    torch.manual_seed(0)
    model = UNet(get_preset("tiny", num_classes=3)).eval()
    assert model.null_label == 3
    assert model.label_emb.num_embeddings == 4
    with torch.no_grad():
        model.label_emb.weight.normal_()  # make labels matter as a trained model's would
        x = torch.randn(2, 3, 16, 16)
        t = torch.tensor([10, 10])
        uncond = model(x, t)
        null = model(x, t, torch.tensor([3, 3]))
        cond_a = model(x, t, torch.tensor([0, 0]))
        cond_b = model(x, t, torch.tensor([1, 1]))
    torch.testing.assert_close(uncond, null)  # labels=None is the "no label" index
    assert not torch.allclose(cond_a, uncond, atol=1e-4)
    assert not torch.allclose(cond_a, cond_b, atol=1e-4)
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.3"):
        model(x, t, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="labels must have shape"):
        model(x, t, torch.tensor([0]))


@pytest.mark.parametrize("name", ["tiny", "res-tiny"])
def test_bf16_autocast_on_cpu_is_finite_and_close_to_fp32(name):
    torch.manual_seed(0)
    model = UNet(get_preset(name, num_classes=2))
    if model.config.block == "resnet":
        _randomised(model)  # zero-initialised output: make every path matter
    x = torch.randn(4, 3, 32, 32)
    t = torch.tensor([0, 250, 500, 999])
    labels = torch.tensor([0, 1, 2, 1])
    ref = model(x, t, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x.contiguous(memory_format=torch.channels_last), t, labels)
    assert torch.isfinite(out).all()
    err = (out.float() - ref).abs().mean() / ref.abs().mean()
    assert err < 0.05, f"bf16 relative error {err:.3f}"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x, t, labels).float().pow(2).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_channels_last_matches_contiguous_forward_and_backward():
    torch.manual_seed(0)
    model = UNet(get_preset("tiny"))
    x = torch.randn(2, 3, 32, 32)
    t = torch.tensor([5, 600])
    out = model(x, t)
    grads = torch.autograd.grad(out.square().mean(), list(model.parameters()))
    model_cl = UNet(get_preset("tiny")).to(memory_format=torch.channels_last)
    model_cl.load_state_dict(model.state_dict())
    out_cl = model_cl(x.contiguous(memory_format=torch.channels_last), t)
    grads_cl = torch.autograd.grad(out_cl.square().mean(), list(model_cl.parameters()))
    torch.testing.assert_close(out_cl, out, rtol=1e-4, atol=1e-5)
    for g, g_cl in zip(grads, grads_cl):
        torch.testing.assert_close(g_cl, g, rtol=1e-3, atol=1e-5)


# --- the resnet design, and configs written before it existed ----------------------------

RESNET_PRESETS = ("res-small", "res-tiny")

# `small` and `tiny` as config.json / checkpoints stored them before UNetConfig had `block`.
OLD_SMALL = {"preset": "small", "image_size": 32, "in_channels": 3, "base_channels": 32,
             "channel_mults": [2, 4, 4, 4], "mid_mult": 2, "attn_down": [False, True, True, True],
             "attn_up": [True, True, False, False], "num_heads": 4, "time_dim": 128, "num_classes": 5}
OLD_TINY = {"preset": "tiny", "image_size": 32, "in_channels": 3, "base_channels": 16,
            "channel_mults": [1, 2, 2, 2], "mid_mult": 1, "attn_down": [False, False, True, True],
            "attn_up": [True, False, False, False], "num_heads": 4, "time_dim": 32, "num_classes": 0}


def _randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """The resnet design zero-initialises its residual branches and output; give every
    parameter random values so tests see a network whose every path matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


@pytest.mark.parametrize("old", [OLD_SMALL, OLD_TINY])
def test_old_configs_rebuild_the_old_network(old):
    cfg = UNetConfig.from_dict(old)
    assert cfg.block == "classic"
    assert cfg == get_preset(old["preset"], image_size=32, num_classes=old["num_classes"])
    # Serialised exactly as before: checkpoint comparisons and older readers see no change.
    assert cfg.to_dict() == old
    keys = list(UNet(cfg).state_dict())
    assert keys[0] == "conv0.double_conv.0.weight" and "down4.emb_layer.1.weight" in keys
    assert not any(k.startswith(("conv_in", "down.", "up.", "time_mlp")) for k in keys)


def test_old_checkpoint_config_is_compatible_with_its_preset(tmp_path):
    from core.diffusion.checkpoint import build_model_from_checkpoint, check_compatible, load_checkpoint, save_checkpoint
    from core.diffusion.process import DiffusionConfig

    cfg = UNetConfig.from_dict(OLD_SMALL)
    torch.manual_seed(0)
    model = UNet(cfg)
    path = tmp_path / "old.pt"
    save_checkpoint(path, model_config=dict(OLD_SMALL), diffusion_config=DiffusionConfig().to_dict(),
                    model_state=model.state_dict())
    ckpt = load_checkpoint(path)
    # Resuming rebuilds the expected config from the preset name: it must match the old dict.
    check_compatible(ckpt, get_preset("small", image_size=32, num_classes=5))
    rebuilt, _ = build_model_from_checkpoint(ckpt, use_ema=False)
    assert rebuilt.config.block == "classic"
    x, t, labels = torch.randn(2, 3, 32, 32), torch.tensor([3, 700]), torch.tensor([0, 4])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x, t, labels), model.eval()(x, t, labels))


# Before the rename, the classic preset and block were called "seed" (checkpoints written by
# main at d1622b1 and earlier say preset "seed"; a config may spell block "seed" explicitly).
OLD_CLASSIC = {"preset": "seed", "image_size": 64, "in_channels": 3, "base_channels": 64,
               "channel_mults": [2, 4, 8, 8], "mid_mult": 2, "attn_down": [True, True, True, True],
               "attn_up": [True, True, True, False], "num_heads": 4, "time_dim": 256, "num_classes": 0}


def test_former_name_seed_reads_as_classic():
    for old in (OLD_CLASSIC, {**OLD_CLASSIC, "block": "seed"}):
        cfg = UNetConfig.from_dict(old)
        assert (cfg.preset, cfg.block) == ("classic", "classic")
        assert cfg.to_dict() == {**OLD_CLASSIC, "preset": "classic"}  # today's spelling, block at its default
    assert UNetConfig.from_dict(OLD_CLASSIC) == get_preset("classic") == get_preset("seed")
    assert get_preset("seed", image_size=32) == get_preset("classic", image_size=32)
    assert UNetConfig.from_dict({**OLD_SMALL, "block": "seed"}) == UNetConfig.from_dict(OLD_SMALL)


def test_checkpoint_saying_block_and_preset_seed_builds_the_classic_network(tmp_path):
    from core.diffusion.checkpoint import build_model_from_checkpoint, check_compatible, load_checkpoint, save_checkpoint
    from core.diffusion.process import DiffusionConfig

    old = {**OLD_SMALL, "preset": "seed", "block": "seed"}  # the classic design at small's width
    torch.manual_seed(0)
    model = UNet(UNetConfig.from_dict(OLD_SMALL))
    path = tmp_path / "old.pt"
    save_checkpoint(path, model_config=old, diffusion_config=DiffusionConfig().to_dict(),
                    model_state=model.state_dict())
    ckpt = load_checkpoint(path)
    assert ckpt["model_config"]["block"] == "seed"  # stored as written
    check_compatible(ckpt, UNetConfig.from_dict({**OLD_SMALL, "preset": "classic"}))
    rebuilt, _ = build_model_from_checkpoint(ckpt, use_ema=False)
    assert rebuilt.config.block == "classic" and rebuilt.config.preset == "classic"
    assert list(rebuilt.state_dict()) == list(model.state_dict())
    x, t, labels = torch.randn(2, 3, 32, 32), torch.tensor([3, 700]), torch.tensor([0, 4])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x, t, labels), model.eval()(x, t, labels), rtol=0, atol=0)


def test_resnet_configs_record_their_design_and_round_trip():
    for name in RESNET_PRESETS:
        cfg = get_preset(name, num_classes=3)
        d = cfg.to_dict()
        assert d["block"] == "resnet" and d["res_blocks"] == cfg.res_blocks
        assert UNetConfig.from_dict(json.loads(json.dumps(d))) == cfg
    assert set(BLOCKS) == {"classic", "resnet"}
    with pytest.raises(ValueError, match="unknown block design 'dense'"):
        get_preset("res-tiny", block="dense")
    with pytest.raises(ValueError, match="res_blocks must be positive"):
        get_preset("res-tiny", res_blocks=0)
    with pytest.raises(ValueError, match="multiples of 4"):
        get_preset("res-tiny", base_channels=6, num_heads=1)
    with pytest.raises(ValueError, match="divisible by 8"):  # 3 down-samplings for 4 stages
        get_preset("res-tiny", image_size=36)


def test_resnet_parameter_counts():
    """Pinned: a change of design shows up here (and needs new figures in the README)."""
    counts = {name: count_parameters(UNet(get_preset(name))) for name in RESNET_PRESETS}
    assert counts == {"res-small": 4_755_712, "res-tiny": 1_688_704}
    # Class conditioning adds one embedding row per class plus the "no label" row.
    cond = count_parameters(UNet(get_preset("res-tiny", num_classes=5)))
    assert cond - counts["res-tiny"] == 6 * get_preset("res-tiny").time_dim


def test_resnet_attention_only_at_16x16_and_below():
    for name in RESNET_PRESETS:
        cfg = get_preset(name)
        model = UNet(cfg)
        sizes = []
        hooks = [m.register_forward_hook(lambda mod, inp, out: sizes.append(out.shape[-1]))
                 for m in model.modules() if type(m).__name__ == "ResAttention"]
        with torch.no_grad():
            model(torch.randn(1, 3, 32, 32), torch.tensor([5]))
        for h in hooks:
            h.remove()
        assert sizes and max(sizes) <= 16, (name, sizes)


@pytest.mark.parametrize("name", RESNET_PRESETS)
@pytest.mark.parametrize("size", [(32, 32), (64, 64), (8, 24)])
def test_resnet_output_shape_follows_input(name, size):
    torch.manual_seed(0)
    model = _randomised(UNet(get_preset(name)))
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = model(x, torch.tensor([3, 900]))
    assert out.shape == x.shape
    assert torch.isfinite(out).all() and out.abs().mean() > 0


def test_resnet_starts_as_zero_prediction_and_learns():
    """Zero-initialised residual branches and output: the untrained net predicts 0 (the mean
    of every target), and one optimiser step moves it."""
    torch.manual_seed(0)
    model = UNet(get_preset("res-tiny"))
    x, t = torch.randn(4, 3, 32, 32), torch.tensor([1, 10, 100, 999])
    assert torch.count_nonzero(model(x, t)) == 0
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = (model(x, t) - x).square().mean()
    loss.backward()
    opt.step()
    assert torch.count_nonzero(model(x, t)) > 0


def test_resnet_bad_inputs_raise_clear_errors():
    model = UNet(get_preset("res-tiny"))
    with pytest.raises(ValueError, match="divisible by 8"):
        model(torch.randn(1, 3, 20, 20), torch.tensor([1]))
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.randn(1, 3, 16, 16), torch.tensor([1]), torch.tensor([0]))


def test_resnet_class_conditioning_paths_run_and_differ():
    model = _randomised(UNet(get_preset("res-tiny", num_classes=3))).eval()
    assert model.null_label == 3 and model.label_emb.num_embeddings == 4
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 10])
    with torch.no_grad():
        uncond = model(x, t)
        null = model(x, t, torch.tensor([3, 3]))
        cond_a = model(x, t, torch.tensor([0, 0]))
        cond_b = model(x, t, torch.tensor([1, 1]))
        other_t = model(x, torch.tensor([500, 500]), torch.tensor([0, 0]))
    torch.testing.assert_close(uncond, null)
    assert not torch.allclose(cond_a, uncond, atol=1e-4)
    assert not torch.allclose(cond_a, cond_b, atol=1e-4)
    assert not torch.allclose(cond_a, other_t, atol=1e-4)
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.3"):
        model(x, t, torch.tensor([0, 4]))


def test_resnet_state_dict_saves_and_loads(tmp_path):
    cfg = get_preset("res-small", num_classes=2)
    model = _randomised(UNet(cfg)).eval()
    path = tmp_path / "net.pt"
    torch.save({"config": cfg.to_dict(), "state": model.state_dict()}, path)
    blob = torch.load(path, weights_only=True)
    again = UNet(UNetConfig.from_dict(blob["config"])).eval()
    again.load_state_dict(blob["state"])  # strict: same keys, same shapes
    x, t, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 999]), torch.tensor([1, 2])
    with torch.no_grad():
        torch.testing.assert_close(again(x, t, labels), model(x, t, labels), rtol=0, atol=0)
    # Another design's weights do not load into it.
    with pytest.raises(RuntimeError):
        UNet(get_preset("res-tiny", num_classes=2)).load_state_dict(blob["state"])


def test_resnet_channels_last_matches_contiguous():
    torch.manual_seed(0)
    model = _randomised(UNet(get_preset("res-tiny", num_classes=2)))
    x = torch.randn(4, 3, 32, 32)
    t = torch.tensor([0, 250, 500, 999])
    labels = torch.tensor([0, 1, 2, 1])
    ref = model(x, t, labels)
    out_cl = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last), t, labels)
    torch.testing.assert_close(out_cl, ref, rtol=1e-4, atol=1e-4)


def test_training_options_offer_every_preset():
    """core/training/options.py is torch-free, so it names the presets itself: keep the two in step."""
    options = pytest.importorskip("core.training.options")
    assert set(options.PRESET_NAMES) == set(PRESETS)
    assert {n: options.PRESET_IMAGE_SIZE[n] for n in PRESETS} == {n: c.image_size for n, c in PRESETS.items()}
