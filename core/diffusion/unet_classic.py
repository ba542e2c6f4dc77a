"""The ``classic`` block design: the network of dogs-image-generator-DDPM (the original
project), module for module (same names, same shapes, same function), so a
``model_state.pth`` written by the original's ``train.py`` loads into it.

What it changes from the original, none of it changing the function computed:
- attention runs through ``F.scaled_dot_product_attention`` (no attention-weight matrix is
  materialised or returned), while keeping ``nn.MultiheadAttention``'s parameter names;
- the time embedding is broadcast over H and W instead of ``repeat``-ed;
- attention sizes follow the input (any image size divisible by 2**levels), instead of the
  original's hard-coded 32/16/8/4;
- reshapes use flatten/transpose, so channels_last inputs stay channels_last;
- the bilinear x2 up-sampling (align_corners=True) can run as two fixed matmuls
  (:func:`upsample_bilinear2x`; the same interpolation, a backward without atomics), chosen
  per device in :data:`UPSAMPLE_IMPL`.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.diffusion.unet_config import UNetConfig


# --- per-device choices, declared once --------------------------------------------------

# How the classic design's bilinear x2 up-sampling (align_corners=True) runs, by device type:
# "matmul": the same interpolation as two fixed linear maps, out = A_h @ x @ A_w^T, whose
# backward is two matmuls; "native": F.interpolate, whose CUDA backward is a scatter of
# atomics (17 % of a classic-preset step's GPU time on an H200, issue 14). CPU: by measurement
# (`python -m bench.unet --ab upsample`, README). Other device types use "matmul".
UPSAMPLE_IMPL: dict[str, str] = {"cuda": "matmul", "cpu": "matmul"}
UPSAMPLE_IMPLS = ("matmul", "native")

def upsample_impl(device: torch.device | str) -> str:
    """``"matmul"`` or ``"native"``: how bilinear x2 up-sampling runs on ``device``."""
    return UPSAMPLE_IMPL.get(torch.device(device).type, "matmul")


def _bilinear_matrix_uncached(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # Output row o reads input src = o * (n - 1) / (2n - 1) (align_corners=True), split
    # between floor(src) and the next pixel. Element-wise ops on the device only (Inductor
    # fuses them into one small kernel when compiled); float64 where the device has it,
    # rounded once to ``dtype``.
    exact = torch.float32 if device.type == "mps" else torch.float64
    src = torch.arange(2 * n, device=device, dtype=exact) * ((n - 1) / max(2 * n - 1, 1))
    i0 = src.floor().clamp(max=n - 1)
    i1 = (i0 + 1).clamp(max=n - 1)
    w1 = (src - i0)[:, None]
    cols = torch.arange(n, device=device, dtype=exact)[None, :]
    a = (cols == i0[:, None]) * (1 - w1) + (cols == i1[:, None]) * w1
    return a.to(dtype)


@functools.lru_cache(maxsize=64)
def _bilinear_matrix_cached(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # A plain tensor even when first asked for under inference_mode: autograd saves it later.
    with torch.inference_mode(False), torch.no_grad():
        return _bilinear_matrix_uncached(n, device, dtype)


def bilinear_matrix(n: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The (2n, n) matrix of bilinear x2 interpolation with align_corners=True.

    A constant (not a parameter or buffer: state_dicts stay the original's), cached per size,
    device and dtype; under torch.compile it is built in the graph (constant-folded).
    """
    device = torch.device(device)
    if torch.compiler.is_compiling():
        return _bilinear_matrix_uncached(n, device, dtype)
    return _bilinear_matrix_cached(n, device, dtype)


def upsample_bilinear2x(x: torch.Tensor, impl: str | None = None) -> torch.Tensor:
    """``F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)``.

    ``impl``: ``"matmul"`` or ``"native"``; None: the device's choice (:data:`UPSAMPLE_IMPL`).
    The matmul form computes in ``x``'s dtype, like F.interpolate, also under autocast (no
    extra casts); its output keeps ``x``'s memory format.
    """
    impl = impl or upsample_impl(x.device)
    if impl == "native":
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    if impl != "matmul":
        raise ValueError(f"unknown upsample implementation {impl!r}; known: {', '.join(UPSAMPLE_IMPLS)}")
    B, C, H, W = x.shape
    a_h = bilinear_matrix(H, x.device, x.dtype)
    a_w = bilinear_matrix(W, x.device, x.dtype)
    with torch.autocast(x.device.type, enabled=False):
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            # (B, H, W*C) then (B*2H, W, C): two batched left products, NHWC all along.
            y = x.permute(0, 2, 3, 1)  # contiguous (B, H, W, C)
            y = torch.matmul(a_h, y.reshape(B, H, W * C)).view(B * 2 * H, W, C)
            y = torch.matmul(a_w, y).view(B, 2 * H, 2 * W, C)
            return y.permute(0, 3, 1, 2)  # channels_last (B, C, 2H, 2W)
        x = x.contiguous()
        # Width: one (B*C*H, W) x (W, 2W) product; height: a (2H, H) product per image plane.
        y = torch.matmul(x.view(B * C * H, W), a_w.t()).view(B * C, H, 2 * W)
        return torch.matmul(a_h, y).view(B, C, 2 * H, 2 * W)


class BilinearUpsample2x(nn.Module):
    """The original's ``nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)``, with
    the implementation chosen per device (:func:`upsample_bilinear2x`). No parameters or
    buffers. ``impl`` overrides the device's choice (benchmarks, tests)."""

    def __init__(self, impl: str | None = None):
        super().__init__()
        self.impl = impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_bilinear2x(x, self.impl)


# --- building blocks (module names match the original's) ---------------------------------


class DoubleConv(nn.Module):
    """conv3x3 (no bias) - GroupNorm(1) - GELU - conv3x3 - GroupNorm(1) [+ input, GELU]."""

    def __init__(self, in_ch: int, out_ch: int, mid_ch: int | None = None, residual: bool = False):
        super().__init__()
        mid_ch = mid_ch or out_ch
        if residual and in_ch != out_ch:
            raise ValueError("residual DoubleConv needs in_ch == out_ch")
        self.residual = residual
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_ch, mid_ch, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(1, mid_ch),
            nn.GELU(),
            nn.Conv2d(mid_ch, out_ch, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(1, out_ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.residual:
            return F.gelu(x + self.double_conv(x))
        return self.double_conv(x)


class Down(nn.Module):
    """MaxPool /2, residual DoubleConv, widening DoubleConv, plus the projected time embedding."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int):
        super().__init__()
        self.maxpool_conv = nn.Sequential(
            nn.MaxPool2d(2),
            DoubleConv(in_ch, in_ch, residual=True),
            DoubleConv(in_ch, out_ch),
        )
        self.emb_layer = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_ch))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.maxpool_conv(x)
        # Broadcast over H, W (the original repeats: same values, an extra B*C*H*W copy).
        return x + self.emb_layer(emb)[:, :, None, None]


class Up(nn.Module):
    """Bilinear x2 (align_corners), concat [skip, x], residual DoubleConv, narrowing DoubleConv."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int):
        super().__init__()
        self.up = BilinearUpsample2x()  # the original's nn.Upsample(2, "bilinear", align_corners=True)
        self.conv = nn.Sequential(
            DoubleConv(in_ch, in_ch, residual=True),
            DoubleConv(in_ch, out_ch, in_ch // 2),
        )
        self.emb_layer = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_ch))

    def forward(self, x: torch.Tensor, skip: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        x = torch.cat([skip, x], dim=1)
        x = self.conv(x)
        return x + self.emb_layer(emb)[:, :, None, None]


class Attention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameters and function.

    Parameter names (``in_proj_weight``, ``in_proj_bias``, ``out_proj.weight/bias``) match
    ``nn.MultiheadAttention`` so the original's weights load; the product runs through
    ``F.scaled_dot_product_attention`` (fused kernels, no weights returned).
    """

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        # nn.MultiheadAttention's initialisation.
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, N, C)
        B, N, C = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        # (B, N, 3, heads, d) -> 3 x (B, heads, N, d)
        q, k, v = qkv.view(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(B, N, C)
        return self.out_proj(out)


class SelfAttention(nn.Module):
    """LayerNorm - attention - residual, then LayerNorm-Linear-GELU-Linear residual.

    Works at any spatial size (the original fixes it per block).
    """

    def __init__(self, channels: int, num_heads: int = 4):
        super().__init__()
        self.channels = channels
        self.attention = Attention(channels, num_heads)
        self.ln = nn.LayerNorm([channels])
        self.seq = nn.Sequential(
            nn.LayerNorm([channels]),
            nn.Linear(channels, channels),
            nn.GELU(),
            nn.Linear(channels, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        # (B, C, H*W) -> (B, H*W, C); contiguous for free when x is channels_last.
        h = x.flatten(2).transpose(1, 2)
        h_ln = self.ln(h)
        h = self.attention(h_ln) + h
        h = self.seq(h) + h
        # Back to (B, C, H, W); this is a channels_last view of a contiguous (B, N, C).
        return h.transpose(1, 2).reshape(B, C, H, W)




# --- the network (attribute names are the original's state_dict keys) ----------------------


def build_classic(model: nn.Module, c: UNetConfig) -> None:
    """Add the classic design's blocks to ``model`` under the original's names."""
    w = c.widths
    L = c.levels
    emb = c.time_dim
    model.conv0 = DoubleConv(c.in_channels, w[0])
    for i in range(L):
        setattr(model, f"down{i + 1}", Down(w[i], w[i + 1], emb))
        if c.attn_down[i]:
            setattr(model, f"sa{i + 1}", SelfAttention(w[i + 1], c.num_heads))
    mid = w[L] * c.mid_mult
    model.conv1 = nn.Sequential(DoubleConv(w[L], mid), DoubleConv(mid, mid), DoubleConv(mid, w[L]))
    prev = w[L]
    for i in range(L):
        skip = w[L - 1 - i]
        out = w[max(L - 2 - i, 0)]
        setattr(model, f"up{i + 1}", Up(prev + skip, out, emb))
        if c.attn_up[i]:
            setattr(model, f"sa{L + i + 1}", SelfAttention(out, c.num_heads))
        prev = out
    model.output = nn.Conv2d(w[0], c.in_channels, kernel_size=1)


def forward_classic(model: nn.Module, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """The classic network's pass over ``x`` given the (time + label) embedding ``emb``."""
    c = model.config
    L = c.levels
    h = model.conv0(x)
    skips = [h]
    for i in range(L):
        h = getattr(model, f"down{i + 1}")(h, emb)
        if c.attn_down[i]:
            h = getattr(model, f"sa{i + 1}")(h)
        skips.append(h)
    h = model.conv1(skips.pop())
    for i in range(L):
        h = getattr(model, f"up{i + 1}")(h, skips.pop(), emb)
        if c.attn_up[i]:
            h = getattr(model, f"sa{L + i + 1}")(h)
    return model.output(h)
