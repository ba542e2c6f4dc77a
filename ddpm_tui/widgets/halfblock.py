"""Half-block image rendering: an RGB image drawn with "▀" (foreground = upper pixel,
background = lower pixel), so one terminal cell shows one pixel across and two down.

Built on Textual's Line API: ``render_line`` returns cached :class:`Strip` objects, and each
strip holds one Segment per run of equal colour pairs (not one per pixel), which keeps a
4x4 grid of 64x64 images cheap to redraw over SSH. Colour depth comes from the app's console
(truecolor or 256 colours); in 256 colours every pixel is mapped to the xterm palette entry
(6x6x6 cube or grey ramp) nearest in CIELAB, not by per-channel rounding.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Iterable, Literal, Sequence

import numpy as np
from PIL import Image
from rich.color import Color
from rich.segment import Segment
from rich.style import Style
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget

ColorMode = Literal["auto", "truecolor", "256"]
COLOR_MODES: tuple[str, ...] = ("auto", "truecolor", "256")
COLOR_ENV = "DDPM_TUI_COLORS"
HALF_BLOCK = "\u2580"  # ▀

# -- the xterm 256-colour palette (indices 16..255: 6x6x6 cube, then 24 greys) --------------

CUBE_LEVELS = np.array([0, 95, 135, 175, 215, 255], dtype=np.int32)
GREY_LEVELS = np.array([8 + 10 * i for i in range(24)], dtype=np.int32)


def _palette_rgb() -> np.ndarray:
    cube = np.array([(r, g, b) for r in CUBE_LEVELS for g in CUBE_LEVELS for b in CUBE_LEVELS], dtype=np.int32)
    greys = np.stack([GREY_LEVELS] * 3, axis=1)
    return np.concatenate([cube, greys])  # row k is palette index 16 + k


PALETTE_RGB = _palette_rgb()


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (..., 3) in 0..255 -> CIELAB (D65). Perceptual distance for palette matching."""
    c = rgb.astype(np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375],
                  [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    L = 116 * f[..., 1] - 16
    a = 500 * (f[..., 0] - f[..., 1])
    b = 200 * (f[..., 1] - f[..., 2])
    return np.stack([L, a, b], axis=-1)


PALETTE_LAB = _srgb_to_lab(PALETTE_RGB)


def quantize_256(rgb: np.ndarray) -> np.ndarray:
    """Map uint8 RGB pixels (..., 3) to xterm palette indices 16..255.

    Candidates per pixel: the 8 cube corners around it (the two nearest cube levels per
    channel) and the 2 nearest greys; the winner is the candidate nearest in CIELAB.
    Checking only neighbours keeps this O(pixels), not O(pixels x 240).
    """
    shape = rgb.shape[:-1]
    px = rgb.reshape(-1, 3).astype(np.int32)
    # two nearest cube levels per channel
    idx_hi = np.clip(np.searchsorted(CUBE_LEVELS, px, side="left"), 0, 5)
    idx_lo = np.clip(idx_hi - 1, 0, 5)
    cands = []
    for r_sel in (idx_lo[:, 0], idx_hi[:, 0]):
        for g_sel in (idx_lo[:, 1], idx_hi[:, 1]):
            for b_sel in (idx_lo[:, 2], idx_hi[:, 2]):
                cands.append(36 * r_sel + 6 * g_sel + b_sel)
    grey = px.mean(axis=1)
    g_hi = np.clip(np.searchsorted(GREY_LEVELS, grey, side="left"), 0, 23)
    g_lo = np.clip(g_hi - 1, 0, 23)
    cands.append(216 + g_lo)
    cands.append(216 + g_hi)
    cand = np.stack(cands, axis=1)  # (N, 10) palette rows
    lab = _srgb_to_lab(px)[:, None, :]
    dist = ((PALETTE_LAB[cand] - lab) ** 2).sum(axis=2)
    best = cand[np.arange(cand.shape[0]), dist.argmin(axis=1)]
    return (best + 16).reshape(shape)


# -- image helpers ----------------------------------------------------------------------------


def to_rgb_array(image: "Image.Image | np.ndarray") -> np.ndarray:
    """A PIL image or an (H, W, 3) array (uint8, or float in [0, 1]) -> contiguous uint8 (H, W, 3)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) image array, got shape {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def tile_images(images: Sequence[np.ndarray], cols: int | None = None, gap: int = 2,
                fill: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """Lay equal-sized (H, W, 3) uint8 images out in a grid with `gap` pixels between them."""
    if not images:
        raise ValueError("tile_images needs at least one image")
    h, w = images[0].shape[:2]
    n = len(images)
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = (n + cols - 1) // cols
    out = np.empty((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, 3), dtype=np.uint8)
    out[:] = np.array(fill, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        out[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = img[:h, :w]
    return out


def fit_size(img_w: int, img_h: int, cells_w: int, cells_h: int, upscale: bool = True) -> tuple[int, int]:
    """Pixel size that fits in cells_w x (2 * cells_h) pixels keeping the aspect ratio."""
    if img_w <= 0 or img_h <= 0 or cells_w <= 0 or cells_h <= 0:
        return 0, 0
    scale = min(cells_w / img_w, (2 * cells_h) / img_h)
    if not upscale:
        scale = min(scale, 1.0)
    return max(1, min(cells_w, int(img_w * scale))), max(1, min(2 * cells_h, int(img_h * scale)))


def resize_rgb(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area-average when shrinking (faithful colours), nearest when enlarging (crisp pixels)."""
    h, w = rgb.shape[:2]
    if (w, h) == (width, height):
        return rgb
    resample = Image.Resampling.BOX if width <= w and height <= h else Image.Resampling.NEAREST
    return np.asarray(Image.fromarray(rgb).resize((width, height), resample), dtype=np.uint8)


# -- strips -----------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _style_true(up: int, low: int) -> Style:
    fg = Color.from_rgb(up >> 16, (up >> 8) & 255, up & 255)
    bg = None if low < 0 else Color.from_rgb(low >> 16, (low >> 8) & 255, low & 255)
    return Style(color=fg, bgcolor=bg)


@lru_cache(maxsize=4096)
def _style_256(up: int, low: int) -> Style:
    return Style(color=Color.from_ansi(up), bgcolor=None if low < 0 else Color.from_ansi(low))


def render_strips(rgb: np.ndarray, cells_w: int, cells_h: int, mode: str = "truecolor",
                  base_style: Style | None = None, upscale: bool = True, valign: str = "middle") -> list[Strip]:
    """Render an RGB image into exactly `cells_h` strips of `cells_w` cells, centred
    horizontally; vertically in the middle or at the top (`valign`).

    Pure function (no widget), so tests can check characters and colours exactly.
    `base_style` (the widget's own colours) fills the margins and the lower half of the
    last row when the scaled image has an odd pixel height.
    """
    base = base_style or Style()
    blank = Strip.blank(cells_w, base) if cells_w > 0 else Strip([])
    if cells_w <= 0 or cells_h <= 0:
        return [blank for _ in range(max(cells_h, 0))]
    h, w = rgb.shape[:2]
    pw, ph = fit_size(w, h, cells_w, cells_h, upscale)
    if pw == 0:
        return [blank] * cells_h
    px = resize_rgb(rgb, pw, ph)
    if mode == "256":
        codes = quantize_256(px).astype(np.int64)
        style_for = _style_256
    else:
        p = px.astype(np.int64)
        codes = (p[..., 0] << 16) | (p[..., 1] << 8) | p[..., 2]
        style_for = _style_true
    rows = (ph + 1) // 2
    if ph % 2:
        codes = np.concatenate([codes, np.full((1, pw), -1, dtype=np.int64)])
    upper, lower = codes[0::2], codes[1::2]
    left = (cells_w - pw) // 2
    right = cells_w - pw - left
    top = (cells_h - rows) // 2 if valign == "middle" else 0
    strips: list[Strip] = [blank] * top
    base_plus = base + Style()  # a copy; combining below keeps the widget's bg where low < 0
    for r in range(rows):
        up_row, low_row = upper[r], lower[r]
        # run boundaries: columns where the (upper, lower) pair changes
        change = np.flatnonzero((up_row[1:] != up_row[:-1]) | (low_row[1:] != low_row[:-1])) + 1
        starts = np.concatenate([[0], change])
        ends = np.concatenate([change, [pw]])
        segs: list[Segment] = []
        if left:
            segs.append(Segment(" " * left, base))
        for s, e in zip(starts.tolist(), ends.tolist()):
            style = style_for(int(up_row[s]), int(low_row[s]))
            segs.append(Segment(HALF_BLOCK * (e - s), base_plus + style))
        if right:
            segs.append(Segment(" " * right, base))
        strips.append(Strip(segs, cells_w))
    strips.extend([blank] * (cells_h - len(strips)))
    return strips


def resolve_color_mode(requested: str, console_color_system: str | None) -> str:
    """'truecolor' or '256' from a request ('auto' defers to $DDPM_TUI_COLORS, then the console)."""
    if requested not in COLOR_MODES:
        raise ValueError(f"unknown colour mode {requested!r}; use one of {', '.join(COLOR_MODES)}")
    if requested != "auto":
        return requested
    env = os.environ.get(COLOR_ENV, "").strip().lower()
    if env in ("truecolor", "256"):
        return env
    return "truecolor" if console_color_system == "truecolor" else "256"


class HalfBlockImage(Widget):
    """Shows one RGB image (or nothing) scaled to the widget, with cached strips."""

    DEFAULT_CSS = """
    HalfBlockImage { width: 1fr; height: 1fr; }
    """

    color_mode: reactive[str] = reactive("auto")

    def __init__(self, image: "Image.Image | np.ndarray | None" = None, *, color_mode: str = "auto",
                 upscale: bool = True, valign: str = "middle", name: str | None = None,
                 id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._rgb: np.ndarray | None = None if image is None else to_rgb_array(image)
        self._upscale = upscale
        self._valign = valign
        self._cache_key: tuple | None = None
        self._strips: list[Strip] = []
        self.set_reactive(HalfBlockImage.color_mode, color_mode)

    @property
    def image(self) -> np.ndarray | None:
        return self._rgb

    def set_image(self, image: "Image.Image | np.ndarray | None") -> None:
        """Replace the picture (call on the event loop; workers use app.call_from_thread)."""
        self._rgb = None if image is None else to_rgb_array(image)
        self._cache_key = None
        self.refresh()

    def watch_color_mode(self) -> None:
        self._cache_key = None
        self.refresh()

    def effective_color_mode(self) -> str:
        app_mode = getattr(self.app, "color_mode", "auto") if self.is_attached else "auto"
        requested = self.color_mode if self.color_mode != "auto" else (app_mode or "auto")
        system = self.app.console.color_system if self.is_attached else None
        return resolve_color_mode(requested, system)

    def _ensure_strips(self) -> list[Strip]:
        width, height = self.size
        mode = self.effective_color_mode()
        base = self.rich_style
        key = (width, height, mode, base, id(self._rgb))
        if key != self._cache_key:
            if self._rgb is None:
                self._strips = [Strip.blank(width, base)] * height
            else:
                self._strips = render_strips(self._rgb, width, height, mode, base, self._upscale, self._valign)
            self._cache_key = key
        return self._strips

    def render_line(self, y: int) -> Strip:
        strips = self._ensure_strips()
        if 0 <= y < len(strips):
            return strips[y]
        return Strip.blank(self.size.width, self.rich_style)

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._cache_key = None
