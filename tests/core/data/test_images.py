"""core.data.images: the bomb guard in read_size/load_rgb (both Pillow thresholds)."""

from __future__ import annotations

import struct
import warnings
import zlib

import pytest
from PIL import Image

from core.data.images import ImageLoadError, load_rgb, read_size


def _png_header_only(path, width, height, bit_depth=8, colour_type=3):
    """A PNG whose header claims width x height (Pillow reads only the header on open)."""
    def chunk(tag, payload):
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    plte = b"\0\0\0" if colour_type == 3 else b""
    body = chunk(b"IHDR", ihdr) + (chunk(b"PLTE", plte) if plte else b"") + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


@pytest.mark.parametrize(
    "side",
    [
        10_000,  # 100 M pixels: above Pillow's warning limit (89 M), below its error limit
        20_000,  # 400 M pixels: above Pillow's error limit (179 M): used to escape as DecompressionBombError
    ],
)
def test_bombs_are_an_image_load_error_not_a_crash_or_a_warning(tmp_path, side):
    assert side * side > Image.MAX_IMAGE_PIXELS
    path = _png_header_only(tmp_path / "bomb.png", side, side)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a stray DecompressionBombWarning would fail here
        for fn in (read_size, load_rgb):
            with pytest.raises(ImageLoadError) as info:
                fn(path)
            assert info.value.reason == "decompression_bomb"
            assert str(path) in str(info.value)


def test_big_but_allowed_header_is_read(tmp_path):
    path = _png_header_only(tmp_path / "wide.png", 4000, 3000)
    assert read_size(path) == (4000, 3000)
