"""Power-EMA snapshots on disk and the weights of any sigma_rel rebuilt from them.

Each checkpoint save of a run trained with ``ema_kind power`` also writes the two tracked
profiles' current averages to ``RUN/checkpoints/ema/ema_<step>.safetensors`` (float32, written
atomically; metadata: format, step, num_updates, sigma_rels). :func:`power_ema_weights` gives
the average of any sigma_rel for a checkpoint: a tracked profile itself, or a least-squares
reconstruction (core.diffusion.power_ema.solve_coefficients) from the checkpoint's own two
profiles plus every snapshot beside it (``checkpoints/ema/``) taken at or before its step.
A checkpoint file with no ``ema/`` folder beside it uses its own two profiles only. A snapshot
that does not read is skipped with a one-line warning naming it. :func:`snapshots_to_remove`
picks the snapshots a run with a bound on their number (``--ema-snapshots``) deletes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Mapping

import torch

from core.diffusion.power_ema import accumulate, same_length, sigma_rel_to_gamma, solve_coefficients

SNAPSHOT_DIR = "ema"  # inside a run's checkpoints/
FORMAT_NAME = "ddpm-tui-ema-snapshot"
_log = logging.getLogger(__name__)
_NAME = re.compile(r"ema_(\d+)\.safetensors")


def snapshot_path(checkpoints_dir: str | os.PathLike, step: int) -> Path:
    return Path(checkpoints_dir) / SNAPSHOT_DIR / f"ema_{int(step):07d}.safetensors"


def write_snapshot(checkpoints_dir: str | os.PathLike, ema: Any, step: int) -> Path:
    """The two profiles of ``ema`` (a PowerEMA) as they are at ``step``; WeightsFileError when
    it cannot be written."""
    from core.diffusion.safetensors_file import write_tensors

    path = snapshot_path(checkpoints_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"p{i}/{name}": v for i, prof in enumerate(ema.profiles) for name, v in prof.items()}
    write_tensors(path, tensors, {"format": FORMAT_NAME, "step": str(int(step)),
                                  "num_updates": str(ema.num_updates), "sigma_rels": json.dumps(list(ema.sigma_rels))})
    return path


def steps_to_drop(steps: list[int], keep: int) -> list[int]:
    """The steps to drop so that at most ``keep`` (>= 2) of ``steps`` remain, spread as evenly
    as they can be over the run: one at a time, the interior step whose removal leaves the
    smallest largest gap (ties: the largest smallest gap, then the oldest). The oldest and the
    newest are never dropped. Deterministic: the same steps give the same answer."""
    kept, dropped = sorted(set(steps)), []
    while len(kept) > max(2, keep):
        def cost(i: int) -> tuple[int, int, int]:
            gaps = [b - a for a, b in zip(kept, kept[1:])]
            gaps[i - 1:i + 1] = [kept[i + 1] - kept[i - 1]]
            return max(gaps), -min(gaps), kept[i]
        dropped.append(kept.pop(min(range(1, len(kept) - 1), key=cost)))
    return sorted(dropped)


def snapshots_to_remove(checkpoints_dir: str | os.PathLike, keep: int) -> list[Path]:
    """The snapshot files in ``checkpoints_dir``/ema to delete to keep at most ``keep``
    (:func:`steps_to_drop`). Only names this module writes (``ema_<step>.safetensors`` with the
    step as :func:`snapshot_path` spells it) count; any other file there is left alone."""
    folder = Path(checkpoints_dir) / SNAPSHOT_DIR
    if not folder.is_dir():
        return []
    steps = [int(m[1]) for p in folder.iterdir()
             if (m := _NAME.fullmatch(p.name)) and p.is_file() and p.name == snapshot_path(folder.parent, int(m[1])).name]
    return [snapshot_path(folder.parent, s) for s in steps_to_drop(steps, keep)]


def _header(path: Path) -> tuple[int, int, list[float]]:
    """(step, num_updates, sigma_rels) of a snapshot; ValueError saying why not."""
    from core.diffusion.safetensors_file import WeightsFileError, read_tensors

    try:
        _, meta = read_tensors(path, load=False)
    except WeightsFileError as exc:
        raise ValueError(str(exc)) from None
    if meta.get("format") != FORMAT_NAME:
        raise ValueError("not an EMA snapshot (no ddpm-tui metadata)")
    try:
        sigma_rels = [float(s) for s in json.loads(meta["sigma_rels"])]
        return int(meta["step"]), int(meta["num_updates"]), sigma_rels
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"corrupt metadata ({exc})") from None


def _profiles_of(path: Path, count: int) -> list[dict[str, torch.Tensor]]:
    from core.diffusion.safetensors_file import WeightsFileError, read_tensors

    try:
        tensors, _ = read_tensors(path)
    except WeightsFileError as exc:
        raise ValueError(str(exc)) from None
    out: list[dict[str, torch.Tensor]] = [{} for _ in range(count)]
    for key, value in tensors.items():
        index, _, name = key.partition("/")
        out[int(index[1:])][name] = value
    return out


def snapshots_for(ckpt_path: str | os.PathLike | None, step: int, num_updates: int,
                  sigma_rels: list[float]) -> list[tuple[Path, int]]:
    """(file, num_updates) of every readable snapshot beside ``ckpt_path`` taken at or before
    ``step`` with fewer updates than the checkpoint (its own profiles stand for the rest)."""
    if not ckpt_path:
        return []
    folder = Path(ckpt_path).parent / SNAPSHOT_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("ema_*.safetensors")):
        try:
            s_step, t, s_rels = _header(path)
        except ValueError as exc:
            _log.warning("skipped unreadable EMA snapshot %s: %s", path, exc)
            continue
        if len(s_rels) != len(sigma_rels) or not all(map(same_length, s_rels, sigma_rels)):
            _log.warning("skipped EMA snapshot %s: it tracks sigma_rel %s, the checkpoint %s", path, s_rels, sigma_rels)
        elif s_step <= step and 0 < t < num_updates:
            found.append((path, t))
    return found


def power_ema_weights(ckpt: Mapping[str, Any], length: float | None = None) -> dict[str, torch.Tensor]:
    """The power-EMA average of relative width ``length`` (default: the run's own) of a loaded
    checkpoint (its ``path`` names where to look for snapshots). ValueError for a bad state."""
    state = ckpt["ema"]
    try:
        sigma_rels = [float(s) for s in state["sigma_rels"]]
        profiles = list(state["profiles"])
        t = int(state["num_updates"])
        length = float(state["length"] if length is None else length)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"corrupt power EMA state ({exc})") from None
    for sigma_rel, prof in zip(sigma_rels, profiles):
        if same_length(sigma_rel, length):
            return dict(prof)
    gammas = [sigma_rel_to_gamma(s) for s in sigma_rels]
    found = snapshots_for(ckpt.get("path"), int(ckpt.get("step") or 0), t, sigma_rels)
    sources = [(ts, g) for _, ts in found for g in gammas] + [(max(1, t), g) for g in gammas]
    x = solve_coefficients(sources, (max(1, t), sigma_rel_to_gamma(length)))
    n = len(gammas)
    total = None
    for i, (path, _) in enumerate(found):  # one snapshot in memory at a time besides the sum
        try:
            loaded = _profiles_of(path, n)
        except ValueError as exc:  # changed since its header was read
            raise ValueError(f"EMA snapshot {path}: {exc}") from None
        total = accumulate(total, list(zip(x[n * i:n * (i + 1)], loaded)))
    total = accumulate(total, list(zip(x[n * len(found):], profiles)))
    return {k: v.float() for k, v in total.items()}


def live_weights(ema: Any, checkpoints_dir: str | os.PathLike, length: float) -> dict[str, torch.Tensor]:
    """A training PowerEMA's average of width ``length``, rebuilt from its two current profiles
    and the snapshots in ``checkpoints_dir``/ema (set as ``ema.rebuild`` by the trainer), on
    the profiles' device."""
    state = {"sigma_rels": list(ema.sigma_rels), "num_updates": ema.num_updates, "profiles": ema.profiles}
    ckpt = {"path": str(Path(checkpoints_dir) / "last.pt"), "step": sys.maxsize, "ema": state}
    device = ema.count.device
    return {k: v.to(device) for k, v in power_ema_weights(ckpt, length).items()}
