"""The UNet's configuration: :class:`UNetConfig` (everything needed to rebuild a network,
stored in checkpoints as a plain dict), the two block designs and the named presets.

Torch-free, like the registry it takes the preset names from. The design and preset of
dogs-image-generator-DDPM (the original project) are called ``classic``; checkpoints and
configs written before the rename say ``seed``, read as ``classic``
(:data:`core.diffusion.registry.FORMER_NAMES`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

from core.diffusion.registry import BLOCK_NAMES, current_name


@dataclass(frozen=True)
class UNetConfig:
    """Everything needed to rebuild a UNet. Stored in checkpoints as a plain dict.

    ``block="classic"``: channel widths per level are ``[base_channels] + [base_channels * m
    for m in channel_mults]`` (one down-sampling per entry of ``channel_mults``); the middle
    runs at ``mid_mult * widths[-1]``. ``attn_down[i]`` puts self-attention after down block
    i+1, ``attn_up[i]`` after up block i+1 (the original: after every down block and after every
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
    # Added after the first checkpoints were written: the defaults are the classic design, and
    # to_dict leaves them out at their defaults, so such configs serialise as before.
    block: str = "classic"
    res_blocks: int = 2

    def __post_init__(self) -> None:
        # Configs written before the rename say "seed" for the classic preset and block.
        object.__setattr__(self, "preset", current_name(self.preset))
        object.__setattr__(self, "block", current_name(self.block))
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
        return self.levels if self.block == "classic" else self.levels - 1

    @property
    def widths(self) -> list[int]:
        if self.block == "classic":
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
        # Fields added later are left out at their defaults: a classic-design config keeps
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


BLOCKS = BLOCK_NAMES
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
    # The original's network: 64x64 RGB, 93,392,643 parameters.
    "classic": UNetConfig(preset="classic"),
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
    """The named preset, with fields overridden (e.g. ``num_classes=26``, ``image_size=32``).
    A former name (``seed``) gives its current preset."""
    name = current_name(name)
    if "preset" in overrides:
        overrides = {**overrides, "preset": current_name(overrides["preset"])}
    if name not in PRESETS:
        raise ValueError(f"unknown UNet preset {name!r}; known presets: {', '.join(PRESETS)}")
    if "preset" in overrides and overrides["preset"] != name:
        raise ValueError(f"preset override {overrides['preset']!r} conflicts with {name!r}")
    try:
        return replace(PRESETS[name], **overrides)
    except TypeError as exc:  # unknown field name
        known = ", ".join(f.name for f in fields(UNetConfig))
        raise ValueError(f"bad override for preset {name!r}: {exc}; known fields: {known}") from None

