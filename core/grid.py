"""Sample images in [-1, 1] -> uint8 pixels, image grids, and atomic PNG writes."""

from __future__ import annotations

import contextlib
import math
import os
import secrets
from pathlib import Path

import torch
from PIL import Image


def to_uint8_images(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) floats in [-1, 1] -> (B, H, W, C) uint8 on the CPU (values clamped)."""
    if x.dim() != 4:
        raise ValueError(f"expected images shaped (B, C, H, W), got {tuple(x.shape)}")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, got {x.shape[1]}")
    x = x.detach().to(device="cpu", dtype=torch.float32)
    x = torch.nan_to_num(x, nan=0.0)  # a diverged sample shows grey, not garbage
    pixels = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous()


def make_grid(x: torch.Tensor, nrow: int | None = None, padding: int = 2, pad_value: int = 0) -> torch.Tensor:
    """Tile a batch into one (H, W, C) uint8 image, ``nrow`` images per row (default: square-ish)."""
    images = to_uint8_images(x)
    b, h, w, c = images.shape
    if b == 0:
        raise ValueError("cannot make a grid of zero images")
    ncol = nrow if nrow is not None else math.ceil(math.sqrt(b))
    if ncol < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    ncol = min(ncol, b)
    rows = math.ceil(b / ncol)
    grid = torch.full(
        (rows * h + (rows + 1) * padding, ncol * w + (ncol + 1) * padding, c), pad_value, dtype=torch.uint8
    )
    for i in range(b):
        r, col = divmod(i, ncol)
        top = padding + r * (h + padding)
        left = padding + col * (w + padding)
        grid[top : top + h, left : left + w] = images[i]
    return grid


def grid_image(x: torch.Tensor, nrow: int | None = None, padding: int = 2) -> Image.Image:
    grid = make_grid(x, nrow=nrow, padding=padding).numpy()
    if grid.shape[2] == 1:
        return Image.fromarray(grid[:, :, 0])  # uint8 (H, W) -> mode "L"
    return Image.fromarray(grid)  # uint8 (H, W, 3) -> mode "RGB"


def save_grid(x: torch.Tensor, path: str | os.PathLike, nrow: int | None = None, padding: int = 2) -> Path:
    """Write a grid of ``x`` to ``path`` atomically (temp file in the same folder + rename).

    The format follows the suffix (.png, .jpg, ...); PNG when the suffix is unknown or absent.
    A failed write leaves any existing file at ``path`` untouched.
    """
    path = Path(path)
    image = grid_image(x, nrow=nrow, padding=padding)
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    # os.open with 0o666 lets the umask decide the final permissions (mkstemp would force 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            image.save(fh, format=fmt)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path

