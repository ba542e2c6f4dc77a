"""Opening user images safely: one place that turns any file Pillow understands into a
plain RGB image, or a one-line reason why it cannot.

Shared by the training dataset (``core.data.dataset``) and dataset curation (``core.data.curation``),
with the one builder of their worker pools.
"""

from __future__ import annotations

import warnings
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from core.data.files import IMAGE_EXTENSIONS, is_image_name  # noqa: F401  (the folder rule owns extensions)

POOLS = ("thread", "process")
RESIZE_MODES = ("squash", "crop")

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
    return is_image_name(Path(path).name)


def worker_pool(kind: str, workers: int, name: str) -> Executor:
    """The pool that decodes images in parallel. "thread" (the default everywhere: Pillow
    and numpy release the GIL; measured in bench/data.py and bench/stats.py) or "process"
    (spawned, not forked: the caller may be a threaded app such as the studio)."""
    if kind == "thread":
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
    if kind == "process":
        import multiprocessing

        return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    raise ValueError(f"unknown pool {kind!r}; expected one of {', '.join(repr(p) for p in POOLS)}")


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
    read_size(path)  # header checks (empty, not an image, bomb) before any pixel is decoded
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


# ---------------------------------------------------------------------------- decode + resize


def resize_image(im: Image.Image, size: int, mode: str = "squash") -> Image.Image:
    """``squash``: resize to size x size ignoring the aspect ratio (what the original's
    transforms.Resize((64, 64)) does); ``crop``: the centred largest square, resized —
    the same pixels as resizing the shorter side then centre-cropping, in one resample."""
    w, h = im.size
    if mode == "squash":
        box = None
    elif mode == "crop":
        s = min(w, h)
        left, top = (w - s) / 2, (h - s) / 2
        box = (left, top, left + s, top + s)
    else:
        raise ValueError(f"unknown resize mode {mode!r}; expected one of {', '.join(RESIZE_MODES)}")
    if (w, h) == (size, size):
        return im
    return im.resize((size, size), Image.Resampling.BILINEAR, box=box)


def decode_image(path: Path | str, image_size: int, resize: str) -> np.ndarray:
    """One file -> uint8 array (S, S, 3). Raises ImageLoadError."""
    im = load_rgb(path)
    arr = np.array(resize_image(im, image_size, resize), dtype=np.uint8)  # a writable copy
    if arr.shape != (image_size, image_size, 3):  # load_rgb guarantees RGB; be loud if not
        raise ImageLoadError(path, "unreadable", f"decoded to shape {arr.shape}")
    return arr


def decode_or_error(path: str, image_size: int, resize: str) -> tuple[np.ndarray | None, str, str]:
    """Pool task: (pixels, "", "") or (None, reason, detail). Never raises for bad images,
    so a process pool does not need to pickle exceptions (and, torch-free, a spawned
    worker starts without importing torch)."""
    try:
        return decode_image(path, image_size, resize), "", ""
    except ImageLoadError as exc:
        return None, exc.reason, exc.detail
    except MemoryError:
        return None, "unreadable", "out of memory while decoding"
    except Exception as exc:  # a Pillow plugin bug must not stop a 14,000-image build
        return None, "unreadable", f"{type(exc).__name__}: {str(exc)[:200]}"
