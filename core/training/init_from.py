"""train --init-from: a NEW run that starts from another run's weights (fine-tuning, a longer
schedule, new breeds). The network must be the same; a conditional run matches breeds by name:
the ones the source knows keep their label embeddings, new ones start from the new run's own
initialisation. Only the weights come over: optimizer, step, EMA history and RNG start afresh,
and the run's diffusion options are its own."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.diffusion.checkpoint import CheckpointError, check_compatible, load_checkpoint
from core.training import runs
from core.training.config import TrainConfig, TrainError

LABEL_EMBEDDING = "label_emb.weight"  # core/diffusion/unet.py: one row per class, then "no label"


def resolve_source(text: str, runs_dir: Path) -> Path:
    """RUN_OR_FILE as a checkpoint file: a file as given; a run folder, or the name of a run
    in ``runs_dir``, as its checkpoints/last.pt. ValueError (one line) when there is none."""
    given = Path(text).expanduser()
    if given.is_file():
        return given.resolve()
    for folder in (given, Path(runs_dir) / text):
        if folder.is_dir():
            last = runs.checkpoints_dir(folder) / runs.LAST_CHECKPOINT
            if last.is_file():
                return last.resolve()
            raise ValueError(f"--init-from {text}: {folder} has no checkpoint yet (no {last})")
    raise ValueError(f"--init-from {text}: no such checkpoint file, run folder or run in {runs_dir}")


@dataclass
class InitWeights:
    """The source's weights, checked against the new run's network, until they are applied."""

    path: str
    weights: str  # "ema" or "raw"
    step: int
    classes: list[str]  # the source's breeds (empty: unconditional)
    state: dict[str, torch.Tensor] | None
    kept: list[str] = field(default_factory=list)  # breeds that kept their embedding
    new: list[str] = field(default_factory=list)  # breeds with a fresh one

    def apply(self, model: nn.Module, classes: list[str]) -> None:
        """Load the weights into ``model`` (freshly initialised for ``classes``), matching
        breeds by name; the weights are let go afterwards."""
        state = dict(self.state or {})
        if LABEL_EMBEDDING in state and LABEL_EMBEDDING in model.state_dict():
            old = state[LABEL_EMBEDDING]
            rows = model.state_dict()[LABEL_EMBEDDING].clone()  # the new run's initialisation
            for i, name in enumerate(classes):
                if name in self.classes:
                    rows[i] = old[self.classes.index(name)]
                    self.kept.append(name)
                else:
                    self.new.append(name)
            rows[len(classes)] = old[-1]  # the "no label" row of classifier-free guidance
            state[LABEL_EMBEDDING] = rows
        model.load_state_dict(state)
        self.state = None

    def record(self) -> dict[str, Any]:
        """What config.json keeps of it ("initialized_from")."""
        out: dict[str, Any] = {"path": self.path, "weights": self.weights, "step": self.step}
        if self.kept or self.new:
            out.update(kept_classes=self.kept, new_classes=self.new)
        return out

    def describe(self) -> str:
        """train.log's line."""
        text = f"initialised from {self.path} ({self.weights} weights, step {self.step})"
        if self.kept or self.new:
            text += (f"; breeds keeping their embedding: {', '.join(self.kept) or 'none'}"
                     f"; new breeds (fresh embedding): {', '.join(self.new) or 'none'}")
        return text


def load_source(config: TrainConfig, runs_dir: Path) -> InitWeights:
    """Read --init-from's checkpoint and check its network is this run's; TrainError (one line)
    otherwise."""
    try:
        path = resolve_source(config.init_from, runs_dir)
        ckpt = load_checkpoint(path)
    except (ValueError, CheckpointError) as exc:
        text = str(exc)
        raise TrainError(text if text.startswith("--init-from") else f"--init-from: {text}") from None
    source_classes = int((ckpt["model_config"] or {}).get("num_classes", 0) or 0)
    if config.conditional != (source_classes > 0):
        have, want = ("conditional", "unconditional") if source_classes else ("unconditional", "conditional")
        raise TrainError(f"--init-from: {path} is {have} and this run is {want} (--conditional): "
                         "the networks differ")
    try:  # breeds may differ (matched by name below); everything else must be the same
        check_compatible(ckpt, config.model_config(source_classes))
    except CheckpointError as exc:
        raise TrainError(f"--init-from: {exc}; a new run from it needs the same network "
                         "(--preset, --image-size)") from None
    state = dict(ckpt["model"])
    shadow = (ckpt.get("ema") or {}).get("shadow") if not config.init_from_raw else None
    if shadow:
        state.update({name: shadow[name] for name in state if name in shadow})
    classes = (ckpt.get("extra") or {}).get("classes") or []
    return InitWeights(str(path), "ema" if shadow else "raw", int(ckpt.get("step") or 0), list(classes), state)


def apply_init(init: InitWeights, model: nn.Module, classes: list[str]) -> None:
    """init.apply(), with a shape mismatch (a damaged file) as one line."""
    try:
        init.apply(model, classes)
    except (RuntimeError, IndexError, KeyError) as exc:
        raise TrainError(f"--init-from: {init.path}: {str(exc).strip().splitlines()[0]}") from None
