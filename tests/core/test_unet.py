"""The UNet: the seed preset is the seed's network; presets, sizes, conditioning, bf16, layout."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from core.unet import (
    PRESETS,
    SEED_PARAMETER_COUNT,
    UNet,
    UNetConfig,
    count_parameters,
    from_seed_state_dict,
    get_preset,
    seed_parameter_shapes,
    timestep_embedding,
)
from core.unet import Attention, SelfAttention

HERE = Path(__file__).resolve().parent
# Every key and shape of a model_state.pth written by the seed's train.py (incl. unused sa8.*).
SEED_KEYS_TSV = HERE / "seed_state_dict_keys.tsv"


def _seed_tsv() -> dict[str, tuple[int, ...]]:
    rows = SEED_KEYS_TSV.read_text().splitlines()[1:]
    out = {}
    for row in rows:
        key, shape = row.split("\t")
        out[key] = tuple(int(n) for n in shape.split("x"))
    return out


def _load_seed_baseline():
    """bench/seed_baseline.py: the seed's network written the seed's way (MHA, repeat, views)."""
    path = HERE.parents[1] / "bench" / "seed_baseline.py"
    spec = importlib.util.spec_from_file_location("seed_baseline_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _random_seed_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) * 0.02 for k, shape in _seed_tsv().items()}


@pytest.fixture(scope="module")
def zero_seed_state_dict() -> dict[str, torch.Tensor]:
    return {k: torch.zeros(shape) for k, shape in _seed_tsv().items()}


# --- the seed preset -----------------------------------------------------------------------


def test_seed_preset_parameter_count():
    with torch.device("meta"):
        model = UNet(get_preset("seed"))
    assert count_parameters(model) == SEED_PARAMETER_COUNT == 93_392_643


def test_seed_preset_keys_and_shapes_are_the_seeds():
    ours = seed_parameter_shapes()
    theirs = {k: v for k, v in _seed_tsv().items() if not k.startswith("sa8.")}
    assert list(ours) == list(theirs)  # same names, same order
    assert ours == theirs
    # The seed's own total includes its unused 64x64 attention block.
    assert sum(math.prod(s) for s in _seed_tsv().values()) == 93_417_859


def test_seed_baseline_is_an_independent_reference_with_the_seeds_shapes():
    """bench/seed_baseline.py imports nothing from the product, and its state_dict is exactly
    the seed's model_state.pth layout (tests/core/seed_state_dict_keys.tsv, from the seed)."""
    source = (HERE.parents[1] / "bench" / "seed_baseline.py").read_text()
    assert not re.search(r"^\s*(from|import)\s+(core|ddpm_tui|bench)\b", source, re.MULTILINE)
    with torch.device("meta"):
        reference = _load_seed_baseline().SeedBaselineUNet()
    shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert list(shapes) == list(_seed_tsv()) and shapes == _seed_tsv()


@pytest.fixture(scope="module")
def random_seed_state_dict() -> dict[str, torch.Tensor]:
    return _random_seed_state_dict()


def test_random_seed_state_dict_round_trips(random_seed_state_dict):
    sd = random_seed_state_dict
    model = from_seed_state_dict(sd)
    assert model.config == get_preset("seed")
    loaded = model.state_dict()
    assert set(loaded) == {k for k in sd if not k.startswith("sa8.")}
    for key, value in loaded.items():
        assert torch.equal(value, sd[key]), key
    # The model owns its tensors: changing it leaves the caller's dict alone.
    with torch.no_grad():
        model.output.bias.add_(1.0)
    assert not torch.equal(model.output.bias, sd["output.bias"])
    assert all(p.requires_grad and p.device.type == "cpu" for p in model.parameters())


def test_seed_state_dict_with_module_prefix_loads(random_seed_state_dict):
    sd = {f"module.{k}": v for k, v in random_seed_state_dict.items()}
    model = from_seed_state_dict(sd)
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
def test_bad_seed_state_dict_names_the_key(zero_seed_state_dict, mutate, expected):
    sd = dict(zero_seed_state_dict)  # mutations replace entries, the shared tensors stay intact
    mutate(sd)
    with pytest.raises(ValueError) as info:
        from_seed_state_dict(sd)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_seed_state_dict_must_be_a_mapping():
    with pytest.raises(ValueError, match="expected a state_dict"):
        from_seed_state_dict([1, 2, 3])


@pytest.mark.slow
def test_seed_preset_computes_the_seeds_function():
    """Our seed preset, loaded with weights, equals the seed-style network on the same input."""
    baseline_mod = _load_seed_baseline()
    torch.manual_seed(0)
    reference = baseline_mod.SeedBaselineUNet().eval()
    state = {k: v for k, v in reference.state_dict().items()}
    ours = from_seed_state_dict(state).eval()
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
    expected, weights = mha(x, x, x)  # the seed's call: attention weights returned
    assert weights.shape == (3, 10, 10)
    torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-5)


def test_self_attention_block_equals_seed_block_at_any_layout():
    baseline_mod = _load_seed_baseline()
    torch.manual_seed(0)
    seed_block = baseline_mod.SeedSelfAttention(64, 8).eval()
    ours = SelfAttention(64, 4).eval()
    ours.load_state_dict(seed_block.state_dict())
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        expected = seed_block(x)
        torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-5)
        out_cl = ours(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out_cl, expected, rtol=1e-5, atol=1e-5)
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    # Sizes follow the input: the same block works on 4x4 and non-square maps.
    with torch.no_grad():
        assert ours(torch.randn(1, 64, 4, 4)).shape == (1, 64, 4, 4)
        assert ours(torch.randn(1, 64, 2, 6)).shape == (1, 64, 2, 6)


def test_timestep_embedding_matches_the_seed_formula():
    baseline_mod = _load_seed_baseline()
    t = torch.tensor([0, 1, 17, 500, 999])
    ref = baseline_mod.SeedBaselineUNet.pos_encoding(None, t.unsqueeze(-1).float(), 256)
    torch.testing.assert_close(timestep_embedding(t, 256), ref)


# --- presets and configs -------------------------------------------------------------------


def test_presets_exist_and_configs_round_trip_through_json():
    assert {"seed", "small", "tiny"} <= set(PRESETS)
    for name, cfg in PRESETS.items():
        assert cfg.preset == name
        data = json.loads(json.dumps(cfg.to_dict()))
        assert UNetConfig.from_dict(data) == cfg


def test_get_preset_overrides_and_errors():
    cfg = get_preset("tiny", num_classes=5, image_size=16)
    assert cfg.num_classes == 5 and cfg.image_size == 16 and cfg.preset == "tiny"
    assert PRESETS["tiny"].num_classes == 0  # the preset itself is untouched
    with pytest.raises(ValueError, match="unknown UNet preset 'huge'.*seed, small, tiny"):
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


def test_bf16_autocast_on_cpu_is_finite_and_close_to_fp32():
    torch.manual_seed(0)
    model = UNet(get_preset("tiny", num_classes=2))
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
