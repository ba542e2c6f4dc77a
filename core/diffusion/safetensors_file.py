"""Exported weights as ``.safetensors``: one set of weights (EMA or raw) that tools outside
Python's pickle world can read, with what is needed to rebuild the network in its metadata.

Written by ``ddpm-tui export``; read by core.diffusion.checkpoint.load_checkpoint, which hands
the rest of the code the same dict a ``.pt`` checkpoint gives. The safetensors library is
imported only here, only when a file is written or read (it is a dependency, but ``--help``
and the studio's start never load it).

Metadata (safetensors allows only str -> str): ``format`` = ddpm-tui-weights,
``format_version``, ``weights`` (ema | raw), ``step``, and JSON for ``model_config``,
``diffusion_config`` and ``classes`` (the breeds of a conditional run, in label order).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from core.io.atomic import atomic_write

FORMAT_NAME = "ddpm-tui-weights"
FORMAT_VERSION = 1
SUFFIX = ".safetensors"
WEIGHT_KINDS = ("ema", "raw")
_HEADER_LIMIT = 100 << 20  # the library's own cap on the JSON header


class WeightsFileError(Exception):
    """A weights file that cannot be written or read; the message is one line and does not
    name the file (callers add it)."""


def looks_like_safetensors(head: bytes, size: int) -> bool:
    """The first bytes of a safetensors file: a little-endian u64 header length that fits
    the file, then the JSON header's ``{``."""
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= min(size - 8, _HEADER_LIMIT) and head[8:9] == b"{"


def write_weights(path: str | os.PathLike, tensors: Mapping[str, Any], *, model_config: Mapping[str, Any],
                  diffusion_config: Mapping[str, Any], weights: str, step: int,
                  classes: list[str] | tuple[str, ...] = (), overwrite: bool = False) -> None:
    """Write ``tensors`` and the metadata atomically (temp file + rename). An existing file is
    replaced only with ``overwrite``; WeightsFileError otherwise, or when it cannot be written."""
    path = Path(path)
    if weights not in WEIGHT_KINDS:
        raise ValueError(f"weights must be one of {WEIGHT_KINDS}, got {weights!r}")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise WeightsFileError("already exists; use --force to replace it (nothing written)")
    if path.is_dir():
        raise WeightsFileError("is a folder; give a file name ending in .safetensors")
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "weights": weights,
        "step": str(int(step)),
        "model_config": json.dumps(dict(model_config), sort_keys=True),
        "diffusion_config": json.dumps(dict(diffusion_config), sort_keys=True),
        "classes": json.dumps([str(c) for c in classes]),
    }
    write_tensors(path, tensors, metadata)


def write_tensors(path: str | os.PathLike, tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> None:
    """Any named tensors and str -> str metadata, atomically (temp file + rename);
    WeightsFileError when it cannot be written."""
    from safetensors.torch import save

    # contiguous CPU copies: safetensors stores raw bytes in C order, one buffer per tensor
    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=dict(metadata))
    try:
        atomic_write(path, lambda fh: fh.write(data))
    except OSError as exc:
        raise WeightsFileError(f"cannot be written ({exc.strerror or exc})") from None


def read_tensors(path: str | os.PathLike, *, load: bool = True) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensors, metadata) of a .safetensors file (tensors empty when not ``load``: the header
    only); WeightsFileError, one line, for a file that does not read."""
    import safetensors
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()} if load else {}
    except (safetensors.SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise WeightsFileError(f"truncated or corrupt .safetensors file ({first})") from None
    return tensors, metadata


def _json_field(metadata: Mapping[str, str], key: str, kind: type) -> Any:
    try:
        value = json.loads(metadata[key])
    except KeyError:
        raise WeightsFileError(f"corrupt ddpm-tui metadata (no {key!r})") from None
    except (TypeError, ValueError):
        raise WeightsFileError(f"corrupt ddpm-tui metadata ({key!r} is not JSON)") from None
    if not isinstance(value, kind):
        raise WeightsFileError(f"corrupt ddpm-tui metadata ({key!r} is not a {kind.__name__})")
    return value


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, Any]:
    """The validated metadata as Python values; WeightsFileError naming the first problem."""
    if not metadata or metadata.get("format") != FORMAT_NAME:
        raise WeightsFileError("a .safetensors file without ddpm-tui metadata (not written by `ddpm-tui export`)")
    try:
        version = int(metadata.get("format_version", ""))
        step = int(metadata.get("step", "0"))
    except ValueError:
        raise WeightsFileError("corrupt ddpm-tui metadata (format_version or step is not a number)") from None
    if version > FORMAT_VERSION:
        raise WeightsFileError(f"format version {version} is newer than this ddpm-tui understands "
                               f"({FORMAT_VERSION}); upgrade ddpm-tui")
    weights = metadata.get("weights")
    if weights not in WEIGHT_KINDS:
        raise WeightsFileError(f"corrupt ddpm-tui metadata (weights is {weights!r})")
    classes = _json_field(metadata, "classes", list)
    if not all(isinstance(c, str) for c in classes):
        raise WeightsFileError("corrupt ddpm-tui metadata (classes are not names)")
    return {"format_version": version, "step": step, "weights": weights, "classes": classes,
            "model_config": _json_field(metadata, "model_config", dict),
            "diffusion_config": _json_field(metadata, "diffusion_config", dict)}


def read_weights(path: str | os.PathLike) -> dict[str, Any]:
    """A file written by :func:`write_weights`, as load_checkpoint's dict: ``model`` holds the
    weights; for EMA weights ``ema`` is ``{"shadow": the same tensors}`` (so "EMA by default"
    takes them) and ``extra["exported_weights"]`` says which they are. No optimizer, RNG or
    epoch. Nothing is unpickled: safetensors reads raw tensor bytes."""
    tensors, metadata = read_tensors(path)
    meta = _check_metadata(metadata)
    if not tensors:
        raise WeightsFileError("holds no tensors")
    return {
        "format_version": meta["format_version"], "model_config": meta["model_config"],
        "diffusion_config": meta["diffusion_config"], "model": tensors,
        "ema": {"shadow": dict(tensors)} if meta["weights"] == "ema" else None,
        "optimizer": None, "step": meta["step"], "epoch": 0, "rng": None,
        "extra": {"classes": meta["classes"], "exported_weights": meta["weights"]},
    }
