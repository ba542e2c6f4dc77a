"""A full-screen view of one image (the Train screen's latest sample grid, a page of
Dataset thumbnails): the whole terminal for the picture, `+`/`-` to zoom into it in
steps of the image's own pixels, arrow keys to move around, `0` to fit it again."""

from __future__ import annotations

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import Label

from core.io.safe_text import shown
from ddpm_tui.widgets.halfblock import HalfBlockImage, to_rgb_array

MAX_ZOOM = 16
PAN_STEP = 0.125  # of the visible part, per arrow key


def zoom_crop(shape: tuple[int, ...], zoom: int, center: tuple[float, float]) -> tuple[slice, slice]:
    """Rows and columns of an (H, W) image shown at `zoom` (1 = all of it) around `center`
    (x, y in 0..1), kept inside the image."""
    h, w = shape[:2]
    ch, cw = max(1, round(h / zoom)), max(1, round(w / zoom))
    cx, cy = center
    x0 = min(max(0, round(cx * w - cw / 2)), w - cw)
    y0 = min(max(0, round(cy * h - ch / 2)), h - ch)
    return slice(y0, y0 + ch), slice(x0, x0 + cw)


class ZoomScreen(ModalScreen[None]):
    """Shows `image` as large as the terminal allows; Esc (or z, q) goes back."""

    BINDINGS = [
        Binding("escape,z,q", "close", "Back"),
        Binding("plus,equals_sign", "zoom(1)", "Zoom in"),
        Binding("minus", "zoom(-1)", "Zoom out"),
        Binding("0", "fit", "Fit"),
        Binding("left", "pan(-1, 0)", "Pan", show=False),
        Binding("right", "pan(1, 0)", "Pan", show=False),
        Binding("up", "pan(0, -1)", "Pan", show=False),
        Binding("down", "pan(0, 1)", "Pan", show=False),
    ]

    def __init__(self, image: np.ndarray, title: str) -> None:
        super().__init__()
        self.image = to_rgb_array(image)
        self.title_text = title
        self.zoom = 1
        self.center = (0.5, 0.5)

    def compose(self) -> ComposeResult:
        yield Label("", id="zoom-title")
        yield HalfBlockImage(id="zoom-image")

    def on_mount(self) -> None:
        self._show()

    def _show(self) -> None:
        rows, cols = zoom_crop(self.image.shape, self.zoom, self.center)
        view = self.image[rows, cols]
        self.query_one("#zoom-image", HalfBlockImage).set_image(view)
        h, w = self.image.shape[:2]
        note = getattr(self.app, "color_note", lambda: "")()
        where = "" if self.zoom == 1 else f" · x{self.zoom}, arrows move"
        title = Text(shown(self.title_text), style="bold")  # a file or breed name: never markup
        title.append(f" · {w}x{h} px{where} · +/- zoom, 0 fit, Esc back · {note}")
        self.query_one("#zoom-title", Label).update(title)

    def update_color_notes(self) -> None:  # the app calls it when the colour choice changes
        self._show()

    def action_zoom(self, delta: int) -> None:
        self.zoom = min(MAX_ZOOM, max(1, self.zoom + delta))
        self._show()

    def action_fit(self) -> None:
        self.zoom, self.center = 1, (0.5, 0.5)
        self._show()

    def action_pan(self, dx: int, dy: int) -> None:
        step, half = PAN_STEP / self.zoom, 0.5 / self.zoom  # the centre stays where a move shows

        def move(c: float, d: int) -> float:
            return min(1.0 - half, max(half, c + d * step))

        self.center = (move(self.center[0], dx), move(self.center[1], dy))
        self._show()

    def action_close(self) -> None:
        self.dismiss(None)
