"""The offline demo dataset: layout, determinism, distinct classes, clean under the scan."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data.curation import scan_dataset
from core.data.demo import CLASSES, make_demo_dataset, render


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.jpg"))}


def test_layout_sizes_and_counts(tmp_path: Path) -> None:
    calls = []
    counts = make_demo_dataset(tmp_path / "demo", per_class=6, progress=lambda d, t, m: calls.append((d, t)))
    assert counts == {name: 6 for name in CLASSES} and len(CLASSES) >= 4
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == sorted(CLASSES)
    for name in CLASSES:
        files = sorted((tmp_path / "demo" / name).glob("*.jpg"))
        assert [f.name for f in files] == [f"{name}_{i:04d}.jpg" for i in range(6)]
        with Image.open(files[0]) as im:
            assert im.format == "JPEG" and im.size == (64, 64) and im.mode == "RGB"
        assert files[0].stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600
    assert calls[-1] == (6 * len(CLASSES), 6 * len(CLASSES))
    assert not list((tmp_path / "demo").rglob("*.tmp"))


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    make_demo_dataset(tmp_path / "a", per_class=4, seed=3)
    make_demo_dataset(tmp_path / "b", per_class=4, seed=3)
    make_demo_dataset(tmp_path / "c", per_class=4, seed=4)
    a, b, c = _digests(tmp_path / "a"), _digests(tmp_path / "b"), _digests(tmp_path / "c")
    assert a == b
    assert set(a) == set(c) and all(a[k] != c[k] for k in a)
    # More images per class keep the first ones byte-identical.
    make_demo_dataset(tmp_path / "d", per_class=6, seed=3)
    d = _digests(tmp_path / "d")
    assert {k: d[k] for k in a} == a and len(d) == 6 * len(CLASSES)


def test_rerun_leaves_identical_files_alone(tmp_path: Path) -> None:
    make_demo_dataset(tmp_path / "demo", per_class=2)
    f = next((tmp_path / "demo").rglob("*.jpg"))
    before = f.stat().st_mtime_ns
    (tmp_path / "demo" / "mine.txt").write_text("user file")
    make_demo_dataset(tmp_path / "demo", per_class=2)
    assert f.stat().st_mtime_ns == before
    assert (tmp_path / "demo" / "mine.txt").read_text() == "user file"


@pytest.mark.parametrize("kw", [{"per_class": 0}, {"size": 4}, {"seed": -1}])
def test_bad_arguments(tmp_path: Path, kw: dict) -> None:
    with pytest.raises(ValueError):
        make_demo_dataset(tmp_path / "x", **kw)


def test_classes_are_told_apart_by_colour_alone() -> None:
    """Each class has its own look: a nearest-centroid classifier on a 4x4 colour thumbnail,
    fitted on 20 pictures per class, names held-out pictures' classes."""
    names = sorted(CLASSES)

    def feat(im: Image.Image) -> np.ndarray:
        return np.asarray(im.resize((4, 4), Image.Resampling.BOX), dtype=np.float32).ravel()

    centroids = np.stack([np.mean([feat(render(n, i)) for i in range(20)], axis=0) for n in names])
    right = total = 0
    for label, n in enumerate(names):
        for i in range(100, 110):
            pred = int(np.argmin(((centroids - feat(render(n, i))) ** 2).sum(axis=1)))
            right += pred == label
            total += 1
    assert right / total >= 0.95
    # ...and pictures within a class vary (position, scale, colour).
    a, b = np.asarray(render(names[0], 0), np.float32), np.asarray(render(names[0], 1), np.float32)
    assert np.abs(a - b).mean() > 10


def test_demo_set_passes_the_curation_scan(tmp_path: Path) -> None:
    """Clean under the default rules: no flag at all (the drawing loop redraws what its
    own scan would call a collage or a near duplicate). Measured on the default 1,500:
    0 flagged (37 before the redraw rule)."""
    make_demo_dataset(tmp_path / "demo", per_class=60)
    report = scan_dataset(tmp_path / "demo", report_path=tmp_path / "r.json")
    assert report.total == 300
    assert [(f.rel, f.reason, f.value) for f in report.flags] == []
