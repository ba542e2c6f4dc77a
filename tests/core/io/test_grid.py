"""Sample tensors -> uint8 pixels -> grids -> PNG files written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.io import grid as grid_mod
from core.io.grid import make_grid, save_grid, to_uint8_images


def test_to_uint8_maps_range_clamps_and_permutes() -> None:
    x = torch.tensor([-1.0, 0.0, 1.0, 3.0, -7.0, float("nan")]).reshape(1, 1, 2, 3)
    out = to_uint8_images(x.expand(2, 3, 2, 3))
    assert out.dtype == torch.uint8 and out.shape == (2, 2, 3, 3)
    assert out[0, :, :, 0].flatten().tolist() == [0, 128, 255, 255, 0, 128]
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        to_uint8_images(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        to_uint8_images(torch.zeros(1, 2, 4, 4))


def test_make_grid_layout() -> None:
    x = torch.stack([torch.full((3, 4, 5), v) for v in (-1.0, -0.5, 0.5, 1.0, 0.0)])
    g = make_grid(x, nrow=3, padding=1, pad_value=7)
    assert g.shape == (2 * 4 + 3, 3 * 5 + 4, 3)
    assert g[0, 0, 0].item() == 7  # padding
    assert g[1, 1, 0].item() == 0  # image 0 at row 0, col 0
    assert g[1, 1 + 2 * 6, 0].item() == round(0.75 * 255)  # image 2 at row 0, col 2
    assert g[1 + 5, 1 + 6, 0].item() == 128  # image 4 at row 1, col 1
    assert g[1 + 5, 1 + 2 * 6, 0].item() == 7  # empty cell stays padding
    assert make_grid(x).shape[1] == 3 * 5 + 4 * 2  # default: ceil(sqrt(5)) = 3 columns


@pytest.mark.parametrize("suffix,mode", [(".png", "RGB"), (".jpg", "RGB"), ("", "RGB")])
def test_save_grid_round_trip(tmp_path: Path, suffix: str, mode: str) -> None:
    x = torch.linspace(-1, 1, 4 * 3 * 8 * 8).reshape(4, 3, 8, 8)
    path = save_grid(x, tmp_path / "sub" / f"grid{suffix}", nrow=2, padding=0)
    with Image.open(path) as im:
        assert im.size == (16, 16) and im.mode == mode
        assert im.format == ("JPEG" if suffix == ".jpg" else "PNG")
        if suffix != ".jpg":
            assert torch.equal(torch.from_numpy(np.array(im)), make_grid(x, 2, 0))
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_save_grid_grayscale(tmp_path: Path) -> None:
    path = save_grid(torch.zeros(2, 1, 4, 4), tmp_path / "g.png")
    with Image.open(path) as im:
        assert im.mode == "L"


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "samples.png"
    save_grid(torch.zeros(1, 3, 4, 4), path)
    before = path.read_bytes()

    def broken_save(self, fp, format=None, **kw):  # noqa: A002 - Pillow's name
        fp.write(b"half a png")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(grid_mod.Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        save_grid(torch.ones(1, 3, 4, 4), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["samples.png"]
