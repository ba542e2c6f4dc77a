"""The denoising network: a UNet with time (and optional class) conditioning.

Two block designs, recorded in ``UNetConfig.block`` so a checkpoint rebuilds its own network:
- ``"seed"`` (the default, so configs written before the field existed rebuild unchanged):
  the seed project's network module for module (same names, same shapes, same function), so
  a ``model_state.pth`` written by the seed's ``train.py`` loads with
  :func:`from_seed_state_dict`. The ``seed``, ``small`` and ``tiny`` presets use it.
- ``"resnet"``: the design of improved-diffusion / lucidrains, chosen for quality per CPU
  minute: ResNet blocks (GroupNorm, SiLU, 3x3 convs) with the time embedding (an MLP over the
  sinusoid) applied as a scale and shift in every block, attention only where the feature
  map is small, strided-conv down-sampling, nearest + conv up-sampling, zero-initialised
  residual branches. The ``res-small`` and ``res-tiny`` presets use it.

What the ``seed`` design changes from the seed, none of it changing the function computed:
- attention runs through ``F.scaled_dot_product_attention`` (no attention-weight matrix is
  materialised or returned), while keeping ``nn.MultiheadAttention``'s parameter names;
- the time embedding is broadcast over H and W instead of ``repeat``-ed;
- attention sizes follow the input (any image size divisible by 2**levels), instead of the
  seed's hard-coded 32/16/8/4;
- reshapes use flatten/transpose, so channels_last inputs stay channels_last;
- the bilinear x2 up-sampling (align_corners=True) can run as two fixed matmuls
  (:func:`upsample_bilinear2x`; the same interpolation, a backward without atomics), chosen
  per device in :data:`UPSAMPLE_IMPL`.

:func:`compile_model` compiles the repeated blocks one by one (regional compilation).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

# The seed reports 93,417,859: that includes its never-called 64x64 attention (sa8), left out here.
SEED_PARAMETER_COUNT = 93_392_643
# Keys a seed state_dict may carry that our network does not have: its unused sa8 block.
_SEED_IGNORED_PREFIXES = ("sa8.",)


@dataclass(frozen=True)
class UNetConfig:
    """Everything needed to rebuild a UNet. Stored in checkpoints as a plain dict.

    ``block="seed"``: channel widths per level are ``[base_channels] + [base_channels * m
    for m in channel_mults]`` (one down-sampling per entry of ``channel_mults``); the middle
    runs at ``mid_mult * widths[-1]``. ``attn_down[i]`` puts self-attention after down block
    i+1, ``attn_up[i]`` after up block i+1 (the seed: after every down block and after every
    up block except the last, full-resolution one).

    ``block="resnet"``: one stage per entry of ``channel_mults`` at width ``base_channels * m``,
    full resolution first, halved between stages; ``res_blocks`` ResNet blocks per stage on
    the way down (one more on the way up); ``attn_down[i]`` adds attention after each block of
    down stage i (i = 0 at full resolution), ``attn_up[i]`` after each block of up stage i
    (i = 0 at the lowest resolution); the middle (block, attention, block) runs at
    ``mid_mult * widths[-1]``.
    """

    preset: str = "custom"
    image_size: int = 64
    in_channels: int = 3
    base_channels: int = 64
    channel_mults: tuple[int, ...] = (2, 4, 8, 8)
    mid_mult: int = 2
    attn_down: tuple[bool, ...] = (True, True, True, True)
    attn_up: tuple[bool, ...] = (True, True, True, False)
    num_heads: int = 4
    time_dim: int = 256
    num_classes: int = 0
    # Added after the first checkpoints were written: the defaults are the seed design, and
    # to_dict leaves them out at their defaults, so such configs serialise as before.
    block: str = "seed"
    res_blocks: int = 2

    def __post_init__(self) -> None:
        # Coerce lists (from JSON / checkpoints) to tuples so configs compare and hash equal.
        object.__setattr__(self, "channel_mults", tuple(int(m) for m in self.channel_mults))
        object.__setattr__(self, "attn_down", tuple(bool(a) for a in self.attn_down))
        object.__setattr__(self, "attn_up", tuple(bool(a) for a in self.attn_up))
        self.validate()

    @property
    def levels(self) -> int:
        return len(self.channel_mults)

    @property
    def downsamplings(self) -> int:
        return self.levels if self.block == "seed" else self.levels - 1

    @property
    def widths(self) -> list[int]:
        if self.block == "seed":
            return [self.base_channels] + [self.base_channels * m for m in self.channel_mults]
        return [self.base_channels * m for m in self.channel_mults]

    def validate(self) -> None:
        if self.block not in BLOCKS:
            raise ValueError(f"UNetConfig: unknown block design {self.block!r}; known: {', '.join(BLOCKS)}")
        levels = len(self.channel_mults)
        if levels < 1:
            raise ValueError("UNetConfig: channel_mults must have at least one level")
        if len(self.attn_down) != levels or len(self.attn_up) != levels:
            raise ValueError(
                f"UNetConfig: attn_down/attn_up need {levels} entries (one per level), "
                f"got {len(self.attn_down)}/{len(self.attn_up)}"
            )
        for name in ("image_size", "in_channels", "base_channels", "mid_mult", "num_heads", "time_dim", "res_blocks"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"UNetConfig: {name} must be positive, got {getattr(self, name)}")
        if any(m <= 0 for m in self.channel_mults):
            raise ValueError(f"UNetConfig: channel_mults must be positive, got {self.channel_mults}")
        if self.num_classes < 0:
            raise ValueError(f"UNetConfig: num_classes must be >= 0, got {self.num_classes}")
        if self.time_dim % 2:
            raise ValueError(f"UNetConfig: time_dim must be even, got {self.time_dim}")
        factor = 2**self.downsamplings
        if self.image_size % factor:
            raise ValueError(
                f"UNetConfig: image_size {self.image_size} must be divisible by {factor} "
                f"({self.downsamplings} down-sampling levels)"
            )
        if self.block == "resnet":
            for width in set(self.widths) | {self.widths[-1] * self.mid_mult}:
                if width % 4:  # GroupNorm groups of at least 4 channels
                    raise ValueError(f"UNetConfig: resnet widths must be multiples of 4, got {width}")
        for width in _attention_widths(self):
            if width % self.num_heads:
                raise ValueError(
                    f"UNetConfig: attention width {width} is not divisible by num_heads={self.num_heads}"
                )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of str/int/bool/lists: JSON- and ``weights_only``-safe."""
        d = asdict(self)
        for key in ("channel_mults", "attn_down", "attn_up"):
            d[key] = list(d[key])
        # Fields added later are left out at their defaults: a seed-design config keeps
        # the exact dict it had (checkpoint comparisons, older readers).
        defaults = {f.name: f.default for f in fields(self)}
        for key in _ADDED_FIELDS:
            if d[key] == defaults[key]:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "UNetConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"UNetConfig: unknown field(s) {', '.join(unknown)}")
        return cls(**dict(data))


BLOCKS = ("seed", "resnet")
_ADDED_FIELDS = ("block", "res_blocks")


def _attention_widths(cfg: UNetConfig) -> list[int]:
    w = cfg.widths
    L = cfg.levels
    if cfg.block == "resnet":
        out = [w[i] for i in range(L) if cfg.attn_down[i]]
        out += [w[L - 1 - i] for i in range(L) if cfg.attn_up[i]]
        return out + [w[-1] * cfg.mid_mult]
    out = [w[i + 1] for i in range(L) if cfg.attn_down[i]]
    out += [w[max(L - 2 - i, 0)] for i in range(L) if cfg.attn_up[i]]
    return out


PRESETS: dict[str, UNetConfig] = {
    # The seed's network: 64x64 RGB, 93,392,643 parameters.
    "seed": UNetConfig(preset="seed"),
    # Same shape of network at a quarter of the width: a real model on a CPU (~8.2M params).
    "small": UNetConfig(
        preset="small",
        base_channels=32,
        channel_mults=(2, 4, 4, 4),
        attn_down=(False, True, True, True),
        attn_up=(True, True, False, False),
        time_dim=128,
    ),
    # For tests and smoke runs: trains in seconds on 16x16 or 32x32 images.
    "tiny": UNetConfig(
        preset="tiny",
        image_size=32,
        base_channels=16,
        channel_mults=(1, 2, 2, 2),
        mid_mult=1,
        attn_down=(False, False, True, True),
        attn_up=(True, False, False, False),
        time_dim=32,
    ),
    # The resnet design, sized for a CPU by `python -m bench.unet --compare`: stages at
    # 32/16/8/4 px for 32x32 images. ~4.8M parameters, attention at 16x16 and below; a
    # training step ~1.5x the peer's speed (lucidrains' Unet(dim=32, dim_mults=(1, 2, 4))).
    "res-small": UNetConfig(
        preset="res-small",
        image_size=32,
        block="resnet",
        base_channels=32,
        channel_mults=(1, 2, 4, 4),
        mid_mult=1,
        attn_down=(False, True, True, True),
        attn_up=(True, True, True, False),
        time_dim=128,
        res_blocks=1,
    ),
    # ~1.7M parameters, attention at 8x8 and below: faster per step than `small`.
    "res-tiny": UNetConfig(
        preset="res-tiny",
        image_size=32,
        block="resnet",
        base_channels=32,
        channel_mults=(1, 2, 2, 2),
        mid_mult=1,
        attn_down=(False, False, True, True),
        attn_up=(True, True, False, False),
        time_dim=128,
        res_blocks=1,
    ),
}


def get_preset(name: str, **overrides: Any) -> UNetConfig:
    """The named preset, with fields overridden (e.g. ``num_classes=26``, ``image_size=32``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown UNet preset {name!r}; known presets: {', '.join(PRESETS)}")
    if "preset" in overrides and overrides["preset"] != name:
        raise ValueError(f"preset override {overrides['preset']!r} conflicts with {name!r}")
    try:
        return replace(PRESETS[name], **overrides)
    except TypeError as exc:  # unknown field name
        known = ", ".join(f.name for f in fields(UNetConfig))
        raise ValueError(f"bad override for preset {name!r}: {exc}; known fields: {known}") from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- per-device choices, declared once --------------------------------------------------

# How the seed design's bilinear x2 up-sampling (align_corners=True) runs, by device type:
# "matmul": the same interpolation as two fixed linear maps, out = A_h @ x @ A_w^T, whose
# backward is two matmuls; "native": F.interpolate, whose CUDA backward is a scatter of
# atomics (17 % of a seed step's GPU time on an H200, issue 14). CPU: by measurement
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

    A constant (not a parameter or buffer: state_dicts stay the seed's), cached per size,
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
    """The seed's ``nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)``, with
    the implementation chosen per device (:func:`upsample_bilinear2x`). No parameters or
    buffers. ``impl`` overrides the device's choice (benchmarks, tests)."""

    def __init__(self, impl: str | None = None):
        super().__init__()
        self.impl = impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_bilinear2x(x, self.impl)


# --- building blocks (module names match the seed's) -------------------------------------


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
        # Broadcast over H, W (the seed repeats: same values, an extra B*C*H*W copy).
        return x + self.emb_layer(emb)[:, :, None, None]


class Up(nn.Module):
    """Bilinear x2 (align_corners), concat [skip, x], residual DoubleConv, narrowing DoubleConv."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int):
        super().__init__()
        self.up = BilinearUpsample2x()  # the seed's nn.Upsample(2, "bilinear", align_corners=True)
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
    ``nn.MultiheadAttention`` so the seed's weights load; the product runs through
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

    Works at any spatial size (the seed fixes it per block).
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


# --- the resnet design ----------------------------------------------------------------------


def _norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups of at least 4 channels (improved-diffusion uses 32)."""
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0 and channels // g >= 4)
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    """norm-SiLU-conv, time scale/shift on the second norm, SiLU-conv (zero-initialised), + skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int):
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = _norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        # The block starts as the identity (plus skip): deep stacks train from the first step.
        nn.init.zeros_(self.conv2.weight)
        self.skip = nn.Conv2d(in_ch, out_ch, 1, bias=False) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``emb``: the conditioning embedding, already through SiLU (done once per forward)."""
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return h + self.skip(x)


class ResAttention(nn.Module):
    """GroupNorm - multi-head self-attention over positions - residual (output zero-initialised)."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.norm = _norm(channels)
        self.attention = Attention(channels, num_heads)
        nn.init.zeros_(self.attention.out_proj.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.attention(self.norm(x).flatten(2).transpose(1, 2))
        return x + h.transpose(1, 2).reshape(B, C, H, W)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class _Stage(nn.Module):
    """The blocks of one resolution: ResBlocks, each followed by attention when asked."""

    def __init__(self, in_chs: list[int], out_ch: int, emb_dim: int, attention: bool, num_heads: int):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(c, out_ch, emb_dim) for c in in_chs)
        self.attns = nn.ModuleList(ResAttention(out_ch, num_heads) for _ in in_chs) if attention else None


def _build_resnet(model: nn.Module, c: UNetConfig) -> None:
    # Convolutions have no bias: a norm or the time shift follows each, and on a CPU a conv
    # bias makes the channels_last backward pass several times slower (bench/unet.py).
    w = c.widths
    L = c.levels
    emb = c.time_dim
    model.time_mlp = nn.Sequential(nn.Linear(emb, emb), nn.SiLU(), nn.Linear(emb, emb))
    model.conv_in = nn.Conv2d(c.in_channels, w[0], 3, padding=1, bias=False)
    skip_chs = [w[0]]  # channels of every tensor the down path hands to the up path
    ch = w[0]
    model.down = nn.ModuleList()
    model.downsample = nn.ModuleList()
    for i in range(L):
        model.down.append(_Stage([ch] + [w[i]] * (c.res_blocks - 1), w[i], emb, c.attn_down[i], c.num_heads))
        ch = w[i]
        skip_chs += [ch] * c.res_blocks
        if i < L - 1:
            model.downsample.append(Downsample(ch))
            skip_chs.append(ch)
    mid = ch * c.mid_mult
    model.mid1 = ResBlock(ch, mid, emb)
    model.mid_attn = ResAttention(mid, c.num_heads)
    model.mid2 = ResBlock(mid, ch, emb)
    model.up = nn.ModuleList()
    model.upsample = nn.ModuleList()
    for j in range(L):  # j = 0: the lowest resolution
        i = L - 1 - j
        in_chs = []
        for _ in range(c.res_blocks + 1):
            in_chs.append(ch + skip_chs.pop())
            ch = w[i]
        model.up.append(_Stage(in_chs, w[i], emb, c.attn_up[j], c.num_heads))
        if i > 0:
            model.upsample.append(Upsample(ch))
    model.norm_out = _norm(ch)
    model.conv_out = nn.Conv2d(ch, c.in_channels, 3, padding=1, bias=False)
    nn.init.zeros_(model.conv_out.weight)


def _forward_resnet(model: nn.Module, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    emb = F.silu(emb)  # every block's projection starts with SiLU: do it once
    h = model.conv_in(x)
    skips = [h]
    for i, stage in enumerate(model.down):
        for k, block in enumerate(stage.blocks):
            h = block(h, emb)
            if stage.attns is not None:
                h = stage.attns[k](h)
            skips.append(h)
        if i < len(model.downsample):
            h = model.downsample[i](h)
            skips.append(h)
    h = model.mid2(model.mid_attn(model.mid1(h, emb)), emb)
    for j, stage in enumerate(model.up):
        for k, block in enumerate(stage.blocks):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if stage.attns is not None:
                h = stage.attns[k](h)
        if j < len(model.upsample):
            h = model.upsample[j](h)
    return model.conv_out(F.silu(model.norm_out(h)))


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """The seed's sin/cos embedding: [sin(t*f_i) ..., cos(t*f_i) ...], f_i = 10000^(-2i/dim).

    Always computed in float32 (bf16 cannot represent t up to 1000 exactly).
    """
    t = t.to(torch.float32).unsqueeze(-1)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, device=t.device, dtype=torch.float32) / dim))
    args = t * inv_freq
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class UNet(nn.Module):
    """``forward(x, t, labels=None) -> eps`` with x: (B, C, H, W), t: LongTensor (B,)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        c = config
        emb = c.time_dim
        if c.block == "resnet":
            _build_resnet(self, c)
        else:
            self._build_seed()
        if c.num_classes > 0:
            # One extra row: index num_classes means "no label" (classifier-free guidance).
            self.label_emb = nn.Embedding(c.num_classes + 1, emb)

    def _build_seed(self) -> None:
        c = self.config
        w = c.widths
        L = c.levels
        emb = c.time_dim
        self.conv0 = DoubleConv(c.in_channels, w[0])
        for i in range(L):
            setattr(self, f"down{i + 1}", Down(w[i], w[i + 1], emb))
            if c.attn_down[i]:
                setattr(self, f"sa{i + 1}", SelfAttention(w[i + 1], c.num_heads))
        mid = w[L] * c.mid_mult
        self.conv1 = nn.Sequential(DoubleConv(w[L], mid), DoubleConv(mid, mid), DoubleConv(mid, w[L]))
        prev = w[L]
        for i in range(L):
            skip = w[L - 1 - i]
            out = w[max(L - 2 - i, 0)]
            setattr(self, f"up{i + 1}", Up(prev + skip, out, emb))
            if c.attn_up[i]:
                setattr(self, f"sa{L + i + 1}", SelfAttention(out, c.num_heads))
            prev = out
        self.output = nn.Conv2d(w[0], c.in_channels, kernel_size=1)

    @property
    def null_label(self) -> int:
        return self.config.num_classes

    def _embedding(self, t: torch.Tensor, labels: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        if t.dim() == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"t must have shape ({batch},), got {tuple(t.shape)}")
        emb = timestep_embedding(t.to(device), self.config.time_dim)
        if self.config.block == "resnet":
            emb = self.time_mlp(emb)
        if self.config.num_classes > 0:
            if labels is None:
                labels = torch.full((batch,), self.null_label, dtype=torch.long, device=device)
            else:
                labels = labels.to(device=device, dtype=torch.long)
                if labels.shape != (batch,):
                    raise ValueError(f"labels must have shape ({batch},), got {tuple(labels.shape)}")
                # Range-check on the CPU only: on a GPU it would sync every step; the
                # trainer and the samplers validate labels once before the loop.
                if labels.device.type == "cpu" and labels.numel() and (
                    labels.min() < 0 or labels.max() > self.null_label
                ):
                    raise ValueError(
                        f"labels must be in 0..{self.null_label} ({self.null_label} = no label)"
                    )
            emb = emb + self.label_emb(labels)
        elif labels is not None:
            raise ValueError("labels given to an unconditional UNet (num_classes=0)")
        return emb

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        c = self.config
        L = c.levels
        B, C, H, W = x.shape
        if C != c.in_channels:
            raise ValueError(f"expected {c.in_channels} input channels, got {C}")
        factor = 2**c.downsamplings
        if H % factor or W % factor:
            raise ValueError(f"image size {H}x{W} must be divisible by {factor}")
        emb = self._embedding(t, labels, B, x.device)
        if c.block == "resnet":
            return _forward_resnet(self, x, emb)

        h = self.conv0(x)
        skips = [h]
        for i in range(L):
            h = getattr(self, f"down{i + 1}")(h, emb)
            if c.attn_down[i]:
                h = getattr(self, f"sa{i + 1}")(h)
            skips.append(h)
        h = self.conv1(skips.pop())
        for i in range(L):
            h = getattr(self, f"up{i + 1}")(h, skips.pop(), emb)
            if c.attn_up[i]:
                h = getattr(self, f"sa{L + i + 1}")(h)
        return self.output(h)


# --- regional compilation ---------------------------------------------------------------

# The repeated blocks compile_model compiles one by one: instances of a class share their
# compiled code (parameters are graph inputs), so the first step compiles each block design
# once or twice (static, then dynamic shapes) instead of the whole network as one graph.
# Inside each region Inductor fuses the element-wise work (GroupNorm + GELU, the adds).
COMPILED_BLOCKS: tuple[type[nn.Module], ...] = (
    DoubleConv, Down, Up, SelfAttention, ResBlock, ResAttention, Downsample, Upsample,
)


def compile_model(model: nn.Module, **compile_kwargs: Any) -> nn.Module:
    """Regional compilation: ``module.compile()`` on every outermost repeated block of
    ``model`` (a UNet, or any wrapper holding one: DDP, ...), in place; returns ``model``.

    Keys of ``state_dict`` stay unchanged (no ``_orig_mod.`` prefix); the glue between the
    blocks (time embedding, skips, the output conv) runs eagerly. ``compile_kwargs`` go to
    ``torch.compile`` (e.g. ``mode=``, ``dynamic=``; by default a block class compiles for
    its first shape, then once with dynamic shapes for the others). Raises Dynamo's
    process-wide ``recompile_limit`` to at least 64.
    """
    # Dynamo's cache is per code object: all Down blocks share one, with an entry per input
    # shape/dtype/layout seen. Past the default limit (8) later blocks would silently run
    # eagerly; a UNet has at most a few dozen such variants.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    chosen: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in chosen):
            continue  # inside a block already compiled as a whole
        if isinstance(module, COMPILED_BLOCKS):
            module.compile(**compile_kwargs)
            chosen.append(name)
    if not chosen:
        raise ValueError(f"compile_model: no block to compile in {type(model).__name__}")
    return model


# --- the seed's checkpoints ----------------------------------------------------------------


def _strip_wrapper_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Drop a ``module.`` (DataParallel) or ``_orig_mod.`` (torch.compile) prefix on every key."""
    sd = dict(state_dict)
    for prefix in ("module.", "_orig_mod."):
        if sd and all(isinstance(k, str) and k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def from_seed_state_dict(state_dict: Mapping[str, Any], **overrides: Any) -> UNet:
    """Build the ``seed`` preset and load a state_dict written by the seed's ``train.py``.

    The seed's unused ``sa8.*`` (64x64 attention) keys are accepted and ignored. Any other
    missing, unexpected or mis-shaped key raises ValueError naming it.
    ``overrides`` are only fields that do not change parameters (e.g. ``image_size``).
    """
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"expected a state_dict (a mapping of names to tensors), got {type(state_dict).__name__}")
    config = get_preset("seed", **overrides)
    # Build on the meta device (no 93M-parameter random init), then adopt the loaded tensors.
    with torch.device("meta"):
        model = UNet(config)
    ours = model.state_dict()
    theirs = _strip_wrapper_prefix(state_dict)
    theirs = {k: v for k, v in theirs.items() if not (isinstance(k, str) and k.startswith(_SEED_IGNORED_PREFIXES))}
    missing = [k for k in ours if k not in theirs]
    unexpected = [k for k in theirs if k not in ours]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"seed state_dict is missing key {missing[0]!r}{more}")
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise ValueError(f"seed state_dict has unexpected key {unexpected[0]!r}{more}")
    for key, ref in ours.items():
        value = theirs[key]
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"seed state_dict key {key!r} is a {type(value).__name__}, not a tensor")
        if tuple(value.shape) != tuple(ref.shape):
            raise ValueError(
                f"seed state_dict key {key!r} has shape {tuple(value.shape)}, expected {tuple(ref.shape)}"
            )
        if not value.is_floating_point():
            raise ValueError(f"seed state_dict key {key!r} has dtype {value.dtype}, expected a float tensor")
        if not torch.isfinite(value).all():
            raise ValueError(f"seed state_dict key {key!r} contains NaN or inf")
    # Own copies in float32 (the caller's dict is left alone), contiguous for fast kernels.
    model.load_state_dict(
        {k: theirs[k].detach().to(device="cpu", dtype=torch.float32, copy=True).contiguous() for k in ours},
        assign=True,
    )
    return model


def seed_parameter_shapes() -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter of the ``seed`` preset, without allocating it."""
    with torch.device("meta"):
        model = UNet(PRESETS["seed"])
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


__all__ = [
    "BLOCKS",
    "PRESETS",
    "SEED_PARAMETER_COUNT",
    "UNet",
    "UNetConfig",
    "compile_model",
    "count_parameters",
    "from_seed_state_dict",
    "get_preset",
    "seed_parameter_shapes",
    "timestep_embedding",
    "upsample_bilinear2x",
]
