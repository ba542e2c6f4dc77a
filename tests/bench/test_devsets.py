"""bench/devsets.py: dev sets of different character for bench.quality --suite."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bench import devsets as D


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


@pytest.mark.parametrize("name", ["strokes", "textures"])
def test_same_seed_same_bytes_and_more_per_class_keeps_the_first(tmp_path, name):
    counts = D.make_devset(name, tmp_path / "a", 2, 16, seed=3)
    assert counts == {c: 2 for c in D.classes_of(name)} and len(counts) == (10 if name == "strokes" else 8)
    D.make_devset(name, tmp_path / "b", 2, 16, seed=3)
    a = _files(tmp_path / "a")
    assert a == _files(tmp_path / "b") and len(a) == 2 * len(counts)
    assert set(a) >= {f"{c}/{c}_0001.png" for c in counts}
    D.make_devset(name, tmp_path / "c", 3, 16, seed=3)
    more = _files(tmp_path / "c")
    assert len(more) == 3 * len(counts) and {k: more[k] for k in a} == a
    D.make_devset(name, tmp_path / "d", 2, 16, seed=4)
    assert _files(tmp_path / "d").keys() == a.keys() and _files(tmp_path / "d") != a  # another seed, other images
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial folder left


@pytest.mark.parametrize("name,size", [("strokes", 32), ("strokes", 16), ("textures", 32), ("textures", 24)])
def test_images_are_the_asked_size_rgb(name, size):
    for cls in D.classes_of(name):
        im = D.render(name, cls, 0, size=size)
        assert im.size == (size, size) and im.mode == "RGB"


def test_strokes_are_grayscale_thin_and_mostly_plain_background():
    for cls in D.classes_of("strokes"):
        for i in range(4):
            arr = np.asarray(D.render("strokes", cls, i), np.int16)
            assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all(), cls
            gray = arr[..., 0]
            assert (gray[0] == 0).all() and (gray[:, 0] == 0).all(), cls  # the plain black border
            assert 0.55 < (gray < 16).mean() < 0.97 and gray.max() > 150, cls  # ink, but mostly background


def test_textures_fill_the_frame_in_colour():
    for cls in D.classes_of("textures"):
        arr = np.asarray(D.render("textures", cls, 1), np.float32)
        assert np.abs(arr[..., 0] - arr[..., 1]).mean() + np.abs(arr[..., 1] - arr[..., 2]).mean() > 5, cls
        for half in (arr[:16], arr[16:], arr[:, :16], arr[:, 16:]):  # every half of the frame has pattern
            assert half.std(axis=(0, 1)).max() > 10, cls


def _pixels(im):
    return np.asarray(im.convert("L").resize((16, 16), Image.Resampling.BOX), np.float32).ravel() / 255


def _spectrum(im):
    """Phase- and (roughly) rotation-free: the FFT magnitude's radial profile and sorted angular profile."""
    g = np.asarray(im.convert("L"), np.float32)
    f = np.abs(np.fft.fftshift(np.fft.fft2(g - g.mean())))
    n = g.shape[0]
    y, x = np.mgrid[0:n, 0:n] - n // 2
    r, a = np.hypot(x, y), np.arctan2(y, x) % np.pi
    radial = np.array([f[(r >= lo) & (r < lo + 2)].sum() for lo in range(0, n // 2, 2)])
    angular = np.array([f[(a >= lo) & (a < lo + np.pi / 8) & (r > 1)].sum() for lo in np.arange(8) * np.pi / 8])
    return np.concatenate([radial / radial.sum(), np.sort(angular / angular.sum())])


@pytest.mark.parametrize("name,features", [("strokes", _pixels), ("textures", _spectrum)])
def test_classes_differ_more_than_images_within_a_class(name, features):
    classes = D.classes_of(name)
    n = 12
    F = {c: np.stack([features(D.render(name, c, i)) for i in range(n)]) for c in classes}

    def dist(a, b):
        return np.linalg.norm(a[:, None] - b[None], axis=-1)

    within = np.mean([dist(F[c], F[c]).sum() / (n * (n - 1)) for c in classes])
    between = np.mean([dist(F[c], F[d]).mean() for c in classes for d in classes if c != d])
    assert between > within * 1.1
    centroids = {c: F[c].mean(0) for c in classes}
    hits = [min(classes, key=lambda d: np.linalg.norm(f - centroids[d])) == c for c in classes for f in F[c]]
    assert np.mean(hits) > 0.5  # chance is 1/10 (strokes), 1/8 (textures)


def test_demo_is_a_dev_set_and_bad_input_is_one_line(tmp_path):
    from core.data.demo import CLASSES

    assert D.DEVSETS == ("demo", "strokes", "textures")
    assert D.make_devset("demo", tmp_path / "demo", 1, 16) == {c: 1 for c in sorted(CLASSES)}
    assert len(list((tmp_path / "demo").rglob("*.jpg"))) == len(CLASSES)
    with pytest.raises(ValueError, match="unknown dev set 'mnist'; known: demo, strokes, textures"):
        D.make_devset("mnist", tmp_path / "x", 1)
    with pytest.raises(ValueError, match="per_class >= 1"):
        D.make_devset("strokes", tmp_path / "x", 0)
