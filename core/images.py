"""Opening user images safely: one place that turns any file Pillow understands into a
plain RGB image, or a one-line reason why it cannot.

Shared by the training dataset (``core.data``) and dataset curation (``core.curation``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Extensions treated as images in a breed folder (lower-case, with dot).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")

# Pillow's own bomb guard warns at MAX_IMAGE_PIXELS and raises at twice that; we refuse
# anything over this many pixels outright (≈ 8k x 8k), which no dog photo needs.
MAX_PIXELS = 64_000_000


class ImageLoadError(Exception):
    """A file that is not a usable image; ``reason`` is a short machine-readable tag."""

    def __init__(self, path: Path | str, reason: str, detail: str = "") -> None:
        self.path = Path(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{self.path}: {reason}" + (f" ({detail})" if detail else ""))


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def read_size(path: Path | str) -> tuple[int, int]:
    """Width and height from the header only (no pixel decode). Raises ImageLoadError."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageLoadError(path, "empty", "0 bytes")
        # Pillow's own guard runs inside open(): an error above 2x MAX_IMAGE_PIXELS (not an
        # OSError, so it must be caught by name) and a warning above 1x; both mean "bomb".
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
    except ImageLoadError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageLoadError(path, "decompression_bomb", str(exc).splitlines()[0][:200]) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        # Pillow's guard against zTXt/iCCP chunks that inflate past MAX_TEXT_CHUNK: a bomb too.
        reason = "decompression_bomb" if "decompressed data too large" in msg.lower() else "not_an_image"
        raise ImageLoadError(path, reason, msg) from exc
    if w * h > MAX_PIXELS:
        raise ImageLoadError(path, "decompression_bomb", f"{w}x{h} pixels")
    return w, h


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any mode (L, LA, P with transparency, CMYK, I;16, RGBA...) -> RGB on white."""
    if im.mode == "RGB":
        return im
    if im.mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of clipping everything to white.
        import numpy as np

        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        im = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype("uint8"), "L")
    if im.mode in ("RGBA", "LA", "PA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return im.convert("RGB")


def load_rgb(path: Path | str) -> Image.Image:
    """Decode a whole image as RGB with EXIF orientation applied (first frame of an
    animation). Raises ImageLoadError with a reason for anything unusable."""
    path = Path(path)
    w, h = read_size(path)
    del w, h
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.seek(0)
                # Refuse to silently pad a truncated file with grey.
                ImageFile.LOAD_TRUNCATED_IMAGES = False
                im.load()
                im = ImageOps.exif_transpose(im) or im
                return _to_rgb(im).copy()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageLoadError(path, "decompression_bomb", str(exc).splitlines()[0][:200]) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        reason = "truncated" if "truncated" in msg.lower() or isinstance(exc, EOFError) else "unreadable"
        if "decompressed data too large" in msg.lower():
            reason = "decompression_bomb"
        raise ImageLoadError(path, reason, msg) from exc
