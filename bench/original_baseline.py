"""The UNet of dogs-image-generator-DDPM (the original project) as the original wrote it: the baseline the benchmarks measure against.

Not used by the project itself. It reproduces the original's computational choices: attention
through ``nn.MultiheadAttention`` returning its (averaged) attention weights, attention
sizes hard-coded at 32/16/8/4 (so 64x64 input only), the time embedding ``repeat``-ed over
H and W, ``view``-based reshapes (contiguous NCHW only) and fp32. Its module names and
parameter shapes are the original's (including the never-called ``sa8`` block), so its state_dict
is exactly what the original's ``train.py`` saved: tests load it with
``core.diffusion.unet.from_original_state_dict`` and check that both networks compute the same function.
``to_original_style`` turns a UNet of any preset into the same original-style computation (the
benchmarks' baseline).

It is an independent reference: nothing here is imported from the product (``core``), so
the equivalence test compares two separate implementations of every block.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F


class OriginalDoubleConv(nn.Module):
    """The original's DoubleConv: (3x3 conv without bias, GroupNorm(1, C), GELU) then (3x3 conv,
    GroupNorm); the residual variant adds the input and applies GELU."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None, residual: bool = False):
        super().__init__()
        self.residual = residual
        if not mid_channels:
            mid_channels = out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(1, mid_channels),
            nn.GELU(),
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(1, out_channels),
        )

    def forward(self, x):
        if self.residual:
            return F.gelu(x + self.double_conv(x))
        return self.double_conv(x)


class OriginalDown(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int = 256):
        super().__init__()
        self.maxpool_conv = nn.Sequential(
            nn.MaxPool2d(2), OriginalDoubleConv(in_ch, in_ch, residual=True), OriginalDoubleConv(in_ch, out_ch)
        )
        self.emb_layer = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_ch))

    def forward(self, x, t):
        x = self.maxpool_conv(x)
        emb = self.emb_layer(t)[:, :, None, None].repeat(1, 1, x.shape[-2], x.shape[-1])
        return x + emb


class OriginalUp(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int = 256):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = nn.Sequential(
            OriginalDoubleConv(in_ch, in_ch, residual=True), OriginalDoubleConv(in_ch, out_ch, in_ch // 2)
        )
        self.emb_layer = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_ch))

    def forward(self, x, skip_x, t):
        x = self.up(x)
        x = torch.cat([skip_x, x], dim=1)
        x = self.conv(x)
        emb = self.emb_layer(t)[:, :, None, None].repeat(1, 1, x.shape[-2], x.shape[-1])
        return x + emb


class OriginalSelfAttention(nn.Module):
    """The original's block at a fixed ``size``; ``size=None`` takes it from the input (for presets)."""

    def __init__(self, channels: int, size: int | None, num_heads: int = 4):
        super().__init__()
        self.channels = channels
        self.size = size
        self.attention = nn.MultiheadAttention(channels, num_heads, batch_first=True)
        self.ln = nn.LayerNorm([channels])
        self.seq = nn.Sequential(
            nn.LayerNorm([channels]), nn.Linear(channels, channels), nn.GELU(), nn.Linear(channels, channels)
        )

    def forward(self, x):
        size = self.size or x.shape[-1]
        x = x.view(-1, self.channels, size * size).swapaxes(1, 2)
        x_ln = self.ln(x)
        attention_value, _ = self.attention(x_ln, x_ln, x_ln)  # need_weights=True (default)
        attention_value = attention_value + x
        attention_value = self.seq(attention_value) + attention_value
        return attention_value.swapaxes(2, 1).view(-1, self.channels, size, size)


class OriginalBaselineUNet(nn.Module):
    """The original's network (64x64 RGB, 93,417,859 parameters including the unused sa8)."""

    def __init__(self, c_in: int = 3, c_out: int = 3, time_dim: int = 256):
        super().__init__()
        self.time_dim = time_dim
        self.conv0 = OriginalDoubleConv(c_in, 64)
        self.down1 = OriginalDown(64, 128)
        self.sa1 = OriginalSelfAttention(128, 32)
        self.down2 = OriginalDown(128, 256)
        self.sa2 = OriginalSelfAttention(256, 16)
        self.down3 = OriginalDown(256, 512)
        self.sa3 = OriginalSelfAttention(512, 8)
        self.down4 = OriginalDown(512, 512)
        self.sa4 = OriginalSelfAttention(512, 4)
        self.conv1 = nn.Sequential(OriginalDoubleConv(512, 1024), OriginalDoubleConv(1024, 1024), OriginalDoubleConv(1024, 512))
        self.up1 = OriginalUp(1024, 256)
        self.sa5 = OriginalSelfAttention(256, 8)
        self.up2 = OriginalUp(512, 128)
        self.sa6 = OriginalSelfAttention(128, 16)
        self.up3 = OriginalUp(256, 64)
        self.sa7 = OriginalSelfAttention(64, 32)
        self.up4 = OriginalUp(128, 64)
        self.sa8 = OriginalSelfAttention(64, 64)  # defined by the original, never called
        self.output = nn.Conv2d(64, c_out, kernel_size=1)

    def pos_encoding(self, t, channels):
        inv_freq = 1.0 / (10000 ** (torch.arange(0, channels, 2, device=t.device).float() / channels))
        pos_enc_a = torch.sin(t.repeat(1, channels // 2) * inv_freq)
        pos_enc_b = torch.cos(t.repeat(1, channels // 2) * inv_freq)
        return torch.cat([pos_enc_a, pos_enc_b], dim=-1)

    def forward(self, x, t, labels=None):
        t = t.unsqueeze(-1).type(torch.float)
        t = self.pos_encoding(t, self.time_dim)
        x1 = self.conv0(x)
        x2 = self.sa1(self.down1(x1, t))
        x3 = self.sa2(self.down2(x2, t))
        x4 = self.sa3(self.down3(x3, t))
        x5 = self.sa4(self.down4(x4, t))
        x5 = self.conv1(x5)
        x = self.sa5(self.up1(x5, x4, t))
        x = self.sa6(self.up2(x, x3, t))
        x = self.sa7(self.up3(x, x2, t))
        x = self.up4(x, x1, t)
        return self.output(x)


def to_original_style(model: nn.Module) -> nn.Module:
    """A copy of a ``core.diffusion.unet.UNet`` (any preset) whose blocks run the original's way.

    Down/Up blocks ``repeat`` the time embedding, attention blocks use
    ``nn.MultiheadAttention`` with weights returned and ``view`` reshapes. Same parameters,
    same function as ``model``: only the computational choices differ.
    """
    original_style = copy.deepcopy(model)

    def convert(parent: nn.Module) -> None:
        # Recognised by class name: this module imports nothing from the product.
        for name, child in list(parent.named_children()):
            kind = type(child).__name__
            if kind == "Down":
                new = OriginalDown(child.maxpool_conv[1].double_conv[0].in_channels,
                               child.emb_layer[1].out_features, child.emb_layer[1].in_features)
            elif kind == "Up":
                new = OriginalUp(child.conv[0].double_conv[0].in_channels,
                             child.emb_layer[1].out_features, child.emb_layer[1].in_features)
            elif kind == "SelfAttention":
                new = OriginalSelfAttention(child.channels, None, child.attention.num_heads)
            else:
                convert(child)
                continue
            new.load_state_dict(child.state_dict())
            setattr(parent, name, new)

    convert(original_style)
    return original_style
