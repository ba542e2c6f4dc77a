"""Sample images in [-1, 1] -> uint8 pixels, image grids, and atomic PNG writes."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import BinaryIO, Callable

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


def tile(images: torch.Tensor, nrow: int | None = None, padding: int = 2, pad_value: int = 0) -> torch.Tensor:
    """Tile uint8 images (B, H, W, C) into one (H', W', C) uint8 image, ``nrow`` per row
    (default: square-ish)."""
    if images.dim() != 4 or images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images shaped (B, H, W, C), got {images.dtype} {tuple(images.shape)}")
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


def make_grid(x: torch.Tensor, nrow: int | None = None, padding: int = 2, pad_value: int = 0) -> torch.Tensor:
    """Tile a batch in [-1, 1] into one (H, W, C) uint8 image, ``nrow`` images per row (default: square-ish)."""
    return tile(to_uint8_images(x), nrow=nrow, padding=padding, pad_value=pad_value)


def _pil(grid: torch.Tensor) -> Image.Image:
    array = grid.numpy()
    if array.shape[2] == 1:
        return Image.fromarray(array[:, :, 0])  # uint8 (H, W) -> mode "L"
    return Image.fromarray(array)  # uint8 (H, W, 3) -> mode "RGB"


def grid_image(x: torch.Tensor, nrow: int | None = None, padding: int = 2) -> Image.Image:
    return _pil(make_grid(x, nrow=nrow, padding=padding))


# Every image this tool writes says so (PNG text chunk / EXIF Software), so `sample --out` can
# tell its own earlier output, which it may replace, from a user's file, which it may not.
SOFTWARE = "ddpm-tui"
_EXIF_SOFTWARE = 0x0131


def written_by_ddpm_tui(path: str | os.PathLike) -> bool:
    """True when ``path`` is an image carrying this tool's Software mark."""
    try:
        with Image.open(path) as im:
            return im.info.get("Software") == SOFTWARE or im.getexif().get(_EXIF_SOFTWARE) == SOFTWARE
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        return False


def save_grid(x: torch.Tensor, path: str | os.PathLike, nrow: int | None = None, padding: int = 2) -> Path:
    """Write a grid of ``x`` (floats in [-1, 1]) to ``path`` atomically; see :func:`save_uint8_grid`."""
    return save_uint8_grid(to_uint8_images(x), path, nrow=nrow, padding=padding)


def save_uint8_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None,
                    padding: int = 2) -> Path:
    """Write a grid of uint8 images (B, H, W, C) to ``path`` atomically (temp file in the same
    folder + rename), marked as written by ddpm-tui.

    The format follows the suffix (.png, .jpg, ...); PNG when the suffix is unknown or absent.
    A failed write leaves any existing file at ``path`` untouched.
    """
    from core.io.atomic import atomic_write

    atomic_write(path, grid_writer(images, path, nrow=nrow, padding=padding))
    return Path(path)


def grid_writer(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None,
                padding: int = 2) -> Callable[[BinaryIO], None]:
    """``write(fh)`` encoding a grid of uint8 images (B, H, W, C) in the format ``path``'s
    suffix names (PNG when unknown), marked as written by ddpm-tui: for atomic_write or
    StagedFiles.stage."""
    from PIL import PngImagePlugin

    image = _pil(tile(images, nrow=nrow, padding=padding))
    fmt = Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_text("Software", SOFTWARE)
        options: dict = {"pnginfo": info}
    else:
        exif = Image.Exif()
        exif[_EXIF_SOFTWARE] = SOFTWARE
        options = {"exif": exif.tobytes()} if fmt in ("JPEG", "WEBP", "TIFF") else {}
    return lambda fh: image.save(fh, format=fmt, **options)
