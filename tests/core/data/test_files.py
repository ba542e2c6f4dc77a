"""core.data.files: the one rule for what a dataset folder contains, and the per-file cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data.dataset import ImageFolderDataset, DataOptions, scan_image_folder
from core.data.stats import dataset_stats
from core.data.files import DatasetFolderError, FileCache, list_dataset, list_folder, unchanged


def photo(path: Path, seed: int, size: int = 96) -> Path:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    im = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, quality=90)
    return path


def test_rule_hidden_extensions_loose_files_and_order(tmp_path):
    root = tmp_path / "dogs"
    photo(root / "beagle" / "b.jpg", 1)
    photo(root / "beagle" / "a.PNG", 2)
    photo(root / "beagle" / "sub" / "c.jpg", 3)
    photo(root / "beagle" / ".hidden.jpg", 4)
    photo(root / "beagle" / ".cache" / "d.jpg", 5)
    (root / "beagle" / "notes.txt").write_text("x")
    (root / "akita").mkdir()
    photo(root / "loose.jpg", 6)
    listing = list_folder(root)
    assert listing.breeds == ["akita", "beagle"]
    assert [f.rel for f in listing.files] == ["beagle/a.PNG", "beagle/b.jpg", "beagle/sub/c.jpg"]
    assert (root / "beagle" / "notes.txt", "not an image file (.txt)") in listing.skipped
    assert (root / "loose.jpg", "not inside a breed folder") in listing.skipped
    assert not any(".hidden" in str(p) or ".cache" in str(p) for p, _ in listing.skipped)
    f = listing.files[1]
    st = (root / "beagle" / "b.jpg").stat()
    assert (f.size, f.mtime_ns, f.breed) == (st.st_size, st.st_mtime_ns, "beagle")


def test_missing_root_and_file_root_are_one_error_type(tmp_path):
    with pytest.raises(DatasetFolderError, match="does not exist"):
        list_folder(tmp_path / "nope")
    (tmp_path / "f").write_text("x")
    with pytest.raises(DatasetFolderError, match="not a folder"):
        list_dataset(tmp_path / "f")


def make_linked_set(tmp_path: Path) -> Path:
    """labrador -> labrador_retrievers_dog_pictures (issue 12's case), plus a beagle."""
    root = tmp_path / "dogs"
    for i in range(3):
        photo(root / "labrador_retrievers_dog_pictures" / f"{i}.jpg", 10 + i)
        photo(root / "beagle" / f"{i}.jpg", 20 + i)
    os.symlink("labrador_retrievers_dog_pictures", root / "labrador")
    return root


def test_symlinked_breed_folder_is_an_alias_not_a_second_class(tmp_path):
    root = make_linked_set(tmp_path)
    listing = list_folder(root)
    assert listing.breeds == ["beagle", "labrador_retrievers_dog_pictures"]
    assert listing.aliases == {"labrador": "labrador_retrievers_dog_pictures"}
    rels = [f.rel for f in listing.files]
    assert len(rels) == 6 and not any(r.startswith("labrador/") for r in rels)
    assert (root / "labrador" / "0.jpg", "same file as labrador_retrievers_dog_pictures/0.jpg") in listing.skipped
    scan = scan_image_folder(root)
    assert scan.classes == ["beagle", "labrador_retrievers_dog_pictures"]
    ds = ImageFolderDataset(root, DataOptions(image_size=16))
    assert len(ds) == 6 and ds.classes == scan.classes
    assert dataset_stats(root).total == 6


def test_symlinked_files_and_hard_links_are_listed_once_under_the_real_path(tmp_path):
    root = tmp_path / "dogs"
    real = photo(root / "beagle" / "a.jpg", 1)
    photo(root / "akita" / "x.jpg", 2)
    os.symlink(real, root / "akita" / "link.jpg")  # sorts first in its folder, breed sorts first
    os.link(real, root / "akita" / "hard.jpg")
    os.symlink(root / "beagle" / "missing.jpg", root / "beagle" / "broken.jpg")
    os.symlink(root / "akita", root / "beagle" / "loop")  # a folder link inside a breed: not followed
    listing = list_folder(root)
    rels = [f.rel for f in listing.files]
    # One real file, three names: the first plain path (breeds sorted) wins, never the link.
    assert rels == ["akita/hard.jpg", "akita/x.jpg"]
    assert (root / "akita" / "link.jpg", "same file as akita/hard.jpg") in listing.skipped
    assert (root / "beagle" / "a.jpg", "same file as akita/hard.jpg") in listing.skipped
    assert (root / "beagle" / "broken.jpg", "broken link") in listing.skipped
    assert any(p == root / "beagle" / "loop" and "not followed" in why for p, why in listing.skipped)


def test_outside_symlinked_breed_folder_is_a_breed(tmp_path):
    elsewhere = tmp_path / "elsewhere" / "corgi"
    photo(elsewhere / "a.jpg", 1)
    root = tmp_path / "dogs"
    photo(root / "beagle" / "a.jpg", 2)
    os.symlink(elsewhere, root / "corgi")
    listing = list_folder(root)
    assert listing.breeds == ["beagle", "corgi"] and listing.aliases == {}
    assert [f.rel for f in listing.files] == ["beagle/a.jpg", "corgi/a.jpg"]


def test_file_cache_reuses_only_unchanged_files(tmp_path):
    root = tmp_path / "dogs"
    a = photo(root / "beagle" / "a.jpg", 1)
    photo(root / "beagle" / "b.jpg", 2)
    cache_file = tmp_path / "cache.json"
    cache = FileCache(cache_file, version=1, data_dir=root)
    files = list_dataset(root)[1]
    for f in files:
        assert cache.get(f) is None
        cache.put(f, {"v": f.rel})
    assert cache.save(files) and cache_file.exists()
    st = a.stat()
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again = FileCache(cache_file, version=1, data_dir=root)
    now = {f.rel: f for f in list_dataset(root)[1]}
    assert again.get(now["beagle/a.jpg"]) is None  # changed: measure again
    assert again.get(now["beagle/b.jpg"])["v"] == "beagle/b.jpg"
    assert FileCache(cache_file, version=2, data_dir=root).entries == {}  # other version: empty
    assert FileCache(cache_file, version=1, data_dir=tmp_path).entries == {}  # other folder: empty
    cache_file.write_text("{garbled")
    assert FileCache(cache_file, version=1, data_dir=root).entries == {}
    assert unchanged({"size": 1, "mtime_ns": 2}, 1, 2) and not unchanged(None, 1, 2)
