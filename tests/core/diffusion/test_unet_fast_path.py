"""The UNet's faster step, same math: bilinear x2 up-sampling as matmuls, regional
compilation, the per-device memory format."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import core.diffusion.unet as unet
import core.diffusion.unet_classic as unet_classic
from core.diffusion.unet import (
    BilinearUpsample2x,
    UNet,
    bilinear_matrix,
    compile_model,
    get_preset,
    upsample_bilinear2x,
    upsample_impl,
)


def _reference(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


# --- the interpolation matrix ------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 16])
def test_bilinear_matrix_is_the_align_corners_interpolation(n):
    a = bilinear_matrix(n)
    assert a.shape == (2 * n, n) and a.dtype == torch.float32 and not a.requires_grad
    torch.testing.assert_close(a.sum(dim=1), torch.ones(2 * n))  # each row a convex combination
    # Corners are kept exactly (align_corners=True); F.interpolate of the identity is the matrix.
    assert a[0, 0] == 1 and a[-1, -1] == 1
    eye = torch.eye(n).reshape(1, 1, n, n)
    expected = F.interpolate(eye, size=(2 * n, n), mode="bilinear", align_corners=True)[0, 0]
    torch.testing.assert_close(a, expected)


def test_bilinear_matrix_is_cached_per_size_device_and_dtype():
    assert bilinear_matrix(8) is bilinear_matrix(8)
    assert bilinear_matrix(8) is not bilinear_matrix(4)
    assert bilinear_matrix(8, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_matrix_first_built_under_inference_mode_still_trains():
    """A cache filled while sampling (inference_mode) must not break a later backward."""
    unet_classic._bilinear_matrix_cached.cache_clear()
    x = torch.randn(2, 3, 5, 5)
    with torch.inference_mode():
        upsample_bilinear2x(x, "matmul")
    x.requires_grad_(True)
    upsample_bilinear2x(x, "matmul").sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# --- the up-sampling, both forms ---------------------------------------------------------

SHAPES = [(2, 3, 4, 4), (3, 5, 7, 3), (2, 4, 1, 6), (2, 8, 16, 16), (1, 2, 5, 9), (4, 6, 8, 8)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_matmul_upsample_equals_interpolate_forward_and_backward(shape, layout):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn(shape[0], shape[1], 2 * shape[2], 2 * shape[3], generator=g)
    x_ref = x.clone().requires_grad_(True)
    x_new = x.clone().requires_grad_(True)
    ref = _reference(x_ref)
    got = upsample_bilinear2x(x_new, "matmul")
    assert got.shape == ref.shape and got.dtype == ref.dtype
    torch.testing.assert_close(got, ref)  # fp32 tolerance
    ref.backward(grad_out)
    got.backward(grad_out)
    torch.testing.assert_close(x_new.grad, x_ref.grad)
    # channels_last stays channels_last (no layout change for the next conv).
    if layout == "channels_last" and shape[1] > 1:
        assert got.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
def test_matmul_upsample_under_bf16_autocast(input_dtype):
    """Like F.interpolate, it computes in the input's dtype under autocast (no extra casts)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 8, 8, 8, generator=g).to(input_dtype)
    grad_out = torch.randn(3, 8, 16, 16, generator=g).to(input_dtype)
    x_ref = x.clone().requires_grad_(True)
    x_new = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = _reference(x_ref)
        got = upsample_bilinear2x(x_new, "matmul")
    assert got.dtype == ref.dtype == input_dtype
    ref.backward(grad_out)
    got.backward(grad_out)
    tol = {"rtol": 2e-2, "atol": 2e-2} if input_dtype == torch.bfloat16 else {}
    torch.testing.assert_close(got, ref, **tol)
    torch.testing.assert_close(x_new.grad, x_ref.grad, **tol)


def test_upsample_choice_is_declared_per_device():
    assert upsample_impl("cuda") == upsample_impl(torch.device("cuda", 1)) == "matmul"
    assert upsample_impl("cpu") in unet.UPSAMPLE_IMPLS
    assert upsample_impl("xpu") == "matmul"  # not measured: the form without atomics
    with pytest.raises(ValueError, match="unknown upsample implementation 'nearest'"):
        upsample_bilinear2x(torch.zeros(1, 1, 2, 2), "nearest")


def test_up_blocks_use_the_chosen_form_and_add_no_state():
    model = UNet(get_preset("tiny"))
    ups = [m for m in model.modules() if isinstance(m, BilinearUpsample2x)]
    assert len(ups) == model.config.levels
    assert not any(isinstance(m, nn.Upsample) for m in model.modules())
    assert list(model.buffers()) == []  # the matrices are constants, outside the state_dict


def _set_impl(model: nn.Module, impl: str) -> None:
    for m in model.modules():
        if isinstance(m, BilinearUpsample2x):
            m.impl = impl


def _run(model, x, t, impl: str, autocast: bool):
    """(output, gradient of every parameter) of one forward + backward."""
    _set_impl(model, impl)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(x, t)
    out.float().square().mean().backward()
    return out.detach().float(), torch.cat([p.grad.flatten() for p in model.parameters()])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().mean() / b.abs().mean())


def test_tiny_unet_is_the_same_function_with_either_upsample():
    torch.manual_seed(0)
    model = UNet(get_preset("tiny", image_size=16))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 16, 16, generator=g)
    t = torch.tensor([1, 500, 999])
    out_native, grad_native = _run(model, x, t, "native", autocast=False)
    out_matmul, grad_matmul = _run(model, x, t, "matmul", autocast=False)
    torch.testing.assert_close(out_matmul, out_native, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad_matmul, grad_native, rtol=1e-4, atol=1e-5)
    # Under bf16 autocast a rounding flip anywhere spreads through the bf16 convolutions, so
    # compare each form against the fp32 function: the matmul form is no further from it
    # than the native one is (bf16's own error, not the up-sampling's).
    bf_native, bfgrad_native = _run(model, x, t, "native", autocast=True)
    bf_matmul, bfgrad_matmul = _run(model, x, t, "matmul", autocast=True)
    assert _rel(bf_native, out_native) < 0.05
    assert _rel(bf_matmul, out_native) <= 1.25 * _rel(bf_native, out_native) + 1e-4
    assert _rel(bfgrad_matmul, grad_native) <= 1.25 * _rel(bfgrad_native, grad_native) + 1e-4


# --- regional compilation ---------------------------------------------------------------


def _compiled_blocks(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if getattr(m, "_compiled_call_impl", None) is not None]


@pytest.mark.parametrize("preset", ["tiny", "res-tiny"])
def test_compile_model_compiles_the_outermost_blocks_in_place(preset):
    model = UNet(get_preset(preset))
    keys = list(model.state_dict())
    assert compile_model(model) is model
    assert torch._dynamo.config.recompile_limit >= 64  # every block variant stays compiled
    assert list(model.state_dict()) == keys  # no _orig_mod. prefix: checkpoints unchanged
    compiled = _compiled_blocks(model)
    top = [name for name, m in model.named_modules() if isinstance(m, unet.COMPILED_BLOCKS)
           and not any(name.startswith(c + ".") for c in compiled)]
    assert compiled == top and compiled
    if preset == "tiny":  # a Down is one region, its DoubleConvs are not compiled again
        assert "down1" in compiled and "down1.maxpool_conv.1" not in compiled
        assert {"conv0", "conv1.0", "conv1.2", "up1", "sa3"} <= set(compiled)
        assert "output" not in compiled


def test_compile_model_needs_a_block():
    with pytest.raises(ValueError, match="no block to compile in Linear"):
        compile_model(nn.Linear(2, 2))


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_compile_model_computes_the_eager_function():
    if not torch.cuda.is_available() and os.environ.get("DDPM_TUI_COMPILE_TEST") != "1":
        pytest.skip("compiling the tiny UNet's blocks takes minutes on a small CPU-only machine; "
                    "set DDPM_TUI_COMPILE_TEST=1 to run it here")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    eager = UNet(get_preset("tiny", image_size=16)).to(device)
    compiled = UNet(get_preset("tiny", image_size=16)).to(device)
    compiled.load_state_dict(eager.state_dict())
    compile_model(compiled)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 16, generator=g).to(device)
    t = torch.tensor([3, 700], device=device)
    for model in (eager, compiled):
        model(x, t).square().mean().backward()
    torch.testing.assert_close(compiled(x, t), eager(x, t), rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=name)
