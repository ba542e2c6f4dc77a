"""The denoising network: a UNet with time (and optional class) conditioning.

Two block designs, recorded in ``UNetConfig.block`` so a checkpoint rebuilds its own network:
- ``"classic"`` (the default, so configs written before the field existed rebuild unchanged;
  ``"seed"`` in configs written before the rename): the network of dogs-image-generator-DDPM
  (the original project) module for module (:mod:`core.diffusion.unet_classic`), so a
  ``model_state.pth`` written by the original's ``train.py`` loads with
  :func:`from_original_state_dict`. The ``classic``, ``small`` and ``tiny`` presets use it.
- ``"resnet"``: ResNet blocks with scale-and-shift time conditioning
  (:mod:`core.diffusion.unet_resnet`). The ``res-small`` and ``res-tiny`` presets use it.

The configuration and presets live in :mod:`core.diffusion.unet_config`; this module
re-exports them, so ``core.diffusion.unet`` stays the one import for callers.
:func:`compile_model` compiles the repeated blocks one by one (regional compilation).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn as nn

from core.diffusion.unet_classic import (
    UPSAMPLE_IMPL,
    UPSAMPLE_IMPLS,
    Attention,
    BilinearUpsample2x,
    DoubleConv,
    Down,
    SelfAttention,
    Up,
    bilinear_matrix,
    build_classic,
    forward_classic,
    upsample_bilinear2x,
    upsample_impl,
)
from core.diffusion.unet_config import BLOCKS, PRESETS, UNetConfig, get_preset
from core.diffusion.unet_resnet import ResAttention, ResBlock, Downsample, Upsample, build_resnet, forward_resnet

# The original reports 93,417,859: that includes its never-called 64x64 attention (sa8), left out here.
ORIGINAL_PARAMETER_COUNT = 93_392_643
# Keys an original state_dict may carry that our network does not have: its unused sa8 block.
_ORIGINAL_IGNORED_PREFIXES = ("sa8.",)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """The original's sin/cos embedding: [sin(t*f_i) ..., cos(t*f_i) ...], f_i = 10000^(-2i/dim).

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
            build_resnet(self, c)
        else:
            build_classic(self, c)
        if c.num_classes > 0:
            # One extra row: index num_classes means "no label" (classifier-free guidance).
            self.label_emb = nn.Embedding(c.num_classes + 1, emb)

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
        B, C, H, W = x.shape
        if C != c.in_channels:
            raise ValueError(f"expected {c.in_channels} input channels, got {C}")
        factor = 2**c.downsamplings
        if H % factor or W % factor:
            raise ValueError(f"image size {H}x{W} must be divisible by {factor}")
        emb = self._embedding(t, labels, B, x.device)
        if c.block == "resnet":
            return forward_resnet(self, x, emb)
        return forward_classic(self, x, emb)


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


# --- the original's checkpoints ------------------------------------------------------------


def _strip_wrapper_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Drop a ``module.`` (DataParallel) or ``_orig_mod.`` (torch.compile) prefix on every key."""
    sd = dict(state_dict)
    for prefix in ("module.", "_orig_mod."):
        if sd and all(isinstance(k, str) and k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def from_original_state_dict(state_dict: Mapping[str, Any], **overrides: Any) -> UNet:
    """Build the ``classic`` preset and load a state_dict written by the original's
    ``train.py`` (dogs-image-generator-DDPM's ``model_state.pth``).

    The original's unused ``sa8.*`` (64x64 attention) keys are accepted and ignored. Any other
    missing, unexpected or mis-shaped key raises ValueError naming it.
    ``overrides`` are only fields that do not change parameters (e.g. ``image_size``).
    """
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"expected a state_dict (a mapping of names to tensors), got {type(state_dict).__name__}")
    config = get_preset("classic", **overrides)
    # Build on the meta device (no 93M-parameter random init), then adopt the loaded tensors.
    with torch.device("meta"):
        model = UNet(config)
    ours = model.state_dict()
    theirs = _strip_wrapper_prefix(state_dict)
    theirs = {k: v for k, v in theirs.items() if not (isinstance(k, str) and k.startswith(_ORIGINAL_IGNORED_PREFIXES))}
    missing = [k for k in ours if k not in theirs]
    unexpected = [k for k in theirs if k not in ours]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"original state_dict is missing key {missing[0]!r}{more}")
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise ValueError(f"original state_dict has unexpected key {unexpected[0]!r}{more}")
    for key, ref in ours.items():
        value = theirs[key]
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"original state_dict key {key!r} is a {type(value).__name__}, not a tensor")
        if tuple(value.shape) != tuple(ref.shape):
            raise ValueError(
                f"original state_dict key {key!r} has shape {tuple(value.shape)}, expected {tuple(ref.shape)}"
            )
        if not value.is_floating_point():
            raise ValueError(f"original state_dict key {key!r} has dtype {value.dtype}, expected a float tensor")
        if not torch.isfinite(value).all():
            raise ValueError(f"original state_dict key {key!r} contains NaN or inf")
    # Own copies in float32 (the caller's dict is left alone), contiguous for fast kernels.
    model.load_state_dict(
        {k: theirs[k].detach().to(device="cpu", dtype=torch.float32, copy=True).contiguous() for k in ours},
        assign=True,
    )
    return model


def original_parameter_shapes() -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter of the ``classic`` preset, without allocating it."""
    with torch.device("meta"):
        model = UNet(PRESETS["classic"])
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


__all__ = [
    "BLOCKS",
    "PRESETS",
    "ORIGINAL_PARAMETER_COUNT",
    "UNet",
    "UNetConfig",
    "compile_model",
    "count_parameters",
    "from_original_state_dict",
    "get_preset",
    "original_parameter_shapes",
    "timestep_embedding",
    "upsample_bilinear2x",
]
