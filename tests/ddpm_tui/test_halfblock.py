"""The half-block renderer: exact characters and colours for tiny known images, in
truecolor and in 256 colours; run merging; scaling and aspect ratio; the widget's cache."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from rich.color import Color
from rich.style import Style
from textual.app import App, ComposeResult

from ddpm_tui.widgets.halfblock import (
    HALF_BLOCK,
    HalfBlockImage,
    fit_size,
    quantize_256,
    render_strips,
    resolve_color_mode,
    tile_images,
)

RED, BLUE, GREEN, WHITE, BLACK, GREY = (255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 255), (0, 0, 0), (128, 128, 128)

# 2 pixels wide, 4 tall -> 2 cells x 2 rows. Row 0: red over blue twice (one merged run);
# row 1: green over black, then white over grey (two runs).
IMAGE = np.array([
    [RED, RED],
    [BLUE, BLUE],
    [GREEN, WHITE],
    [BLACK, GREY],
], dtype=np.uint8)


def segs(strip):
    return [(s.text, s.style) for s in strip]


def true(fg, bg):
    return Style(color=Color.from_rgb(*fg), bgcolor=Color.from_rgb(*bg))


def ansi(fg, bg):
    return Style(color=Color.from_ansi(fg), bgcolor=Color.from_ansi(bg))


def test_truecolor_exact_characters_and_colours():
    strips = render_strips(IMAGE, 2, 2, "truecolor")
    assert len(strips) == 2
    assert segs(strips[0]) == [(HALF_BLOCK * 2, true(RED, BLUE))]
    assert segs(strips[1]) == [(HALF_BLOCK, true(GREEN, BLACK)), (HALF_BLOCK, true(WHITE, GREY))]
    assert all(s.cell_length == 2 for s in strips)


def test_256_colour_exact_characters_and_colours():
    strips = render_strips(IMAGE, 2, 2, "256")
    # xterm: red 196, blue 21, green 46, white 231, black 16, grey 128 -> ramp entry 244
    assert segs(strips[0]) == [(HALF_BLOCK * 2, ansi(196, 21))]
    assert segs(strips[1]) == [(HALF_BLOCK, ansi(46, 16)), (HALF_BLOCK, ansi(231, 244))]


def test_quantize_prefers_perceptually_nearest_entry():
    px = np.array([[250, 10, 5], [100, 100, 100], [0, 0, 0], [95, 135, 175], [8, 8, 8]], dtype=np.uint8)
    # (100,100,100): grey ramp 98 (index 241) beats the cube's (95,95,95) (index 59)
    assert quantize_256(px).tolist() == [196, 241, 16, 67, 232]


def test_quantize_keeps_hue_of_saturated_colours():
    # a dark saturated orange must not collapse to a grey
    idx = int(quantize_256(np.array([[180, 90, 0]], dtype=np.uint8))[0])
    assert 16 <= idx <= 231
    r, g, b = (idx - 16) // 36, ((idx - 16) // 6) % 6, (idx - 16) % 6
    assert r > g > b


def test_odd_pixel_height_keeps_widget_background_below():
    base = Style(bgcolor=Color.from_rgb(1, 2, 3))
    img = np.array([[RED], [BLUE], [GREEN]], dtype=np.uint8)  # 1x3: last row has no lower pixel
    strips = render_strips(img, 1, 2, "truecolor", base_style=base)
    (text, style), = segs(strips[1])
    assert text == HALF_BLOCK
    assert style.color == Color.from_rgb(*GREEN)
    assert style.bgcolor == Color.from_rgb(1, 2, 3)


def test_centred_with_margins_in_wider_space():
    strips = render_strips(IMAGE, 6, 3, "truecolor")
    assert len(strips) == 3 and all(s.cell_length == 6 for s in strips)
    # 2x4 image into 6x3 cells: scale min(6/2, 6/4) = 1.5 -> 3 px wide, 6 px tall (3 rows)
    row0 = segs(strips[0])
    assert row0[0][0] == " " * 1 and row0[-1][0] == " " * 2
    assert "".join(t for t, _ in row0[1:-1]) == HALF_BLOCK * 3


def test_fit_size_keeps_aspect_ratio():
    assert fit_size(64, 64, 120, 40) == (80, 80)  # a cell is 1 px wide, 2 px tall
    assert fit_size(256, 128, 80, 20) == (80, 40)
    assert fit_size(64, 64, 10, 40, upscale=False) == (10, 10)
    assert fit_size(64, 64, 200, 100, upscale=False) == (64, 64)
    assert fit_size(0, 5, 10, 10) == (0, 0)


def test_uniform_rows_merge_into_one_segment():
    flat = np.full((64, 64, 3), 77, dtype=np.uint8)
    for mode in ("truecolor", "256"):
        strips = render_strips(flat, 40, 20, mode)
        assert all(len(list(s)) == 1 for s in strips)


def test_grid_of_16_images_renders_at_120x40():
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(16)]
    grid = tile_images(imgs, cols=4, gap=2)
    assert grid.shape == (4 * 64 + 3 * 2, 4 * 64 + 3 * 2, 3)
    for mode in ("truecolor", "256"):
        strips = render_strips(grid, 120, 38, mode)
        assert len(strips) == 38 and all(s.cell_length == 120 for s in strips)


def test_resolve_color_mode(monkeypatch):
    monkeypatch.delenv("DDPM_TUI_COLORS", raising=False)
    assert resolve_color_mode("auto", "truecolor") == "truecolor"
    assert resolve_color_mode("auto", "256") == "256"
    assert resolve_color_mode("auto", "standard") == "256"
    assert resolve_color_mode("256", "truecolor") == "256"
    monkeypatch.setenv("DDPM_TUI_COLORS", "256")
    assert resolve_color_mode("auto", "truecolor") == "256"
    with pytest.raises(ValueError, match="colour mode"):
        resolve_color_mode("sixel", None)


class _ImageApp(App):
    def __init__(self, image, mode):
        super().__init__()
        self.image, self.mode = image, mode

    def compose(self) -> ComposeResult:
        yield HalfBlockImage(self.image, color_mode=self.mode)


@pytest.mark.parametrize("mode,expected", [("truecolor", true(RED, BLUE)), ("256", ansi(196, 21))])
def test_widget_renders_and_caches_lines(mode, expected):
    asyncio.run(_widget_renders_and_caches_lines(mode, expected))


async def _widget_renders_and_caches_lines(mode, expected):
    app = _ImageApp(IMAGE, mode)
    async with app.run_test(size=(2, 2)) as pilot:
        widget = app.query_one(HalfBlockImage)
        await pilot.pause()
        line = widget.render_line(0)
        assert line is widget.render_line(0)  # cached, not rebuilt per call
        (text, style), = [(s.text, s.style) for s in line]
        assert text == HALF_BLOCK * 2
        assert style.color == expected.color and style.bgcolor == expected.bgcolor
        widget.set_image(IMAGE[::-1].copy())  # new picture: cache dropped
        assert widget.render_line(0) is not line
