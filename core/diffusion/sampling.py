"""The one sampling path: :func:`generate` from a checkpoint (or a built model) and a
:class:`SampleRequest` to images, used by ``ddpm-tui sample``, the Sample screen, eval and
the trainer's grids. It picks the weights, device, autocast, labels and sampler (from
core.diffusion.registry's ``SAMPLER_SPECS``; the samplers live in core.diffusion.samplers),
runs any number of images in batches (bounded memory) and reports which weights it used.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from core.diffusion.device import is_oom
from core.diffusion.process import Process as Diffusion  # either process: VP or EDM
from core.diffusion.registry import (DEFAULT_GUIDANCE, DEFAULT_SAMPLER, MAX_IMAGES, MAX_SEED, MAX_SIGMA_REL,
                                     SAMPLER_SPECS, WEIGHT_NAMES, default_steps, sampler_spec)
from core.diffusion.samplers import SampleStep, StepCallback


# -- the one sampling path ------------------------------------------------------------------

WEIGHTS: tuple[str, ...] = WEIGHT_NAMES
DEFAULT_BATCH_SIZE = 32  # images a forward pass (2x that with guidance); fixed, so a seed gives the same images everywhere


class SamplingError(Exception):
    """Sampling cannot go on (out of memory, non-finite weights or output); one line for the user."""


@dataclass(frozen=True)
class SampleRequest:
    """What to draw. ``steps`` is for the samplers whose table entry uses steps (capped at
    T; ddpm runs all T steps), ``eta`` for those that use eta (ddim).

    Class-conditional models: ``breed`` (a class name, matched loosely) or ``label`` (an
    index) draws that class; neither draws the classes in turn (image i gets class i mod C);
    ``unconditional`` uses the null label. ``guidance`` applies to conditional draws only.
    Images are drawn ``batch_size`` at a time from one generator seeded with ``seed``, so the
    same request gives the same images on any caller (and, for n <= batch_size, the same as
    one call of the sampler with that seed).
    """

    n: int = 16
    sampler: str = DEFAULT_SAMPLER
    steps: int | None = None  # None: the sampler's own default (registry.default_steps)
    eta: float = 0.0
    guidance: float = DEFAULT_GUIDANCE
    label: int | None = None
    breed: str | None = None
    unconditional: bool = False
    seed: int = 0
    weights: str = "ema"
    amp: str = "auto"
    batch_size: int = DEFAULT_BATCH_SIZE
    clip_x0: bool = True
    ema_length: float | None = None  # power-EMA sigma_rel of a checkpoint's weights (None: the run's own)

    def __post_init__(self) -> None:
        def whole(name: str, value: Any, low: int, high: int | None = None) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
                span = f"{low}..{high}" if high is not None else f">= {low}"
                raise ValueError(f"{name} must be an integer {span}, got {value!r}")

        whole("n", self.n, 1, MAX_IMAGES)
        sampler_spec(self.sampler)  # ValueError naming the known ones
        if self.steps is None:
            object.__setattr__(self, "steps", default_steps(self.sampler))
        whole("steps", self.steps, 1)
        whole("batch size", self.batch_size, 1)
        whole("seed", self.seed, 0, MAX_SEED)
        if self.weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {self.weights!r}")
        if not 0.0 <= float(self.eta) <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {self.eta!r}")
        if not (math.isfinite(float(self.guidance)) and float(self.guidance) >= 0):
            raise ValueError(f"guidance must be a finite number >= 0, got {self.guidance!r}")
        if self.ema_length is not None:
            check_ema_length(self.ema_length)


def check_ema_length(value: Any) -> float:
    """A power-EMA sigma_rel as a float, or ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) <= MAX_SIGMA_REL:
        raise ValueError(f"ema_length must be a number in (0, {MAX_SIGMA_REL:g}], got {value!r}")
    return float(value)


@dataclass
class Sampleable:
    """A model ready to sample: the network (in eval mode), its diffusion, which weights it
    holds and how to say so, and what its checkpoint tells about it."""

    model: nn.Module
    diffusion: Diffusion
    weights: str  # "ema" | "raw": what the network actually holds
    weights_note: str  # for people: "EMA", "raw", "raw (this checkpoint has no EMA weights)"
    step: int = 0
    classes: list[str] = dataclasses.field(default_factory=list)
    path: Path | None = None


def load_for_sampling(path: str | os.PathLike, weights: str = "ema", ema_length: float | None = None) -> Sampleable:
    """Read a checkpoint and build its model with the EMA or the raw weights.

    Asking for EMA weights from a checkpoint without them gives the raw ones, and says so.
    ``ema_length``: the power-EMA sigma_rel (reconstructed from the run's snapshots when it
    is not a tracked one); None takes the run's own. Raises CheckpointError (one line) for
    anything wrong with the file, and for an ``ema_length`` with a checkpoint without a power EMA.
    """
    from core.diffusion.checkpoint import build_model_from_checkpoint, ema_kind, load_checkpoint

    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    ckpt = load_checkpoint(path)
    use_ema = weights == "ema" and (bool(ckpt.get("ema")) or ema_length is not None)
    model, diffusion = build_model_from_checkpoint(ckpt, use_ema=use_ema, ema_length=ema_length)
    note = "EMA" if use_ema else ("raw (this checkpoint has no EMA weights)" if weights == "ema" else "raw")
    if use_ema and ema_kind(ckpt) == "power":
        length = ema_length if ema_length is not None else (ckpt["ema"] or {}).get("length")
        note = f"power EMA sigma_rel {float(length):g}"
    extra = ckpt.get("extra") or {}
    classes = [str(c) for c in (extra.get("classes") or [])]
    return Sampleable(model, diffusion, "ema" if use_ema else "raw", note, int(ckpt.get("step") or 0), classes, Path(path))


def breed_key(name: str) -> str:
    """'Golden Retriever', 'golden_retriever' and 'golden-retriever' name the same breed."""
    return re.sub(r"[\s_-]+", " ", name.strip().lower())


def resolve_labels(request: SampleRequest, num_classes: int, classes: Sequence[str] = ()) -> list[int] | None:
    """The class index of each of the n images, or None for an unconditional draw."""
    if request.breed is not None or request.label is not None:
        if num_classes == 0:
            raise ValueError("this model is unconditional; a breed needs a run trained with --conditional")
        names = list(classes) if len(classes) == num_classes else [str(i) for i in range(num_classes)]
        if request.breed is not None:
            matches = [i for i, b in enumerate(names) if breed_key(b) == breed_key(request.breed)]
            if not matches:
                raise ValueError(f"unknown breed {request.breed!r}; this run knows: {', '.join(names)}")
            label = matches[0]
        else:
            label = int(request.label)  # type: ignore[arg-type]
            if not 0 <= label < num_classes:
                raise ValueError(f"label {label} is out of range; the model knows classes 0..{num_classes - 1}")
        return [label] * request.n
    if num_classes == 0 or request.unconditional:
        return None
    return [i % num_classes for i in range(request.n)]


def _iterate(model, diffusion, shape, request: SampleRequest, **kw: Any) -> Iterator[SampleStep]:
    """The request's sampler from the table, given the options its entry says it takes."""
    spec = sampler_spec(request.sampler)
    options: dict[str, Any] = {"clip_x0": request.clip_x0}
    if spec.uses_steps:
        options["steps"] = min(request.steps, diffusion.max_sampler_steps)
    if spec.uses_eta:
        options["eta"] = request.eta
    return spec.resolve(diffusion.kind)(model, diffusion, shape, **options, **kw)


def ignored_settings(sampler: str, conditional: bool, *, eta: float | None = None,
                     guidance: float | None = None) -> list[str]:
    """One line for each setting the user gave that this draw will not use (None: not
    given): eta with a sampler whose table entry does not take it, guidance for an
    unconditional model."""
    notes = []
    if eta is not None and eta != 0.0 and not sampler_spec(sampler).uses_eta:
        takers = ", ".join(s.name for s in SAMPLER_SPECS.values() if s.uses_eta)
        notes.append(f"eta {eta:g} is ignored: {sampler} does not use eta (only {takers} does)")
    if guidance is not None and not conditional:
        notes.append(f"guidance {guidance:g} is ignored: this model is unconditional (trained without --conditional)")
    return notes


def sampler_tag(request: SampleRequest, T: int) -> str:
    """A short name of the sampler and its steps for file names and messages: 'ddim50', 'ddpm1000'.
    ``T``: the process's max_sampler_steps (a VP model's T)."""
    spec = sampler_spec(request.sampler)
    if not spec.uses_steps:
        return f"{spec.name}{T}"
    tag = f"{spec.name}{min(request.steps, T)}"
    return tag + (f"-eta{request.eta:g}" if spec.uses_eta and request.eta else "")


def _as_sampleable(source: "str | os.PathLike | Sampleable | tuple[nn.Module, Diffusion]",
                   request: SampleRequest) -> Sampleable:
    if isinstance(source, Sampleable):
        return source
    if isinstance(source, tuple):
        model, diffusion = source
        return Sampleable(model, diffusion, request.weights, "EMA" if request.weights == "ema" else "raw")
    return load_for_sampling(source, request.weights, request.ema_length)


def _model_config(model: nn.Module) -> Any:
    """The network's config (image_size, in_channels, num_classes), through DDP (.module) and
    torch.compile (._orig_mod) wrappers."""
    inner = model
    for _ in range(4):
        if hasattr(inner, "config"):
            break
        inner = getattr(inner, "_orig_mod", None) or getattr(inner, "module", None) or inner
    config = getattr(inner, "config", None)
    if config is None:
        raise ValueError("generate() needs a model with a .config (image_size, in_channels, num_classes)")
    return config


def _check_finite_weights(loaded: Sampleable) -> None:
    bad = [name for name, p in loaded.model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise SamplingError(f"the {loaded.weights} weights contain NaN or infinite values ({len(bad)} tensors, "
                            f"e.g. {bad[0]}): the training diverged; sample an earlier checkpoint")


def _finish_batch(step: SampleStep, size: int) -> None:
    """On a batch's last step: refuse non-finite images, attach the uint8 ones."""
    from core.io.grid import to_uint8_images

    nonfinite = int((~torch.isfinite(step.x_t)).flatten(1).any(1).sum())
    if nonfinite:
        raise SamplingError(f"sampling produced NaN or infinite values in {nonfinite} of {size} "
                            f"image(s) of batch {step.batch + 1}; try --amp off or another checkpoint")
    step.images = to_uint8_images(step.x_t)


def generate(source: "str | os.PathLike | Sampleable | tuple[nn.Module, Diffusion]", request: SampleRequest, *,
             device: "torch.device | str | None" = None,
             progress: StepCallback | None = None) -> Iterator[SampleStep]:
    """Draw ``request.n`` images from ``source`` (a checkpoint path, a :class:`Sampleable`, or a
    ``(model, diffusion)`` pair whose weights the request names), ``request.batch_size`` at a
    time, yielding every sampler step of every batch.

    A step that ends a batch carries that batch's images as uint8 (B, H, W, C) in ``images``
    (``first`` is the index of its first image); every step carries ``weights``, the weights
    actually used. Only one batch is held at a time, so any n runs in bounded memory.
    Raises SamplingError for out-of-memory (any device) and for non-finite weights or
    output, ValueError for a bad request, CheckpointError for a bad checkpoint.
    """
    from core.diffusion.device import autocast_dtype, resolve_device

    loaded = _as_sampleable(source, request)
    model, diffusion = loaded.model, loaded.diffusion
    config = _model_config(model)
    labels = resolve_labels(request, int(getattr(config, "num_classes", 0) or 0), loaded.classes)
    dev = resolve_device(device if device is not None else "auto")
    amp = autocast_dtype(dev, request.amp)
    _check_finite_weights(loaded)
    shape = (config.in_channels, config.image_size, config.image_size)
    batches = math.ceil(request.n / request.batch_size)
    generator = torch.Generator(device=dev).manual_seed(request.seed)
    first = 0
    try:
        model.to(dev)
        diffusion.to(dev)
        for batch in range(batches):
            b = min(request.batch_size, request.n - first)
            lab = labels[first:first + b] if labels is not None else None
            guidance = float(request.guidance) if lab is not None else 1.0
            for step in _iterate(model, diffusion, (b, *shape), request,
                                 generator=generator, labels=lab, guidance=guidance, device=dev, autocast=amp):
                step.batch, step.batches, step.first, step.weights = batch, batches, first, loaded.weights
                if step.index + 1 == step.total:
                    _finish_batch(step, b)
                if progress is not None:
                    progress(step)
                yield step
            first += b
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if not is_oom(exc):
            raise
        raise SamplingError(f"out of memory on {dev} drawing a batch of {min(request.batch_size, request.n)} "
                            f"image(s); use a smaller batch size") from None


def generate_images(source, request: SampleRequest, **kwargs: Any) -> tuple[torch.Tensor, str]:
    """Run :func:`generate` and return all n images as uint8 (n, H, W, C) and the weights used.
    For a few images (grids, the studio); a large n belongs with :func:`generate` itself."""
    parts: list[torch.Tensor] = []
    weights = request.weights
    for step in generate(source, request, **kwargs):
        weights = step.weights or weights
        if step.images is not None:
            parts.append(step.images)
    return torch.cat(parts), weights
