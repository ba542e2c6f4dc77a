"""Curation scan, statistics and quarantine on a corpus generated here (no binary blobs).

Every problem image of the issue's list is built by the helpers below; each must be flagged
for its reason and nothing else, clean images must not be flagged at all, and a quarantine +
restore round trip must leave every byte, path and mtime as it was.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from core.data import quarantine as qmod
from core.data.curation import (
    REASONS,
    ScanOptions,
    dataset_stats,
    load_report,
    scan_dataset,
)
from core.data.image_features import analyse_image, collage_score
from core.data.quarantine import quarantine_flagged, restore

# ---------------------------------------------------------------------------- image makers


def natural_image(seed: int, w: int = 176, h: int = 144) -> Image.Image:
    """A photo-like scene: graded sky, a wavy tilted horizon, ground texture, a few soft
    shapes and sensor noise. Different seeds give clearly different images."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    sky_top, sky_bot = rng.uniform(40, 230, 3), rng.uniform(40, 230, 3)
    t = (yy / h)[..., None]
    img = sky_top * (1 - t) + sky_bot * t
    horizon = h * rng.uniform(0.4, 0.7) + rng.uniform(-0.15, 0.15) * (xx - w / 2) + rng.uniform(3, 10) * np.sin(
        xx / w * rng.uniform(4, 12) + rng.uniform(0, 6)
    )
    ground = rng.uniform(30, 200, 3) * (0.8 + 0.4 * (yy / h))[..., None]
    img = np.where((yy > horizon)[..., None], ground, img)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0 = rng.uniform(-20, w), rng.uniform(-20, h)
        rw, rh = rng.uniform(10, w / 2), rng.uniform(10, h / 2)
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([x0, y0, x0 + rw, y0 + rh], fill=fill)
        else:
            pts = [(x0 + rng.uniform(0, rw), y0 + rng.uniform(0, rh)) for _ in range(5)]
            draw.polygon(pts, fill=fill)
    pil = pil.filter(ImageFilter.GaussianBlur(1.2))
    arr = np.asarray(pil).astype(np.float32) + rng.normal(0, 5, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def dog_image(seed: int, w: int = 192, h: int = 160) -> Image.Image:
    """A dog-ish figure (body, head, ears, legs, tail, eyes) standing in front of a scene
    with a near-straight horizon, the hardest clean case for the collage detector."""
    rng = np.random.default_rng(seed + 1000)
    bg = natural_image(seed + 5000, w, h)
    draw = ImageDraw.Draw(bg)
    fur = tuple(int(c) for c in rng.integers(60, 200, 3))
    dark = tuple(max(0, c - 50) for c in fur)
    cx, cy = w * rng.uniform(0.35, 0.6), h * rng.uniform(0.5, 0.65)
    bw, bh = w * 0.45, h * 0.28
    for lx in (0.1, 0.3, 0.65, 0.85):
        x = cx - bw / 2 + lx * bw
        draw.rectangle([x - 5, cy, x + 5, cy + bh * 1.2], fill=dark)
    draw.ellipse([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], fill=fur)
    hx, hy, r = cx + bw / 2 - 6, cy - bh * 0.8, h * 0.15
    draw.ellipse([hx - r, hy - r, hx + r, hy + r], fill=fur)
    draw.polygon([(hx - r, hy - r * 0.3), (hx - r * 1.4, hy + r * 0.9), (hx - r * 0.5, hy + r * 0.2)], fill=dark)
    draw.ellipse([hx + r * 0.5, hy - 3, hx + r * 1.5, hy + r * 0.6], fill=fur)
    draw.ellipse([hx + r * 1.2, hy, hx + r * 1.6, hy + 6], fill=(20, 15, 15))
    draw.ellipse([hx + 2, hy - r * 0.4, hx + 8, hy - r * 0.4 + 6], fill=(10, 10, 10))
    draw.line([(cx - bw / 2, cy), (cx - bw / 2 - 20, cy - 25)], fill=dark, width=6)
    bg = bg.filter(ImageFilter.GaussianBlur(0.8))
    arr = np.asarray(bg).astype(np.float32) + rng.normal(0, 4, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def collage(tiles: list[Image.Image], rows: int, cols: int, tile: int = 80, gutter: int = 0) -> Image.Image:
    W = cols * tile + (cols - 1) * gutter
    H = rows * tile + (rows - 1) * gutter
    out = Image.new("RGB", (W, H), (255, 255, 255))
    for k, im in enumerate(tiles[: rows * cols]):
        r, c = divmod(k, cols)
        out.paste(im.resize((tile, tile), Image.Resampling.LANCZOS), (c * (tile + gutter), r * (tile + gutter)))
    return out


def near_duplicate_of(im: Image.Image) -> Image.Image:
    """Slightly cropped (3% each side), resized to 85% and recompressed as JPEG q=70."""
    w, h = im.size
    dx, dy = int(w * 0.03), int(h * 0.03)
    small = im.crop((dx, dy, w - dx, h - dy)).resize((int(w * 0.85), int(h * 0.85)), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=70)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, raw_rows: bytes) -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit RGB or a lying header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", raw_rows) + _png_chunk(b"IEND", b"")


def png16_rgb(im: Image.Image) -> bytes:
    arr = (np.asarray(im).astype(np.uint16) * 257).astype(">u2")  # 8 -> 16 bit, big-endian
    rows = b"".join(b"\x00" + arr[y].tobytes() for y in range(arr.shape[0]))
    return png_bytes(im.width, im.height, 16, 2, zlib.compress(rows))


def png_bomb(side: int = 20000) -> bytes:
    """A 1-bit side x side PNG whose zeros compress to a few tens of kB."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + (side + 7) // 8)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    return png_bytes(side, side, 1, 0, body)


def save(im: Image.Image, path: Path, fmt: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, fmt, **kw)
    return path


def build_corpus(root: Path) -> dict[str, set[str]]:
    """Write the issue's corpus under ``root/<breed>/``; returns rel path -> expected reasons."""
    expect: dict[str, set[str]] = {}

    def put(rel: str, reasons: set[str]) -> Path:
        expect[rel] = reasons
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    # Clean images: must never be flagged.
    for i in range(4):
        save(natural_image(i), put(f"beagle/clean_{i}.jpg", set()), quality=90)
    for i in range(3):
        save(dog_image(i), put(f"collie/dog_{i}.jpg", set()), quality=90)
    save(dog_image(7, 256, 200), put("beagle/dog_big.png", set()))

    # Broken files.
    put("beagle/empty.jpg", {"empty"}).write_bytes(b"")
    put("beagle/notes.jpg", {"not_an_image"}).write_text("<html>403 Forbidden</html>\n")
    buf = io.BytesIO()
    natural_image(40).save(buf, "JPEG", quality=90)
    put("beagle/truncated.jpg", {"truncated"}).write_bytes(buf.getvalue()[: len(buf.getvalue()) * 6 // 10])
    put("collie/bomb.png", {"decompression_bomb"}).write_bytes(png_bomb())
    # Small picture, but a zTXt chunk that inflates to 20 MB (Pillow refuses > 1 MB).
    small_png = io.BytesIO()
    Image.new("RGB", (80, 80), (30, 60, 90)).save(small_png, "PNG")
    head = small_png.getvalue()[:33]  # signature + IHDR
    ztxt = _png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * 20_000_000, 9))
    put("beagle/text_bomb.png", {"decompression_bomb"}).write_bytes(head + ztxt + small_png.getvalue()[33:])

    # Valid but unusual encodings: not flagged.
    save(natural_image(41).convert("CMYK"), put("collie/cmyk.jpg", set()), quality=90)
    put("collie/rgb16.png", set()).write_bytes(png16_rgb(natural_image(42)))
    pal = natural_image(43).quantize(64)
    save(pal, put("collie/palette.png", set()), transparency=0)
    frames = [natural_image(44 + k) for k in range(3)]
    frames[0].save(put("collie/anim.gif", set()), save_all=True, append_images=frames[1:], duration=100, loop=0)
    stored = natural_image(47, 200, 120).transpose(Image.Transpose.ROTATE_90)  # stored 120x200
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": displayed 200x120 again
    save(stored, put("collie/exif_rot.jpg", set()), quality=90, exif=exif.tobytes())

    # Content problems.
    save(Image.fromarray(np.random.default_rng(5).integers(0, 256, (10, 10, 3), dtype=np.uint8)),
         put("beagle/tiny.png", {"too_small"}))
    save(Image.new("RGB", (10, 10), (200, 30, 30)), put("collie/tiny_flat.png", {"too_small"}))  # not also "flat"
    save(natural_image(50, 1000, 100), put("beagle/panorama.jpg", {"odd_aspect"}), quality=90)
    save(Image.new("RGB", (128, 128), (128, 128, 128)), put("beagle/grey.jpg", {"low_information"}), quality=90)
    save(natural_image(51).convert("L").convert("RGB"), put("collie/bw_as_rgb.jpg", {"grayscale"}), quality=90)
    gray16 = (np.asarray(natural_image(52).convert("L")).astype(np.uint16) * 257)
    save(Image.fromarray(gray16), put("collie/gray16.png", {"grayscale"}))

    # Duplicates: same pixels in another breed (PNG vs BMP: different bytes), and a near copy.
    orig = natural_image(60, 200, 160)
    save(orig, put("beagle/original.png", set()))
    save(orig, put("collie/copy_of_original.bmp", {"duplicate"}))
    save(near_duplicate_of(dog_image(61)), put("collie/near_copy.jpg", {"near_duplicate"}), quality=85)
    save(dog_image(61), put("beagle/near_source.png", set()))

    # Collages of different images.
    save(collage([natural_image(70 + k) for k in range(4)], 2, 2, tile=96), put("beagle/collage2x2.jpg", {"collage"}), quality=88)
    save(collage([dog_image(80 + k, 120, 120) for k in range(9)], 3, 3, tile=72, gutter=4),
         put("collie/collage3x3.jpg", {"collage"}), quality=88)
    return expect


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, set[str]]]:
    root = tmp_path_factory.mktemp("corpus") / "dogs"
    return root, build_corpus(root)


@pytest.fixture(scope="module")
def scanned(corpus, tmp_path_factory):
    root, expect = corpus
    report_path = tmp_path_factory.mktemp("ws") / "reports" / "scan.json"
    report = scan_dataset(root, report_path=report_path)
    return root, expect, report_path, report


def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[p.relative_to(root).as_posix()] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out


# ---------------------------------------------------------------------------- the scan


def test_each_file_flagged_for_its_reason_only(scanned) -> None:
    root, expect, _, report = scanned
    got: dict[str, set[str]] = {rel: set() for rel in expect}
    for f in report.flags:
        got.setdefault(f.rel, set()).add(f.reason)
    wrong = {rel: (got[rel], want) for rel, want in expect.items() if got[rel] != want}
    assert not wrong, "got vs expected reasons: " + json.dumps({k: [sorted(a), sorted(b)] for k, (a, b) in wrong.items()})
    assert report.total == len(expect)


def test_flags_carry_values_groups_and_keep(scanned) -> None:
    root, _, _, report = scanned
    by = {(f.rel, f.reason): f for f in report.flags}
    assert by[("beagle/tiny.png", "too_small")].value == 10
    assert by[("beagle/panorama.jpg", "odd_aspect")].value == pytest.approx(0.1)
    assert by[("beagle/grey.jpg", "low_information")].value < 1.0
    dup = by[("collie/copy_of_original.bmp", "duplicate")]
    assert dup.keep == root.resolve() / "beagle/original.png" and dup.group
    near = by[("collie/near_copy.jpg", "near_duplicate")]
    assert near.keep == root.resolve() / "beagle/near_source.png"  # the larger one is kept
    assert 0 <= near.value <= ScanOptions().near_phash
    assert by[("collie/collage3x3.jpg", "collage")].value >= ScanOptions().collage_threshold
    kinds = {g["kind"] for g in report.groups}
    assert kinds == {"duplicate", "near_duplicate"}


def test_decoding_handles_modes_and_orientation(corpus) -> None:
    root, _ = corpus
    rot = analyse_image(str(root / "collie/exif_rot.jpg"))
    assert (rot["width"], rot["height"]) == (200, 120)  # EXIF orientation applied
    rgb16 = analyse_image(str(root / "collie/rgb16.png"))
    plain = analyse_image(str(root / "beagle/clean_0.jpg"))
    assert rgb16["chroma"] > 10 and rgb16["entropy"] > 5  # scaled, not clipped to white
    assert plain["entropy"] > 5
    bomb = analyse_image(str(root / "collie/bomb.png"))
    assert bomb["error"] == "decompression_bomb"


def test_report_written_and_reloaded(scanned) -> None:
    _, _, report_path, report = scanned
    again = load_report(report_path)
    assert again is not None
    assert [(f.rel, f.reason, f.value) for f in again.flags] == [(f.rel, f.reason, f.value) for f in report.flags]
    assert not list(report_path.parent.glob("*.tmp"))
    assert load_report(report_path.parent / "missing.json") is None


def test_rerun_only_rescans_changed_files(corpus, tmp_path) -> None:
    root, _ = corpus
    work = tmp_path / "dogs"
    shutil.copytree(root, work)
    rp = tmp_path / "r.json"
    first = scan_dataset(work, report_path=rp, options=ScanOptions(workers=1))
    assert first.analysed == first.total
    second = scan_dataset(work, report_path=rp)
    assert second.analysed == 0
    assert [(f.rel, f.reason) for f in second.flags] == [(f.rel, f.reason) for f in first.flags]
    # Change one file, add one: exactly those two are decoded again.
    save(natural_image(99), work / "beagle/clean_0.jpg", quality=90)
    save(natural_image(98), work / "collie/new.jpg", quality=90)
    third = scan_dataset(work, report_path=rp)
    assert third.analysed == 2 and third.total == first.total + 1
    # A changed threshold needs no decode at all.
    fourth = scan_dataset(work, report_path=rp, options=ScanOptions(min_size=5))
    assert fourth.analysed == 0
    assert "beagle/tiny.png" not in {f.rel for f in fourth.flags if f.reason == "too_small"}


@pytest.mark.slow  # spawns two Python processes
def test_process_pool_gives_same_flags(corpus, tmp_path) -> None:
    root, _ = corpus
    a = scan_dataset(root, report_path=tmp_path / "a.json", options=ScanOptions(workers=2, pool="thread"))
    b = scan_dataset(root, report_path=tmp_path / "b.json", options=ScanOptions(workers=2, pool="process"))
    assert [(f.rel, f.reason, f.value) for f in a.flags] == [(f.rel, f.reason, f.value) for f in b.flags]


def test_collage_score_separates_grids_from_photos() -> None:
    photos = [natural_image(200 + i) for i in range(6)] + [dog_image(300 + i) for i in range(6)]
    for im in photos:
        assert collage_score(np.asarray(im)) < ScanOptions().collage_threshold
    tiles = [natural_image(400 + i) for i in range(9)]
    for rows, cols, gutter in [(2, 2, 0), (3, 3, 0), (2, 2, 6), (3, 3, 3), (1, 2, 0)]:
        im = collage(tiles, rows, cols, tile=90, gutter=gutter)
        assert collage_score(np.asarray(im)) >= 0.5, (rows, cols, gutter)


def textured_image(seed: int, w: int = 200, h: int = 160, amp: float = 30.0) -> Image.Image:
    """natural_image with fur/grass-like texture: fine noise plus a coarser pattern. On
    such tiles a thin gutter is no longer the only sharp thing in the picture."""
    rng = np.random.default_rng(seed + 7000)
    base = np.asarray(natural_image(seed, w, h)).astype(np.float32)
    fine = rng.normal(0, amp, (h, w, 1)) * rng.uniform(0.6, 1.0, 3)
    coarse = rng.normal(128, 60, (h // 3, w // 3)).clip(0, 255).astype(np.uint8)
    coarse = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), np.float32)[..., None] - 128
    return Image.fromarray(np.clip(base + fine + 0.6 * coarse, 0, 255).astype(np.uint8))


def gutter_grid(tiles: list[Image.Image], rows: int, cols: int, size: tuple[int, int], gutter: int,
                colour: tuple[int, int, int]) -> Image.Image:
    """Photos tiled into exactly ``size`` px with ``gutter`` px lines of ``colour`` between."""
    W, H = size
    out = Image.new("RGB", size, colour)
    tw, th = (W - (cols - 1) * gutter) / cols, (H - (rows - 1) * gutter) / rows
    for k in range(rows * cols):
        r, c = divmod(k, cols)
        x0, y0 = round(c * (tw + gutter)), round(r * (th + gutter))
        x1, y1 = round(c * (tw + gutter) + tw), round(r * (th + gutter) + th)
        out.paste(tiles[k].resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS), (x0, y0))
    return out


def jpeg_roundtrip(im: Image.Image, quality: int = 88) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


@pytest.mark.parametrize("rows, cols, size, gutter, colour, shrink_to", [
    (3, 2, (300, 200), 1, (245, 245, 245), None),  # issue 12's case: 0.0 at the 256 px analysis size
    (2, 3, (300, 200), 2, (230, 230, 225), None),
    (3, 3, (300, 200), 1, (250, 250, 250), None),
    (3, 3, (450, 300), 4, (220, 220, 215), None),  # a gutter as wide as the seam look-around
    (2, 3, (600, 400), 1, (20, 20, 20), None),  # dark gutters
    (3, 2, (1200, 800), 2, (250, 250, 250), None),
    (3, 3, (900, 600), 3, (100, 90, 80), None),  # (a mid-grey gutter on mid-grey texture: missed, see README)
    (3, 3, (600, 400), 6, (250, 250, 250), (240, 160)),  # downscaled below 256 px: gutters ~2.4 px
    (2, 3, (450, 300), 4, (220, 220, 215), (200, 133)),  # ~1.8 px
    (3, 2, (300, 200), 2, (250, 250, 250), (210, 140)),  # ~1.4 px
])
def test_collage_score_survives_the_downscale(rows, cols, size, gutter, colour, shrink_to) -> None:
    seed = rows * 1000 + size[0] + gutter
    tiles = [textured_image(seed + k, amp=25 + 10 * (k % 2)) for k in range(rows * cols)]
    im = gutter_grid(tiles, rows, cols, size, gutter, colour)
    if shrink_to is not None:
        im = im.resize(shrink_to, Image.Resampling.LANCZOS)
    score = collage_score(np.asarray(jpeg_roundtrip(im)))
    assert score >= ScanOptions().collage_threshold, (rows, cols, size, gutter, colour, shrink_to, score)


def test_collage_score_leaves_photos_and_the_demo_set_alone() -> None:
    from core.data.demo import CLASSES, render

    threshold = ScanOptions().collage_threshold
    photos = [textured_image(500 + i, *wh, amp=amp) for i, (wh, amp) in enumerate(
        [((300, 220), 10), ((640, 480), 25), ((1000, 750), 45), ((400, 300), 0), ((260, 260), 35), ((800, 450), 20)])]
    photos += [dog_image(600 + i, 480, 360) for i in range(3)] + [render(c, 7, size=128) for c in sorted(CLASSES)]
    scores = [collage_score(np.asarray(jpeg_roundtrip(im))) for im in photos]
    assert max(scores) < threshold, scores


def test_threshold_options_are_applied(corpus, tmp_path) -> None:
    root, _ = corpus
    # near_phash < 0 turns near duplicates off; a collage threshold above 1 turns collages off
    r = scan_dataset(root, report_path=tmp_path / "r.json", options=ScanOptions(near_phash=-1, collage_threshold=1.1))
    reasons = {f.reason for f in r.flags}
    assert "near_duplicate" not in reasons and "collage" not in reasons and "duplicate" in reasons
    with pytest.raises(ValueError, match="min_aspect"):
        ScanOptions(min_aspect=2)


def test_missing_folder_is_a_clear_error(tmp_path) -> None:
    from core.data.curation import DatasetFolderError

    with pytest.raises(DatasetFolderError, match="does not exist"):
        scan_dataset(tmp_path / "nope", report_path=tmp_path / "r.json")


# ---------------------------------------------------------------------------- statistics


def test_stats_counts_medians_and_flags(scanned, tmp_path) -> None:
    root, expect, _, report = scanned
    (root / "empty_breed").mkdir(exist_ok=True)
    try:
        cache = tmp_path / "stats.json"
        st = dataset_stats(root, cache_path=cache, report=report)
        by = {b.name: b for b in st.breeds}
        assert st.total == len(expect)
        for breed in ("beagle", "collie"):
            assert by[breed].count == sum(1 for r in expect if r.startswith(breed + "/"))
            want: dict[str, int] = {}
            for rel, reasons in expect.items():
                if rel.startswith(breed + "/"):
                    for reason in reasons:
                        want[reason] = want.get(reason, 0) + 1
            assert by[breed].flagged == dict(sorted(want.items()))
        assert by["empty_breed"].count == 0 and st.empty_breeds == ["empty_breed"]
        assert st.imbalance == pytest.approx(max(by["beagle"].count, by["collie"].count) / min(by["beagle"].count, by["collie"].count))
        assert sum(b.share for b in st.breeds) == pytest.approx(1.0)
        assert by["beagle"].median_width is not None
        assert st.header_reads == st.total
        again = dataset_stats(root, cache_path=cache, report=report)
        assert again.header_reads == 0 and again.to_dict() | {"header_reads": 0} == st.to_dict() | {"header_reads": 0}
        # Without a report only header problems are known.
        bare = dataset_stats(root, cache_path=cache)
        assert set(bare.flagged) == {"empty", "not_an_image", "decompression_bomb"}
    finally:
        (root / "empty_breed").rmdir()


def test_stats_median_from_headers(tmp_path) -> None:
    for i, (w, h) in enumerate([(100, 80), (300, 200), (120, 90)]):
        save(Image.new("RGB", (w, h), (i, 2, 3)), tmp_path / "d" / "a" / f"{i}.png")
    st = dataset_stats(tmp_path / "d")
    assert (st.breeds[0].median_width, st.breeds[0].median_height) == (120, 90)
    assert st.imbalance == 1.0


# ---------------------------------------------------------------------------- quarantine


def test_quarantine_restore_round_trip(corpus, tmp_path) -> None:
    root, expect = corpus
    work = tmp_path / "data" / "dogs"
    shutil.copytree(root, work)  # copytree keeps mtimes
    before = _snapshot(work)
    report = scan_dataset(work, report_path=tmp_path / "r.json")
    qdir = tmp_path / "quarantine"

    dry = quarantine_flagged(report, work, qdir, dry_run=True)
    assert dry and all(m.ok and m.dry_run for m in dry) and _snapshot(work) == before and not qdir.exists()

    moves = quarantine_flagged(report, work, qdir)
    flagged = {rel for rel, r in expect.items() if r}
    assert all(m.ok for m in moves), [m.error for m in moves if not m.ok]
    assert {m.source.relative_to(work.resolve()).as_posix() for m in moves} == flagged
    left = _snapshot(work)
    assert set(left) == set(before) - flagged
    for m in moves:  # quarantine/<breed>/<name>, same bytes and mtime
        rel = m.source.relative_to(work.resolve()).as_posix()
        assert m.dest == qdir / rel
        assert hashlib.sha256(m.dest.read_bytes()).hexdigest() == before[rel][0]
    log = [json.loads(line) for line in (qdir / qmod.LOG_NAME).read_text().splitlines()]
    assert len(log) == len(flagged) and all(e["action"] == "quarantine" for e in log)

    back = restore(qdir)
    assert all(m.ok for m in back) and len(back) == len(flagged)
    assert _snapshot(work) == before
    assert restore(qdir) == []  # nothing left


def test_quarantine_by_reason_name_collision_and_restore_refusal(corpus, tmp_path) -> None:
    root, _ = corpus
    work = tmp_path / "dogs"
    shutil.copytree(root, work)
    report = scan_dataset(work, report_path=tmp_path / "r.json")
    qdir = tmp_path / "q"
    (qdir / "beagle").mkdir(parents=True)
    (qdir / "beagle" / "tiny.png").write_bytes(b"someone else's file")
    with pytest.raises(ValueError, match="unknown reason"):
        quarantine_flagged(report, work, qdir, reasons=["blurry"])
    moves = quarantine_flagged(report, work, qdir, reasons=["too_small", "odd_aspect"])
    assert sorted(m.source.name for m in moves) == ["panorama.jpg", "tiny.png", "tiny_flat.png"]
    tiny = next(m for m in moves if m.source.name == "tiny.png")
    assert tiny.ok and tiny.dest.name == "tiny-1.png"  # the other file was not overwritten
    assert (qdir / "beagle" / "tiny.png").read_bytes() == b"someone else's file"

    # Something new now sits at the original path: restore refuses, both files stay intact.
    (work / "beagle" / "tiny.png").write_bytes(b"new")
    res = restore(qdir, paths=[work / "beagle" / "tiny.png"])  # matched by original path
    assert len(res) == 1 and not res[0].ok and "exists" in res[0].error
    assert tiny.dest.exists() and (work / "beagle" / "tiny.png").read_bytes() == b"new"
    # Restore by quarantine path, and an unknown path is a per-path error.
    res = restore(qdir, paths=[qdir / "beagle" / "panorama.jpg", tmp_path / "nowhere.jpg"])
    assert [m.ok for m in res] == [False, True]
    assert (work / "beagle" / "panorama.jpg").exists()


def test_quarantine_skips_files_changed_since_scan(corpus, tmp_path) -> None:
    root, _ = corpus
    work = tmp_path / "dogs"
    shutil.copytree(root, work)
    report = scan_dataset(work, report_path=tmp_path / "r.json")
    (work / "beagle" / "tiny.png").write_bytes((work / "beagle" / "clean_0.jpg").read_bytes())
    os.unlink(work / "beagle" / "grey.jpg")
    moves = {m.source.name: m for m in quarantine_flagged(report, work, tmp_path / "q")}
    assert "changed since the scan" in moves["tiny.png"].error
    assert "no longer" in moves["grey.jpg"].error
    assert (work / "beagle" / "tiny.png").exists()


def test_report_for_another_folder_is_refused(scanned, tmp_path) -> None:
    from core.data.curation import CurationError

    _, _, _, report = scanned
    (tmp_path / "other" / "a").mkdir(parents=True)
    with pytest.raises(CurationError, match="scan report is for"):
        quarantine_flagged(report, tmp_path / "other", tmp_path / "q")


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def test_cross_filesystem_disk_full_keeps_source(tmp_path) -> None:
    src = tmp_path / "data" / "a" / "big.bin.jpg"
    src.parent.mkdir(parents=True)
    payload = os.urandom(3 * 1024 * 1024)
    src.write_bytes(payload)
    small = tmp_path / "tiny_disk"
    if not _tmpfs(small, "1m"):
        pytest.skip("cannot mount a tmpfs here (needs root); the monkeypatched test covers this path")
    try:
        with pytest.raises(OSError) as info:
            qmod.safe_move(src, small / "a" / "big.bin.jpg")
        assert info.value.errno == errno.ENOSPC
        assert src.read_bytes() == payload
        assert not any(p.is_file() for p in small.rglob("*"))  # no partial or temp file left
        # A file that fits crosses filesystems whole, with its mtime.
        ok = tmp_path / "data" / "a" / "ok.jpg"
        ok.write_bytes(b"x" * 1000)
        os.utime(ok, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
        qmod.safe_move(ok, small / "a" / "ok.jpg")
        assert not ok.exists() and (small / "a" / "ok.jpg").read_bytes() == b"x" * 1000
        assert (small / "a" / "ok.jpg").stat().st_mtime_ns == 1_600_000_000_000_000_000
    finally:
        subprocess.run(["umount", str(small)], capture_output=True, timeout=10)


def test_copy_failure_and_unlink_failure_keep_one_whole_file(tmp_path, monkeypatch) -> None:
    src = tmp_path / "a" / "f.jpg"
    src.parent.mkdir()
    src.write_bytes(b"precious" * 1000)
    dst = tmp_path / "b" / "f.jpg"

    def exdev(*a, **k):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    # Simulated cross-device move whose copy runs out of space half way.
    monkeypatch.setattr(qmod.os, "link", exdev)
    real_write = io.BufferedWriter.write
    calls = {"n": 0}

    def full_fdopen(fd, mode="r", *a, **k):
        fh = open(fd, mode, *a, **k)

        class Full:
            def __enter__(self):
                return self

            def __exit__(self, *e):
                fh.close()

            def write(self, b):
                calls["n"] += 1
                real_write(fh, b[: len(b) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")

            def __getattr__(self, name):
                return getattr(fh, name)

        return Full()

    monkeypatch.setattr(qmod.os, "fdopen", full_fdopen)
    with pytest.raises(OSError) as info:
        qmod.safe_move(src, dst)
    assert info.value.errno == errno.ENOSPC and calls["n"] == 1
    assert src.read_bytes() == b"precious" * 1000 and list(dst.parent.iterdir()) == []
    monkeypatch.undo()

    # Same filesystem, but the source folder refuses the unlink (permission): undo the link.
    real_unlink = os.unlink

    def no_unlink(p, *a, **k):
        if Path(p) == src:
            raise PermissionError(errno.EACCES, "Permission denied", str(p))
        return real_unlink(p, *a, **k)

    monkeypatch.setattr(qmod.os, "unlink", no_unlink)
    with pytest.raises(PermissionError):
        qmod.safe_move(src, dst)
    assert src.read_bytes() == b"precious" * 1000 and not dst.exists()


def test_log_failure_puts_the_file_back_and_half_lines_are_survived(corpus, tmp_path, monkeypatch) -> None:
    root, _ = corpus
    work = tmp_path / "dogs"
    shutil.copytree(root, work)
    report = scan_dataset(work, report_path=tmp_path / "r.json")
    qdir = tmp_path / "q"
    qdir.mkdir()
    (qdir / qmod.LOG_NAME).write_text('{"action": "quarantine", "orig')  # a crash mid-line
    real_append = qmod._append_log

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(qmod, "_append_log", full)
    moves = quarantine_flagged(report, work, qdir, reasons=["odd_aspect"])
    assert len(moves) == 1 and not moves[0].ok and "left in place" in moves[0].error
    assert (work / "beagle" / "panorama.jpg").exists() and not (qdir / "beagle" / "panorama.jpg").exists()
    monkeypatch.setattr(qmod, "_append_log", real_append)
    moves = quarantine_flagged(report, work, qdir, reasons=["odd_aspect"])
    assert moves[0].ok
    assert [e["quarantined"] for e in qmod.quarantined_files(qdir)] == [str(qdir / "beagle" / "panorama.jpg")]
    assert restore(qdir)[0].ok and (work / "beagle" / "panorama.jpg").exists()


def test_duplicate_groups_keep_a_clean_copy_and_protect_the_last_one(tmp_path) -> None:
    data = tmp_path / "dogs"
    colour = dog_image(123, 180, 144)
    save(colour.resize((200, 160)).convert("L").convert("RGB"), data / "a" / "big_grey.jpg", quality=92)
    save(colour, data / "b" / "colour.jpg", quality=92)
    report = scan_dataset(data, report_path=tmp_path / "r.json")
    got = {(f.rel, f.reason) for f in report.flags}
    # The bigger copy is grey: the clean colour one is kept instead.
    assert got == {("a/big_grey.jpg", "grayscale"), ("a/big_grey.jpg", "near_duplicate")}

    # A copy whose kept twin has vanished is not moved (it may be the last one).
    save(natural_image(5), data / "a" / "x.png")
    save(natural_image(5), data / "b" / "x_copy.bmp")
    os.utime(data / "b" / "x_copy.bmp", ns=(0, (data / "a" / "x.png").stat().st_mtime_ns + 10**9))
    report = scan_dataset(data, report_path=tmp_path / "r.json")
    assert ("b/x_copy.bmp", "duplicate") in {(f.rel, f.reason) for f in report.flags}
    os.rename(data / "a" / "x.png", tmp_path / "x.png")
    moves = quarantine_flagged(report, data, tmp_path / "q", reasons=["duplicate"])
    assert len(moves) == 1 and not moves[0].ok and "no longer in the dataset" in moves[0].error
    assert (data / "b" / "x_copy.bmp").exists()


def test_reasons_constant_lists_every_reason_used(scanned) -> None:
    _, _, _, report = scanned
    assert {f.reason for f in report.flags} <= set(REASONS)
