"""The ``resnet`` block design: the design of improved-diffusion / lucidrains, chosen for
quality per CPU minute: ResNet blocks (GroupNorm, SiLU, 3x3 convs) with the time embedding
(an MLP over the sinusoid) applied as a scale and shift in every block, attention only where
the feature map is small, strided-conv down-sampling, nearest + conv up-sampling,
zero-initialised residual branches.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.diffusion.unet_classic import Attention  # the original's attention, also used here
from core.diffusion.unet_config import UNetConfig


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


def build_resnet(model: nn.Module, c: UNetConfig) -> None:
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


def forward_resnet(model: nn.Module, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
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

