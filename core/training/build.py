"""Building what a training session works with: seeds and data order, the network, EMA,
optimizer and diffusion (restored from a checkpoint when the run resumes), torch.compile and
its on-disk cache, and the learning-rate schedule."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.data.dataset import batches_on
from core.diffusion.checkpoint import restore_rng_state
from core.diffusion.device import autocast_dtype
from core.diffusion.ema import EMA
from core.diffusion.power_ema import PowerEMA
from core.diffusion.process import Process, build_process
from core.diffusion.unet import UNet
from core.training.config import TrainConfig, TrainError
from core.training.distributed import Dist
from core.training.init_from import InitWeights, apply_init

# ---------------------------------------------------------------------------- seeds


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any tuple of ints/strings: independent streams per (purpose, step, rank)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def epoch_order(num_items: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """This rank's share of epoch ``epoch``'s shuffled indices (DistributedSampler-style:
    the permutation is padded by wrapping around so every rank gets the same count)."""
    gen = torch.Generator().manual_seed(derive_seed("epoch", seed, epoch))
    perm = torch.randperm(num_items, generator=gen)
    per_rank = math.ceil(num_items / world_size)
    total = per_rank * world_size
    if total > num_items:
        perm = torch.cat([perm, perm.repeat(math.ceil(total / num_items))[: total - num_items]])
    return perm[rank:total:world_size]


def weights_digest(model: nn.Module | dict[str, torch.Tensor]) -> str:
    """sha256 of a module's (or a state dict's) tensors: equal digests mean bit-identical weights."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    h = hashlib.sha256()
    for name, p in sorted(state.items()):
        h.update(name.encode())
        h.update(p.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------- what a session holds


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint, restored on resume."""

    step: int = 0
    epoch: int = 0  # completed epochs
    pos: int = 0  # samples of this rank's shard already consumed in the current epoch
    images_seen: int = 0
    nonfinite_total: int = 0
    train_seconds: float = 0.0  # wall time spent in the loop over all sessions


@dataclass
class Parts:
    """The objects one training session works with, built once and passed together."""

    dataset: Any
    classes: list[str]
    model: nn.Module  # the plain UNet: saved, sampled, averaged
    train_model: nn.Module  # what a step calls: ``model`` under DDP and/or torch.compile
    ema: EMA | PowerEMA
    optimizer: torch.optim.Optimizer
    diffusion: Process  # Diffusion (VP) or EDM, by the run's formulation
    amp_dtype: torch.dtype | None
    batches: Any = None  # what get_batch is called on: core.data.dataset.DeviceBatches, or the dataset itself
    data_line: str = ""  # which of the two, for train.log


def build_parts(config: TrainConfig, world: Dist, dataset: Any, classes: list[str], ckpt: dict | None,
                state: TrainState, log: logging.Logger, init: InitWeights | None = None) -> tuple[Parts, str]:
    """Network, EMA, optimizer and diffusion, restored from ``ckpt`` (into ``state`` too) when
    it resumes, or a new run's network from ``init`` (core.training.init_from.InitWeights,
    --init-from). Returns the parts and, under --compile, where the compile cache lives."""
    device = world.device
    diffusion = build_process(config.diffusion_config()).to(device)
    torch.manual_seed(derive_seed("init", config.seed))  # same initial weights on every rank
    model = UNet(config.model_config(len(classes))).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    elif init is not None:
        apply_init(init, model, classes)
    # Made after the weights are restored: a checkpoint without an EMA (one imported from
    # the original project) starts its average at those weights.
    ema = make_ema(config, model)
    optimizer = make_optimizer(config, model, device)
    if ckpt is not None:
        restore(ckpt, ema, optimizer, state, config, world, log)
    train_model: nn.Module = model
    if world.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    compile_note = ""
    if config.compile:
        compile_note = use_compile_cache(config.cache_dir)
        train_model = compile_network(train_model)  # compiles lazily, at the first step
    # After the network and optimizer: the images go to the device only if they fit beside them.
    batches, data_line = batches_on(dataset, device)
    parts = Parts(dataset, classes, model, train_model, ema, optimizer, diffusion,
                  autocast_dtype(device, config.amp, training=True), batches, data_line)
    return parts, compile_note


def make_ema(config: TrainConfig, model: nn.Module) -> EMA | PowerEMA:
    """The average --ema-kind names: exponential (--ema-decay, --ema-warmup) or power (two
    profiles; --ema-length is what grids and evaluations use)."""
    if config.ema_kind == "power":
        return PowerEMA(model, length=config.ema_length)
    return EMA(model, decay=config.ema_decay, warmup_steps=config.ema_warmup)


def restore_ema(ckpt: dict, ema: EMA | PowerEMA, config: TrainConfig) -> None:
    """The checkpoint's average into ``ema``; a changed --ema-decay / --ema-warmup /
    --ema-length applies from now on. A checkpoint whose EMA is of the other kind is refused
    (ema_kind is fixed when a run starts), in one line."""
    state = ckpt["ema"]
    saved = "power" if state.get("kind") == "power" else "exp"
    if saved != config.ema_kind:
        raise TrainError(f"checkpoint {ckpt.get('path', '')} holds an {saved} EMA but the run asks for "
                         f"ema_kind {config.ema_kind}: the EMA kind cannot change on resume; start a new --run")
    if isinstance(ema, PowerEMA):
        ema.load_state_dict({**state, "length": config.ema_length})
    else:
        ema.load_state_dict({**state, "decay": config.ema_decay, "warmup_steps": config.ema_warmup})


def restore(ckpt: dict, ema: EMA | PowerEMA, optimizer: torch.optim.Optimizer, s: TrainState, config: TrainConfig,
            world: Dist, log: logging.Logger) -> None:
    """EMA, optimizer, RNG states and the training state from a checkpoint."""
    if ckpt.get("ema"):
        restore_ema(ckpt, ema, config)
    if ckpt.get("optimizer"):
        optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("rng"):
        restore_rng_state(ckpt["rng"])
    extra = ckpt.get("extra") or {}
    s.step, s.epoch = int(ckpt["step"]), int(ckpt["epoch"])
    s.pos = int(extra.get("pos", 0))
    saved_world = int(extra.get("world_size", world.world_size))
    saved_batch = int(extra.get("batch_size", config.batch_size))
    if saved_world != world.world_size:
        s.pos = s.pos * saved_world // world.world_size
        log.warning("world size changed from %d to %d: the data order continues approximately",
                    saved_world, world.world_size)
    if saved_batch != config.batch_size:
        log.warning("batch size changed from %d to %d", saved_batch, config.batch_size)
    s.images_seen = int(extra.get("images_seen", 0))
    s.nonfinite_total = int(extra.get("nonfinite_total", 0))
    s.train_seconds = float(extra.get("train_seconds", 0.0))


# ---------------------------------------------------------------------------- torch.compile


COMPILE_BACKEND = "inductor"  # torch.compile's default; the tests use "aot_eager" (no C++/Triton build)


def compile_network(model: nn.Module) -> nn.Module:
    """What --compile does to the network a step calls (``model`` is the UNet, or the UNet
    under DDP). The one place to switch to a regional compile of the UNet's blocks."""
    return torch.compile(model, backend=COMPILE_BACKEND)


COMPILE_CACHE_DIR = "torch-compile"  # under the workspace's cache/


def use_compile_cache(cache_dir: str | os.PathLike | None) -> str:
    """Keep TorchInductor's on-disk caches (compiled FX graphs, AOTAutograd's joint graphs,
    Triton kernels) in ``cache_dir``/torch-compile, so a later run of the same network,
    shapes, torch and GPU skips most of the compile. A TORCHINDUCTOR_CACHE_DIR the user
    set is kept, and so is torch's default (/tmp/torchinductor_USER) without a workspace.
    Must run before the first compile in this process. Returns the folder in use."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ and cache_dir:
        folder = Path(cache_dir) / COMPILE_CACHE_DIR
        folder.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    # On by default in current torch; older releases had the AOTAutograd cache off.
    # TORCHINDUCTOR_FX_GRAPH_CACHE / TORCHINDUCTOR_AUTOGRAD_CACHE set by the user still win.
    if "TORCHINDUCTOR_FX_GRAPH_CACHE" not in os.environ:
        with contextlib.suppress(ImportError, AttributeError):
            import torch._inductor.config as inductor_config

            inductor_config.fx_graph_cache = True
    if "TORCHINDUCTOR_AUTOGRAD_CACHE" not in os.environ:
        with contextlib.suppress(ImportError, AttributeError):
            import torch._functorch.config as functorch_config

            functorch_config.enable_autograd_cache = True
    return os.environ.get("TORCHINDUCTOR_CACHE_DIR", "torch's default (/tmp/torchinductor_$USER)")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def make_optimizer(config: TrainConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """Adam (the original's) or AdamW. The fused kernel updates all parameters in one pass: ~5x
    faster than the per-tensor loop for the classic network on a CPU (82 ms vs ~400 ms a step,
    measured), same maths."""
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
               fused=device.type in ("cpu", "cuda", "mps"))


def lr_at(config: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate for step ``step`` (0-based): linear warm-up, then constant or cosine."""
    lr = config.lr
    if config.lr_warmup > 0 and step < config.lr_warmup:
        lr *= (step + 1) / config.lr_warmup
    if config.lr_schedule == "cosine" and total_steps > 0:
        lr *= 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    return lr


def micro_batches(n: int, grad_accum: int) -> list[slice]:
    """A step's batch of ``n`` split for --grad-accum: slices of ceil(n / grad_accum) images
    (fewer, and a smaller last one, when n does not divide; one slice when grad_accum is 1)."""
    size = max(1, math.ceil(n / grad_accum))
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def grad_norm(model: nn.Module) -> torch.Tensor:
    """The gradients' total L2 norm, as clip_grad_norm_ measures it, without clipping."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros((), device=next(model.parameters()).device)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def params_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())
