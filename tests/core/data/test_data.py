"""core.data.dataset: the breed-folder dataset, its transforms and its decoded-image cache."""

from __future__ import annotations

import io
import logging
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import core.data.images as images
from core.data.dataset import (DataOptions, DatasetError, DeviceBatches, ImageFolderDataset, batches_on, decode_files,
                       decode_image, scan_image_folder, uint8_to_unit_table)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


# ---------------------------------------------------------------------------- fixtures


def solid(path: Path, color=RED, size=(20, 16), mode="RGB", **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, **save)
    return path


def png_chunk(tag: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload) & 0xFFFFFFFF)


def bomb_png(path: Path, side: int = 20000) -> Path:
    """A real decompression bomb: a valid 1-bit side x side PNG of zeros, ~50 KB on disk."""
    comp = zlib.compressobj(9)
    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))
    return path


def noisy_jpeg_bytes(w=80, h=64, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def make_set(root: Path, breeds=("beagle", "akita"), per=3, size=(20, 16)) -> Path:
    """Breed folders with per-image distinct solid colours (so rows can be told apart)."""
    for b, breed in enumerate(breeds):
        for i in range(per):
            solid(root / breed / f"{i}.png", (40 * i, 100 + 50 * b, 7), size)
    return root


def assert_close(pixel, expected, tol=12):
    assert all(abs(int(a) - int(e)) <= tol for a, e in zip(pixel, expected)), (pixel, expected)


def hwc(ds: ImageFolderDataset, path: Path) -> np.ndarray:
    row = [p for p, _ in ds.samples].index(path)
    return ds.images[row].permute(1, 2, 0).numpy()


OPTS16 = DataOptions(image_size=16, flip=False)


# ---------------------------------------------------------------------------- formats and modes


def _all_formats(d: Path) -> dict[str, tuple[Path, tuple]]:
    out = {}
    out["rgb_jpg"] = (solid(d / "rgb.jpg", RED, quality=95), RED)
    out["jpeg_ext"] = (solid(d / "upper.JPEG", GREEN, quality=95), GREEN)
    out["grey_L"] = (solid(d / "grey.jpg", 128, mode="L", quality=95), (128, 128, 128))
    out["cmyk"] = (solid(d / "cmyk.jpg", (0, 255, 255, 0), mode="CMYK", quality=95), RED)
    out["rgba"] = (solid(d / "rgba.png", (0, 0, 255, 0), mode="RGBA"), WHITE)  # transparent -> white
    out["webp"] = (solid(d / "pic.webp", BLUE, lossless=True), BLUE)
    out["bmp"] = (solid(d / "pic.bmp", GREEN), GREEN)

    pal = Image.new("P", (20, 16), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.save(d / "palette_transparent.png", transparency=1)  # index 1 (red) is transparent
    out["p_transparency"] = (d / "palette_transparent.png", WHITE)

    arr16 = np.full((16, 20), 65535, dtype=np.uint16)
    Image.fromarray(arr16).save(d / "sixteen.png")
    out["i16"] = (d / "sixteen.png", WHITE)
    arr16_mid = np.full((16, 20), 32768, dtype=np.uint16)
    Image.fromarray(arr16_mid).save(d / "sixteen_mid.png")
    out["i16_mid"] = (d / "sixteen_mid.png", (128, 128, 128))

    frames = [Image.new("RGB", (20, 16), RED), Image.new("RGB", (20, 16), BLUE)]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out["gif_first_frame"] = (d / "anim.gif", RED)
    return out


def test_every_format_and_mode_decodes_to_rgb(tmp_path):
    cases = _all_formats(tmp_path / "dogs" / "mixed")
    assert Image.open(cases["i16"][0]).mode.startswith("I")  # really a 16-bit PNG
    assert Image.open(cases["cmyk"][0]).mode == "CMYK"
    ds = ImageFolderDataset(tmp_path / "dogs", OPTS16)
    assert ds.bad_files == []
    assert len(ds) == len(cases)
    assert ds.images.dtype == torch.uint8 and tuple(ds.images.shape) == (len(cases), 3, 16, 16)
    for name, (path, color) in cases.items():
        pixels = hwc(ds, path)
        assert_close(pixels[8, 8], color, tol=6 if name == "cmyk" else 4)


def test_exif_orientation_is_applied(tmp_path):
    # Stored 20 wide x 10 high: left half red, right half blue. Orientation 6 means
    # "rotate 90 degrees clockwise to display": left becomes top.
    im = Image.new("RGB", (20, 10), RED)
    im.paste(BLUE, (10, 0, 20, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "dogs" / "pug" / "rotated.jpg"
    path.parent.mkdir(parents=True)
    im.save(path, exif=exif, quality=95)
    plain = tmp_path / "dogs" / "pug" / "plain.jpg"
    im.save(plain, quality=95)

    ds = ImageFolderDataset(tmp_path / "dogs", OPTS16)
    rotated = hwc(ds, path)
    assert_close(rotated[2, 8], RED, tol=30)  # top
    assert_close(rotated[13, 8], BLUE, tol=30)  # bottom
    unrotated = hwc(ds, plain)
    assert_close(unrotated[8, 2], RED, tol=30)  # left
    assert_close(unrotated[8, 13], BLUE, tol=30)  # right


# ---------------------------------------------------------------------------- broken files


def test_broken_files_are_skipped_reported_and_kept(tmp_path, caplog):
    root = make_set(tmp_path / "dogs", per=2)
    bad = {
        root / "akita" / "truncated.jpg": "truncated",
        root / "akita" / "zero.jpg": "empty",
        root / "beagle" / "text.jpg": "not_an_image",
        root / "beagle" / "bomb.png": "decompression_bomb",
    }
    full = noisy_jpeg_bytes()
    (root / "akita" / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (root / "akita" / "zero.jpg").write_bytes(b"")
    (root / "beagle" / "text.jpg").write_text("<html>not a dog</html>")
    bomb_png(root / "beagle" / "bomb.png")
    before = {p: p.read_bytes() for p in bad}

    with caplog.at_level(logging.WARNING, logger="core.data.dataset"):
        ds = ImageFolderDataset(root, OPTS16, cache_dir=tmp_path / "cache")
    assert len(ds) == 4 and ds.classes == ["akita", "beagle"]
    assert dict(ds.bad_files) == bad
    # Each bad file is named once, with its reason; nothing was deleted or changed.
    for path, reason in bad.items():
        lines = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
        assert len(lines) == 1 and reason in lines[0]
        assert path.read_bytes() == before[path]

    # The verdicts are cached: a rerun decodes nothing and still reports them.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="core.data.dataset"):
        again = ImageFolderDataset(root, OPTS16, cache_dir=tmp_path / "cache")
    assert again.stats["decoded"] == 0
    assert dict(again.bad_files) == bad
    assert sum(str(root / "beagle" / "bomb.png") in r.getMessage() for r in caplog.records) == 1


def test_a_breed_with_only_unreadable_files_is_left_out(tmp_path, caplog):
    root = make_set(tmp_path / "dogs", breeds=("akita", "corgi"), per=2)
    (root / "boxer").mkdir()
    (root / "boxer" / "x.jpg").write_text("nope")
    with caplog.at_level(logging.WARNING, logger="core.data.dataset"):
        ds = ImageFolderDataset(root, OPTS16)
    assert ds.classes == ["akita", "corgi"]
    assert "boxer" in ds.empty_classes
    assert ds.labels.tolist() == [0, 0, 1, 1]
    assert any("boxer" in r.getMessage() and "no readable images" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------- empty / missing


def test_missing_or_empty_dataset_is_a_one_line_error_naming_the_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError, match=str(missing)):
        ImageFolderDataset(missing, OPTS16)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no breed folders"):
        ImageFolderDataset(empty, OPTS16)
    (empty / "beagle").mkdir()
    (empty / "beagle" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match="no images found") as info:
        ImageFolderDataset(empty, OPTS16)
    assert str(empty) in str(info.value) and "\n" not in str(info.value)
    (empty / "beagle" / "broken.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match="none of the 1 image files could be read"):
        ImageFolderDataset(empty, OPTS16)
    flat = tmp_path / "flat"
    solid(flat / "a.jpg")
    with pytest.raises(DatasetError, match="holds 1 image"):
        ImageFolderDataset(flat, OPTS16)
    afile = tmp_path / "file.jpg"
    afile.write_bytes(b"x")
    with pytest.raises(DatasetError, match="not a folder"):
        ImageFolderDataset(afile, OPTS16)


def test_empty_breed_folder_warns_and_is_not_a_class(tmp_path, caplog):
    root = make_set(tmp_path / "dogs", breeds=("beagle", "akita"), per=2)
    (root / "basset").mkdir()  # sorts between akita and beagle
    (root / "basset" / ".DS_Store").write_bytes(b"x")  # hidden: ignored
    (root / "notes.txt").write_text("loose file")
    with caplog.at_level(logging.WARNING, logger="core.data.dataset"):
        ds = ImageFolderDataset(root, OPTS16)
    assert ds.classes == ["akita", "beagle"]
    assert ds.empty_classes == ["basset"]
    assert ds.labels.tolist() == [0, 0, 1, 1]
    assert any("basset" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert (root / "notes.txt", "not inside a breed folder") in ds.skipped


def test_scan_sorts_classes_recurses_and_lists_non_images(tmp_path):
    root = tmp_path / "dogs"
    solid(root / "Zebra_dog" / "a.jpg")
    solid(root / "affenpinscher" / "sub" / "b.png")
    solid(root / "affenpinscher" / "a.jpg")
    (root / "affenpinscher" / "notes.md").write_text("x")
    (root / ".hidden").mkdir()
    solid(root / ".hidden" / "c.jpg")
    scan = scan_image_folder(root)
    assert scan.classes == sorted(["Zebra_dog", "affenpinscher"])  # plain sort, like ImageFolder
    assert scan.samples == [
        (root / "Zebra_dog" / "a.jpg", 0),
        (root / "affenpinscher" / "a.jpg", 1),
        (root / "affenpinscher" / "sub" / "b.png", 1),
    ]
    assert scan.skipped == [(root / "affenpinscher" / "notes.md", "not an image file (.md)")]


def test_fixed_class_list_pins_labels(tmp_path, caplog):
    root = make_set(tmp_path / "dogs", breeds=("akita", "beagle", "corgi"), per=1)
    with caplog.at_level(logging.WARNING, logger="core.data.dataset"):
        ds = ImageFolderDataset(root, OPTS16, classes=["corgi", "akita", "dingo"])
    assert ds.classes == ["corgi", "akita", "dingo"]
    assert {p.parent.name: label for p, label in ds.samples} == {"corgi": 0, "akita": 1}
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "beagle" in messages and "dingo" in messages


# ---------------------------------------------------------------------------- transforms


def _three_bands(path: Path) -> Path:
    """80 x 20: left quarter red, middle half green, right quarter blue."""
    im = Image.new("RGB", (80, 20), GREEN)
    im.paste(RED, (0, 0, 20, 20))
    im.paste(BLUE, (60, 0, 80, 20))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def test_squash_keeps_the_whole_frame_and_crop_keeps_the_centre(tmp_path):
    path = _three_bands(tmp_path / "dogs" / "x" / "bands.png")
    squash = ImageFolderDataset(tmp_path / "dogs", DataOptions(image_size=8, resize="squash", flip=False))
    crop = ImageFolderDataset(tmp_path / "dogs", DataOptions(image_size=8, resize="crop", flip=False))
    s, c = hwc(squash, path), hwc(crop, path)
    assert_close(s[4, 0], RED) and assert_close(s[4, 7], BLUE) and assert_close(s[4, 4], GREEN)
    # The centred 20x20 square (x 30..50) is pure green.
    assert (np.abs(c.astype(int) - np.array(GREEN)) <= 2).all()
    assert decode_image(path, 8, "crop").shape == (8, 8, 3)


def test_options_are_validated():
    with pytest.raises(ValueError, match="resize"):
        DataOptions(resize="stretch")
    with pytest.raises(ValueError, match="image_size"):
        DataOptions(image_size=0)
    with pytest.raises(ValueError, match="image_size"):
        DataOptions(image_size=64.0)  # type: ignore[arg-type]
    assert DataOptions.from_dict(DataOptions(32, "crop", False).to_dict()) == DataOptions(32, "crop", False)


def test_get_batch_scales_to_minus_one_one_and_flips_reproducibly(tmp_path):
    root = tmp_path / "dogs"
    im = Image.new("RGB", (16, 16), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 8, 16))  # left half white
    for i in range(8):
        path = root / ("a" if i < 4 else "b") / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        im.save(path)
    ds = ImageFolderDataset(root, DataOptions(image_size=16, flip=True))
    idx = torch.tensor([7, 0, 3, 3, 5, 1, 6, 2] * 4)

    x1, y1 = ds.get_batch(idx, torch.Generator().manual_seed(123))
    x2, y2 = ds.get_batch(idx, torch.Generator().manual_seed(123))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert y1.dtype == torch.int64 and torch.equal(y1, ds.labels[idx])
    assert x1.dtype == torch.float32 and x1.shape == (32, 3, 16, 16)
    assert set(x1.unique().tolist()) == {-1.0, 1.0}  # 0 -> -1, 255 -> +1 exactly

    # Flip decisions are the generator's: uniform < 0.5 per image, in batch order.
    expected = torch.rand(32, generator=torch.Generator().manual_seed(123)) < 0.5
    flipped = x1[:, 0, 0, 0] < 0  # left column black => flipped
    assert torch.equal(flipped, expected)
    assert 0 < int(flipped.sum()) < 32
    x3, _ = ds.get_batch(idx, torch.Generator().manual_seed(7))
    assert not torch.equal(x1, x3)

    plain = ImageFolderDataset(root, DataOptions(image_size=16, flip=False))
    xp, _ = plain.get_batch(idx, torch.Generator().manual_seed(123))
    assert (xp[:, :, :, :8] == 1).all() and (xp[:, :, :, 8:] == -1).all()
    x, label = plain[5]
    assert x.shape == (3, 16, 16) and label == 1 and torch.equal(x, xp[4])


def test_process_pool_decodes_the_same_pixels(tmp_path):
    root = make_set(tmp_path / "dogs", per=2)
    paths = [p for p, _ in scan_image_folder(root).samples] + [tmp_path / "missing.jpg"]
    opts = DataOptions(image_size=8)
    t, tf = decode_files(paths, opts, workers=2, pool="thread")
    p, pf = decode_files(paths, opts, workers=2, pool="process")
    assert torch.equal(t, p)
    assert [f[0] for f in tf] == [f[0] for f in pf] == [len(paths) - 1]
    with pytest.raises(ValueError, match="pool"):
        decode_files(paths, opts, pool="gpu")


# ---------------------------------------------------------------------------- cache


@pytest.fixture
def count_decodes(monkeypatch):
    calls: list[str] = []
    real = images.load_rgb  # decode_image lives in core.data.images (torch-free pool workers)

    def counting(path):
        calls.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(images, "load_rgb", counting)
    return calls


def _touch_later(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


def test_cache_is_reused_and_updated_incrementally(tmp_path, count_decodes):
    root = make_set(tmp_path / "dogs", per=3)
    cache = tmp_path / "cache"
    first = ImageFolderDataset(root, OPTS16, cache_dir=cache)
    assert len(count_decodes) == 6 and first.stats["decoded"] == 6
    assert first.cache_path is not None and first.cache_path.is_file()
    assert first.cache_path.parent == cache
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]

    count_decodes.clear()
    second = ImageFolderDataset(root, OPTS16, cache_dir=cache)
    assert count_decodes == [] and second.stats["reused"] == 6
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert second.samples == first.samples

    # One file changes: only it is decoded again, and its new pixels are used.
    changed = root / "akita" / "1.png"
    solid(changed, (9, 9, 250))
    _touch_later(changed)
    count_decodes.clear()
    third = ImageFolderDataset(root, OPTS16, cache_dir=cache)
    assert count_decodes == ["1.png"]
    assert_close(hwc(third, changed)[0, 0], (9, 9, 250), tol=0)

    # A file is added: only it is decoded.
    added = solid(root / "beagle" / "9.png", (1, 2, 3))
    count_decodes.clear()
    fourth = ImageFolderDataset(root, OPTS16, cache_dir=cache)
    assert count_decodes == ["9.png"] and len(fourth) == 7

    # A file is removed: nothing to decode, the dataset shrinks, the rest is intact.
    (root / "akita" / "0.png").unlink()
    count_decodes.clear()
    fifth = ImageFolderDataset(root, OPTS16, cache_dir=cache)
    assert count_decodes == [] and len(fifth) == 6
    assert_close(hwc(fifth, added)[3, 3], (1, 2, 3), tol=0)
    assert root / "akita" / "0.png" not in [p for p, _ in fifth.samples]
    count_decodes.clear()
    ImageFolderDataset(root, OPTS16, cache_dir=cache)
    assert count_decodes == []

    # Other image options use another cache file: decoded again.
    crop = ImageFolderDataset(root, DataOptions(image_size=16, resize="crop"), cache_dir=cache)
    assert crop.stats["decoded"] == 6 and crop.cache_path != fifth.cache_path


def test_a_corrupt_cache_is_ignored_and_rebuilt(tmp_path, caplog):
    root = make_set(tmp_path / "dogs", per=2)
    first = ImageFolderDataset(root, OPTS16, cache_dir=tmp_path / "cache")
    blob = first.cache_path.read_bytes()
    first.cache_path.write_bytes(blob[: len(blob) // 3])
    with caplog.at_level(logging.WARNING, logger="core.data.dataset"):
        again = ImageFolderDataset(root, OPTS16, cache_dir=tmp_path / "cache")
    assert again.stats["decoded"] == 4 and torch.equal(again.images, first.images)
    assert any("ignoring decoded-image cache" in r.getMessage() for r in caplog.records)
    assert ImageFolderDataset(root, OPTS16, cache_dir=tmp_path / "cache").stats["decoded"] == 0


def test_an_unwritable_cache_only_warns(tmp_path, caplog):
    root = make_set(tmp_path / "dogs", per=1)
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="core.data.dataset"):
        ds = ImageFolderDataset(root, OPTS16, cache_dir=blocker)
    assert len(ds) == 2
    assert any("could not write decoded-image cache" in r.getMessage() for r in caplog.records)
    assert blocker.read_text().startswith("a file")


def test_a_full_disk_for_the_cache_only_warns(tmp_path, caplog, small_disk):
    disk = small_disk("16k")
    root = make_set(tmp_path / "dogs", per=20)  # 40 x 768 bytes of pixels > 16 KB
    with caplog.at_level(logging.WARNING, logger="core.data.dataset"):
        ds = ImageFolderDataset(root, OPTS16, cache_dir=disk)
    assert len(ds) == 40
    assert any("could not write decoded-image cache" in r.getMessage() for r in caplog.records)
    assert list(disk.iterdir()) == []  # no half-written cache or temp file left


def test_progress_is_reported(tmp_path):
    root = make_set(tmp_path / "dogs", per=3)
    seen = []
    ImageFolderDataset(root, OPTS16, cache_dir=tmp_path / "c", progress=lambda done, total, msg: seen.append((done, total)))
    assert seen and seen[-1] == (6, 6)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    seen.clear()
    ImageFolderDataset(root, OPTS16, cache_dir=tmp_path / "c", progress=lambda done, total, msg: seen.append((done, total, msg)))
    assert seen == [(6, 6, "loaded from cache")]


def _noise_set(root, n=12, size=8, seed=0):
    """Breed folders of random-pixel PNGs: every uint8 value appears, none is symmetric."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        path = root / ("a", "b", "c")[i % 3] / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return root


@pytest.mark.parametrize("flip", [True, False])
def test_device_batches_equal_the_host_batches_bit_for_bit(tmp_path, flip):
    """The resident path (gather, flip, convert where the network runs) gives exactly the
    batches of get_batch for the same indices and generator, and leaves the generator in
    the same state (the next draws, e.g. label dropout, are the same too)."""
    ds = ImageFolderDataset(_noise_set(tmp_path / "dogs"), DataOptions(image_size=8, flip=flip))
    dev = DeviceBatches.from_dataset(ds, "cpu")
    for step, idx in enumerate((torch.tensor([3, 0, 11, 3, 7]), torch.arange(12).flip(0), torch.tensor([5]))):
        g_host, g_dev = torch.Generator().manual_seed(step), torch.Generator().manual_seed(step)
        x_host, y_host = ds.get_batch(idx, g_host)
        x_dev, y_dev = dev.get_batch(idx, g_dev)
        assert x_dev.dtype == x_host.dtype == torch.float32
        assert torch.equal(x_dev.view(torch.int32), x_host.view(torch.int32))  # the bits, not just the values
        assert torch.equal(y_dev, y_host)
        assert torch.equal(torch.rand(4, generator=g_host), torch.rand(4, generator=g_dev))
    # Every uint8 value converts as the host path converts it.
    table = uint8_to_unit_table()
    assert torch.equal(table, torch.arange(256, dtype=torch.uint8).to(torch.float32) / 127.5 - 1)


def test_batches_go_to_the_device_only_when_they_fit(tmp_path, monkeypatch):
    import core.diffusion.device as device_mod

    ds = ImageFolderDataset(_noise_set(tmp_path / "dogs"), DataOptions(image_size=8))
    need = ds.images.numel() + ds.labels.numel() * 8
    src, line = batches_on(ds, "cpu")
    assert src is ds and "CPU memory" in line
    meta = torch.device("meta")  # a device that is not the CPU, without a GPU
    monkeypatch.setattr(device_mod, "free_device_memory", lambda device: 4 * need)
    src, line = batches_on(ds, meta)
    assert isinstance(src, DeviceBatches) and src.images.device == meta and "live on meta" in line
    monkeypatch.setattr(device_mod, "free_device_memory", lambda device: 4 * need - 1)
    src, line = batches_on(ds, meta)
    assert src is ds and "exceed 25% of its free memory" in line
    monkeypatch.setattr(device_mod, "free_device_memory", lambda device: None)
    src, line = batches_on(ds, meta)
    assert src is ds and "not known" in line
