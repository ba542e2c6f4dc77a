"""Self-describing training checkpoints: written atomically, loaded without running pickle code.

One file holds everything needed to rebuild the model and continue training: the model and
diffusion configs (plain dicts), weights, EMA weights, optimizer state, step/epoch, RNG
states and a format version. It is written to a temp file in the same directory, flushed,
fsync'ed and renamed over the target, so the file on disk is always the old checkpoint or
the new one. It is read with ``torch.load(weights_only=True)``, which refuses any pickle
that would construct arbitrary objects (and so run code).
"""

from __future__ import annotations

import os
import pickle
import re
import random
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from core.io.atomic import atomic_write

FORMAT_VERSION = 1
FORMAT_NAME = "ddpm-tui-checkpoint"
_FIELDS = ("model_config", "diffusion_config", "model", "ema", "optimizer", "step", "epoch", "rng", "extra")


class CheckpointError(Exception):
    """A checkpoint that cannot be written, read or used; the message is one line for the user."""


# --- writing -------------------------------------------------------------------------------

_PLAIN_SCALARS = (str, int, float, bool, type(None))


def _check_plain(obj: Any, where: str) -> None:
    """Refuse to write anything ``torch.load(weights_only=True)`` would refuse to read back."""
    # Exact types: a str/int subclass (an enum, torch's TorchVersion) pickles as a global.
    if type(obj) in _PLAIN_SCALARS or isinstance(obj, (torch.Tensor, torch.dtype, torch.Size)):
        return
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"checkpoint field {where}: key {key!r} is a {type(key).__name__}, not str/int")
            _check_plain(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
        return
    raise TypeError(f"checkpoint field {where} is a {type(obj).__name__}; only dicts, lists, numbers, strings and tensors can be stored")


def _plain_dict(obj: Any) -> Any:
    """Turn OrderedDicts into dicts recursively (weights_only loads both; dicts are simpler)."""
    if isinstance(obj, Mapping):
        return {k: _plain_dict(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain_dict(v) for v in obj]
    return obj


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save through core.io.atomic: on any failure ``path`` keeps the old file."""
    atomic_write(path, lambda fh: torch.save(obj, fh))


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model_config: Mapping[str, Any],
    diffusion_config: Mapping[str, Any],
    model_state: Mapping[str, torch.Tensor],
    ema_state: Mapping[str, Any] | None = None,
    optimizer_state: Mapping[str, Any] | None = None,
    step: int = 0,
    epoch: int = 0,
    rng_state: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write a checkpoint atomically. Raises CheckpointError (old file intact) when it cannot."""
    if hasattr(model_config, "to_dict"):
        model_config = model_config.to_dict()
    if hasattr(diffusion_config, "to_dict"):
        diffusion_config = diffusion_config.to_dict()
    payload = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "torch_version": str(torch.__version__),
        "model_config": _plain_dict(model_config),
        "diffusion_config": _plain_dict(diffusion_config),
        "model": {k: v.detach() for k, v in model_state.items()},
        "ema": _plain_dict(ema_state) if ema_state is not None else None,
        "optimizer": _plain_dict(optimizer_state) if optimizer_state is not None else None,
        "step": int(step),
        "epoch": int(epoch),
        "rng": _plain_dict(rng_state) if rng_state is not None else None,
        "extra": _plain_dict(extra) if extra is not None else {},
    }
    for key in _FIELDS:
        _check_plain(payload[key], key)
    try:
        atomic_torch_save(payload, path)
    except OSError as exc:
        raise CheckpointError(f"could not write checkpoint {path}: {exc.strerror or exc}") from exc
    except RuntimeError as exc:  # torch's zip writer reports a full disk as RuntimeError
        raise CheckpointError(f"could not write checkpoint {path}: {str(exc).splitlines()[0]}") from exc


# --- reading -------------------------------------------------------------------------------


def _looks_like_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


# What a file that is not a checkpoint usually is, by its first bytes (named in the error).
_MAGIC = ((b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"), (b"GIF8", "a GIF image"),
          (b"RIFF", "a RIFF file (WebP, WAV, ...)"), (b"\x1f\x8b", "a gzip archive"), (b"%PDF", "a PDF document"))


def _what_it_is(head: bytes) -> str:
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return f" (it is {name})"
    if head and all(32 <= c < 127 or c in (9, 10, 13) for c in head):
        return " (it is a text file)"
    return ""


def _pickle_globals(path: Path, limit: int = 64 << 20) -> list[str] | None:
    """The module.name of every GLOBAL / STACK_GLOBAL in a raw pickle file, read with
    pickletools (which only parses, never runs it); None when it does not parse as a pickle."""
    import pickletools

    try:
        with open(path, "rb") as f:
            data = f.read(limit)
        found, strings = [], []
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
        return found
    except (ValueError, EOFError, OSError, UnicodeDecodeError, pickle.UnpicklingError, KeyError):
        return None


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with every failure as a one-line CheckpointError
    whose message says what the file is, in our words (never torch's advice to turn
    weights_only off). The message does not name the file: callers add it."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError("no such file")
    if path.is_dir():
        raise CheckpointError("is a directory, not a file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise CheckpointError(f"cannot read ({exc.strerror or exc})") from exc
    if size == 0:
        raise CheckpointError("empty file")
    is_zip = head.startswith(b"PK\x03\x04")
    # torch.save writes a zip archive (or, in its legacy format, a pickle: PROTO byte, protocol 2-5)
    is_pickle = len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5
    if not is_zip and not is_pickle:
        raise CheckpointError(f"not a PyTorch checkpoint file{_what_it_is(head)}")
    if is_zip and not zipfile.is_zipfile(path):
        raise CheckpointError("truncated or corrupt (incomplete zip archive)")
    try:
        with warnings.catch_warnings():
            # Foreign pickles make torch warn (protocols, FutureWarnings); our error says it better.
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", msg) or re.search(r"GLOBAL ([\w.]+)", msg)
        if match or "unsupported class" in msg.lower():
            # The pickle wants to build arbitrary Python objects: loading it would run code.
            detail = f" (it asks for {match.group(1)})" if match else ""
            raise CheckpointError(f"refused, it contains Python objects that would run code when loaded{detail}") from None
        if is_zip:
            raise CheckpointError("truncated or corrupt (its data does not unpickle)") from None
        names = _pickle_globals(path)
        if names:  # a raw pickle naming Python callables: loading it would run them
            raise CheckpointError(f"refused, it contains Python objects that would run code when loaded "
                                  f"(it asks for {names[0]})") from None
        raise CheckpointError("not a PyTorch checkpoint file (truncated, corrupt or not a pickle)") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError, IndexError) as exc:
        first = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", (str(exc).splitlines() or [type(exc).__name__])[0])[:160]
        if is_zip:
            raise CheckpointError(f"truncated or corrupt ({first})") from None
        raise CheckpointError("not a PyTorch checkpoint file (truncated or corrupt)") from None


def _is_safetensors(path: Path) -> bool:
    """Named .safetensors, or starting like one (whatever its name)."""
    from core.diffusion.safetensors_file import SUFFIX, looks_like_safetensors

    if path.suffix.lower() == SUFFIX and path.is_file():
        return True
    try:
        with open(path, "rb") as f:
            return looks_like_safetensors(f.read(9), path.stat().st_size)
    except OSError:
        return False  # safe_torch_load says why


def _load_safetensors(path: Path) -> dict[str, Any]:
    """Weights written by `ddpm-tui export`, in load_checkpoint's shape."""
    from core.diffusion.safetensors_file import WeightsFileError, read_weights

    try:
        out = read_weights(path)
    except WeightsFileError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from None
    out["path"] = str(path)
    return out


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint (a ``.pt`` or a ``.safetensors`` file from `ddpm-tui
    export`). Every failure is a one-line CheckpointError.

    Returns a dict with format_version, model_config, diffusion_config, model, ema, optimizer,
    step, epoch, rng, extra (and path).
    """
    path = Path(path)
    if _is_safetensors(path):
        return _load_safetensors(path)
    try:
        obj = safe_torch_load(path, map_location)
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from None

    if not isinstance(obj, Mapping) or obj.get("format") != FORMAT_NAME:
        if _looks_like_state_dict(obj):
            raise CheckpointError(
                f"checkpoint {path}: a plain state_dict (e.g. dogs-image-generator-DDPM's model_state.pth), "
                f"not a ddpm-tui checkpoint; convert it with `ddpm-tui import-checkpoint`"
            )
        raise CheckpointError(f"checkpoint {path}: not a ddpm-tui checkpoint (no format marker)")
    version = obj.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"checkpoint {path}: corrupt (format_version is {version!r})")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path}: format version {version} is newer than this ddpm-tui understands "
            f"({FORMAT_VERSION}); upgrade ddpm-tui"
        )
    missing = [k for k in _FIELDS if k not in obj]
    if missing:
        raise CheckpointError(f"checkpoint {path}: corrupt (missing field {missing[0]!r})")
    for key in ("model_config", "diffusion_config", "model"):
        if not isinstance(obj[key], Mapping):
            raise CheckpointError(f"checkpoint {path}: corrupt (field {key!r} is not a dict)")
    out = {k: obj[k] for k in _FIELDS}
    out["format_version"] = version
    out["path"] = str(path)
    return out


def _where(ckpt: Mapping[str, Any]) -> str:
    return f"checkpoint {ckpt['path']}" if ckpt.get("path") else "checkpoint"


def _config_dict(config: Any) -> dict[str, Any]:
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items()}


def _with_diffusion_defaults(config: dict[str, Any]) -> dict[str, Any]:
    from core.diffusion.process import config_from_dict

    try:  # no "kind" (every config before EDM) reads as the VP process
        return config_from_dict(config).to_dict()
    except (ValueError, TypeError):
        return config  # compared as stored: the mismatch names the bad field


def _with_model_defaults(config: dict[str, Any]) -> dict[str, Any]:
    from core.diffusion.unet_config import UNetConfig

    try:  # also reads former names: a checkpoint's preset/block "seed" is "classic"
        return UNetConfig.from_dict(config).to_dict()
    except (ValueError, TypeError):
        return config  # compared as stored: the mismatch names the bad field


def check_compatible(
    ckpt: Mapping[str, Any],
    model_config: Any = None,
    diffusion_config: Any = None,
) -> None:
    """Raise CheckpointError naming every field where the checkpoint differs from what is expected.

    ``model_config``/``diffusion_config``: a config object (with to_dict) or a dict; None = skip.
    """
    problems: list[str] = []
    for label, expected, stored in (
        ("model", model_config, ckpt.get("model_config")),
        ("diffusion", diffusion_config, ckpt.get("diffusion_config")),
    ):
        if expected is None:
            continue
        exp = _config_dict(expected)
        got = _config_dict(stored or {})
        # Keys added later mean their defaults (what the run trained with).
        with_defaults = _with_diffusion_defaults if label == "diffusion" else _with_model_defaults
        exp, got = with_defaults(exp), with_defaults(got)
        # The preset name first: it is what the user chose and recognises.
        for key in sorted(set(exp) | set(got), key=lambda k: (k != "preset", k)):
            if exp.get(key, "<missing>") != got.get(key, "<missing>"):
                problems.append(f"{key}: checkpoint {got.get(key, '<missing>')!r} vs expected {exp.get(key, '<missing>')!r}")
    if problems:
        stored_preset = (ckpt.get("model_config") or {}).get("preset", "?")
        raise CheckpointError(
            f"{_where(ckpt)} (preset {stored_preset!r}) does not match this run: " + "; ".join(problems)
        )


def build_model_from_checkpoint(ckpt: Mapping[str, Any], use_ema: bool = True, ema_length: float | None = None):
    """Rebuild ``(UNet, process)`` from a loaded checkpoint, in eval mode on the CPU: the
    process is a Diffusion (VP) or an EDM, as its diffusion_config's kind says.

    ``use_ema``: take the EMA weights when the checkpoint has them (the raw ones otherwise).
    ``ema_length``: with a power EMA, the sigma_rel to take (default: the run's ema_length);
    a CheckpointError for a checkpoint without a power EMA.
    """
    from core.diffusion.process import build_process, config_from_dict
    from core.diffusion.unet import UNet, UNetConfig

    where = _where(ckpt)
    if not use_ema and (ckpt.get("extra") or {}).get("exported_weights") == "ema":
        raise CheckpointError(f"{where}: holds only the EMA weights (exported without --raw); leave out --raw")
    try:
        config = UNetConfig.from_dict(ckpt["model_config"])
        dconfig = config_from_dict(ckpt["diffusion_config"])
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{where}: bad config ({exc})") from None
    state = dict(ckpt["model"])
    # The config could ask for a network far larger than the weights in the file (a crafted
    # checkpoint): check every shape on a "meta" model, which allocates nothing, first.
    try:
        with torch.device("meta"):
            _check_shapes(UNet(config).state_dict(), state, where)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{where}: bad config ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    model = UNet(config)
    _load_state(model, state, where)
    ema = ckpt.get("ema") if use_ema else None
    if ema_length is not None and use_ema:
        check_power_ema(ckpt)
    if ema:
        shadow = _power_shadow(ckpt, ema_length) if ema_kind(ckpt) == "power" else (
            ema.get("shadow") if isinstance(ema, Mapping) else None)
        if not isinstance(shadow, Mapping):
            raise CheckpointError(f"{where}: corrupt EMA state (no shadow weights)")
        params = dict(model.named_parameters())
        for name in params:
            if name not in shadow:
                raise CheckpointError(f"{where}: EMA state is missing {name!r}")
        with torch.no_grad():
            for name, p in params.items():
                if tuple(shadow[name].shape) != tuple(p.shape):
                    raise CheckpointError(f"{where}: EMA weight {name!r} has shape {tuple(shadow[name].shape)}, expected {tuple(p.shape)}")
                p.copy_(shadow[name])
    model.eval()
    return model, build_process(dconfig)


def ema_kind(ckpt: Mapping[str, Any]) -> str | None:
    """"power", "exp" (also every checkpoint older than the power EMA), or None without an EMA."""
    ema = ckpt.get("ema")
    if not ema:
        return None
    return "power" if isinstance(ema, Mapping) and ema.get("kind") == "power" else "exp"


def check_power_ema(ckpt: Mapping[str, Any]) -> None:
    """CheckpointError (one line) unless the checkpoint has power-EMA profiles to pick a length from."""
    kind = ema_kind(ckpt)
    if kind != "power":
        what = "an exponential EMA (ema_kind exp)" if kind == "exp" else "no EMA weights"
        raise CheckpointError(f"{_where(ckpt)} has {what}: --ema-length needs a run trained with --ema-kind power")


def _power_shadow(ckpt: Mapping[str, Any], length: float | None) -> dict[str, torch.Tensor]:
    from core.diffusion.ema_snapshots import power_ema_weights

    try:
        return power_ema_weights(ckpt, length)
    except ValueError as exc:
        raise CheckpointError(f"{_where(ckpt)}: {exc}") from None


def _check_shapes(ours: Mapping[str, torch.Tensor], state: Mapping[str, Any], where: str) -> None:
    for key in ours:
        if key not in state:
            raise CheckpointError(f"{where}: weights are missing {key!r}")
        if not isinstance(state[key], torch.Tensor):
            raise CheckpointError(f"{where}: weight {key!r} is not a tensor")
        if tuple(state[key].shape) != tuple(ours[key].shape):
            raise CheckpointError(f"{where}: weight {key!r} has shape {tuple(state[key].shape)}, expected {tuple(ours[key].shape)}")
    extra = [k for k in state if k not in ours]
    if extra:
        raise CheckpointError(f"{where}: unexpected weight {extra[0]!r}")


def _load_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    _check_shapes(model.state_dict(), state, where)
    model.load_state_dict(state)


# --- RNG state -----------------------------------------------------------------------------


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy (when installed), torch CPU and every CUDA device's generator, as tensors."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python_version": int(version),
        "python_state": torch.tensor(internal, dtype=torch.int64),
        "python_gauss": gauss,
        "torch": torch.get_rng_state(),
    }
    try:
        import numpy as np
    except ImportError:
        np = None
    if np is not None:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {
            "name": str(name),
            "keys": torch.from_numpy(keys.astype("int64")),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`. Parts this machine lacks (a GPU, NumPy) are skipped."""
    if "python_state" in state:
        internal = tuple(int(v) for v in state["python_state"].tolist())
        random.setstate((int(state["python_version"]), internal, state.get("python_gauss")))
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "numpy" in state:
        try:
            import numpy as np
        except ImportError:
            np = None
        if np is not None:
            n = state["numpy"]
            np.random.set_state(
                (n["name"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["cached_gaussian"])
            )
    cuda_states = state.get("cuda")
    if cuda_states and torch.cuda.is_available():
        # A checkpoint from a machine with more GPUs: restore the devices we have.
        for index, s in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s.cpu(), index)
