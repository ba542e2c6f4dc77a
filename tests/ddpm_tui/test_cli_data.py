"""`ddpm-tui data ...` end to end on tiny generated datasets, through ``cli.main``."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from ddpm_tui.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    return tmp_path / "ws"


@pytest.mark.parametrize("sub", [[], ["stats"], ["scan"], ["quarantine"], ["restore"], ["demo"]])
def test_help(capsys, sub: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["data", *sub, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ddpm-tui data")
    if sub == ["scan"]:
        assert "--collage-threshold" in out and "(default: 0.5)" in out


def test_no_subcommand_and_missing_folder_are_one_line_errors(capsys, ws: Path) -> None:
    code, _, err = run(capsys, "--workspace", str(ws), "data")
    assert code == 2 and err.strip().splitlines()[-1].startswith("ddpm-tui: error: choose a data command")
    code, out, err = run(capsys, "data", "stats", "--workspace", str(ws), "--data", str(ws / "nope"))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "ddpm-tui: error:" in err and str(ws / "nope") in err
    code, _, err = run(capsys, "data", "scan", "--workspace", str(ws))  # default dataset 'dogs' absent
    assert code == 2 and "data/dogs does not exist" in err and "data demo" in err


def test_demo_then_stats(capsys, ws: Path) -> None:
    code, out, _ = run(capsys, "data", "demo", "--workspace", str(ws), "--per-class", "4", "--seed", "1")
    assert code == 0 and "wrote 20 images" in out
    first = _snapshot(ws / "data" / "demo")
    code, _, err = run(capsys, "data", "demo", "--workspace", str(ws), "--per-class", "4")
    assert code == 2 and "--force" in err
    code, _, _ = run(capsys, "data", "demo", "--workspace", str(ws), "--per-class", "4", "--seed", "1", "--force")
    assert code == 0 and _snapshot(ws / "data" / "demo") == first
    code, _, err = run(capsys, "data", "demo", "--workspace", str(ws), "--per-class", "0")
    assert code == 2 and "--per-class" in err

    code, out, _ = run(capsys, "data", "stats", "--workspace", str(ws), "--dataset", "demo", "--json")
    assert code == 0
    st = json.loads(out)
    assert st["total"] == 20 and st["imbalance"] == 1.0 and len(st["breeds"]) == 5
    assert all(b["count"] == 4 and b["median_width"] == 64 for b in st["breeds"])
    assert list((ws / "cache").glob("stats-demo-*.json"))
    code, out, _ = run(capsys, "data", "stats", "--workspace", str(ws), "--dataset", "demo")
    assert code == 0 and "imbalance 1.00" in out and "no scan yet" in out


def _small_dataset(root: Path) -> None:
    from core.data.demo import render

    for breed, cls in (("beagle", "goldfish"), ("pug", "snowman")):
        (root / breed).mkdir(parents=True)
        for i in range(3):
            render(cls, i, size=96).save(root / breed / f"{i}.jpg", quality=90)
    render("ladybug", 0, size=96).save(root / "pug" / "dup.png")
    render("ladybug", 0, size=96).save(root / "beagle" / "orig.png")
    Image.new("RGB", (20, 20), (10, 200, 30)).save(root / "pug" / "tiny.png")
    (root / "beagle" / "broken.jpg").write_bytes(b"not a jpeg")


def test_scan_quarantine_restore(capsys, ws: Path, tmp_path: Path) -> None:
    data = tmp_path / "mydogs"
    _small_dataset(data)
    # Give dup.png a later mtime so orig.png is the one kept.
    st = (data / "beagle" / "orig.png").stat()
    os.utime(data / "pug" / "dup.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    before = _snapshot(data)

    code, _, err = run(capsys, "data", "scan", "--workspace", str(ws), "--data", str(data), "--min-aspect", "2")
    assert code == 2 and "min_aspect" in err
    code, out, _ = run(capsys, "data", "scan", "--workspace", str(ws), "--data", str(data), "--json")
    assert code == 0
    rep = json.loads(out)
    got = {(f["path"], f["reason"]) for f in rep["flags"]}
    assert got == {("pug/dup.png", "duplicate"), ("pug/tiny.png", "too_small"), ("beagle/broken.jpg", "not_an_image")}
    assert len(list((ws / "reports").glob("scan-mydogs-*.json"))) == 1
    code, out, _ = run(capsys, "data", "scan", "--workspace", str(ws), "--data", str(data), "--list", "-1")
    assert code == 0 and "0 decoded, 10 unchanged" in out and "pug/dup.png" in out

    code, out, _ = run(capsys, "data", "stats", "--workspace", str(ws), "--data", str(data), "--json")
    flagged = {b["name"]: b["flagged"] for b in json.loads(out)["breeds"]}
    assert flagged == {"beagle": {"not_an_image": 1}, "pug": {"duplicate": 1, "too_small": 1}}

    code, out, _ = run(capsys, "data", "quarantine", "--workspace", str(ws), "--data", str(data), "--dry-run")
    assert code == 0 and "would move 3 of 3" in out and _snapshot(data) == before
    code, out, _ = run(capsys, "data", "quarantine", "--workspace", str(ws), "--data", str(data),
                       "--reason", "duplicate")
    assert code == 0 and "moved 1 of 1" in out
    assert (ws / "quarantine" / "pug" / "dup.png").exists() and not (data / "pug" / "dup.png").exists()
    code, out, err = run(capsys, "data", "quarantine", "--workspace", str(ws), "--data", str(data))
    # dup.png is already gone: reported on stderr, the rest still moves, exit status 1.
    assert code == 1 and "moved 2 of 3" in out and "dup.png: no longer in the dataset" in err
    code, out, _ = run(capsys, "data", "restore", "--workspace", str(ws))
    assert code == 0 and "3 files in quarantine" in out

    # The original path is taken again: restore refuses for that file, restores the rest.
    (data / "pug" / "tiny.png").write_bytes(b"new file")
    code, out, err = run(capsys, "data", "restore", "--workspace", str(ws), "--all")
    assert code == 1 and "restored 2 of 3" in out and "tiny.png" in err and "exists" in err
    assert (data / "pug" / "tiny.png").read_bytes() == b"new file"
    (data / "pug" / "tiny.png").unlink()
    code, out, _ = run(capsys, "data", "restore", "--workspace", str(ws), str(ws / "quarantine" / "pug" / "tiny.png"))
    assert code == 0 and "restored 1 of 1" in out
    assert _snapshot(data) == before
    code, out, _ = run(capsys, "data", "restore", "--workspace", str(ws))
    assert "quarantine is empty" in out


def test_quarantine_needs_a_scan_and_valid_reason(capsys, ws: Path, tmp_path: Path) -> None:
    data = tmp_path / "d"
    _small_dataset(data)
    code, _, err = run(capsys, "data", "quarantine", "--workspace", str(ws), "--data", str(data))
    assert code == 2 and "run `ddpm-tui data scan` first" in err
    with pytest.raises(SystemExit) as info:
        main(["data", "quarantine", "--workspace", str(ws), "--data", str(data), "--reason", "blurry"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    code, _, err = run(capsys, "data", "restore", "--workspace", str(ws), "--all", "x.jpg")
    assert code == 2 and "not both" in err


# ---------------------------------------------------------------------------- hostile names, symlinks, full disk

HOSTILE = ("\x1b]0;pwned\x07title.png", "clear\x1b[2J.png", "two\nlines.png")


def test_names_from_disk_are_printed_escaped(capsys, ws: Path, tmp_path: Path) -> None:
    """A file or breed name cannot retitle or clear the terminal, or forge an output line."""
    from core.data.demo import render

    data = tmp_path / "d"
    breed = data / "pug\x1b[31m"
    breed.mkdir(parents=True)
    render("ladybug", 0, size=96).save(breed / "orig.png")
    for name in HOSTILE:  # exact copies: each flagged as a duplicate of orig.png
        render("ladybug", 0, size=96).save(breed / name)
    st = (breed / "orig.png").stat()
    for name in HOSTILE:
        os.utime(breed / name, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    outputs = []
    for argv in (["scan", "--list", "-1"], ["stats"], ["quarantine"], ["restore"], ["restore", "--all"]):
        extra = [] if argv[0] == "restore" else ["--data", str(data)]
        code, out, err = run(capsys, "data", *argv, "--workspace", str(ws), *extra)
        assert code == 0, err
        outputs.append(out + err)
    text = "".join(outputs)
    for bad in ("\x1b", "\x07", "\x9b"):
        assert bad not in text
    assert "\\e]0;pwned\\x07title.png" in text and "clear\\e[2J.png" in text and "two\\nlines.png" in text
    assert not any(line.startswith("lines.png") for line in text.splitlines())  # no forged line
    assert "moved 3 of 3" in outputs[2] and "restored 3 of 3" in outputs[4]
    assert sorted(p.name for p in breed.iterdir()) == sorted(["orig.png", *HOSTILE])


def test_symlinked_breed_folder_is_not_a_class_and_quarantine_keeps_its_files(capsys, ws: Path, tmp_path: Path) -> None:
    """labrador -> labrador_retrievers_dog_pictures: no self-duplicates, nothing to move."""
    from core.data.demo import render

    data = tmp_path / "dogs"
    real = data / "labrador_retrievers_dog_pictures"
    real.mkdir(parents=True)
    for i in range(3):
        render("goldfish", i, size=96).save(real / f"{i}.jpg", quality=90)
    os.symlink(real.name, data / "labrador")
    before = _snapshot(real)
    code, out, _ = run(capsys, "data", "scan", "--workspace", str(ws), "--data", str(data), "--json")
    rep = json.loads(out)
    assert code == 0 and rep["total"] == 3 and rep["flags"] == []
    code, out, _ = run(capsys, "data", "stats", "--workspace", str(ws), "--data", str(data), "--json")
    assert [b["name"] for b in json.loads(out)["breeds"]] == ["labrador_retrievers_dog_pictures"]
    code, out, _ = run(capsys, "data", "quarantine", "--workspace", str(ws), "--data", str(data))
    assert code == 0 and "nothing flagged" in out
    assert _snapshot(real) == before and len(list((data / "labrador").iterdir())) == 3


def test_quarantine_refuses_a_kept_copy_that_is_the_same_file(capsys, ws: Path, tmp_path: Path) -> None:
    """A report written before symlinks were resolved (each file its own 'duplicate'):
    quarantine moves nothing, so both names keep the file."""
    from core.data.curation import Flag, ScanReport, ScanOptions, report_path_for

    data = tmp_path / "dogs"
    real = data / "labrador_retrievers_dog_pictures"
    real.mkdir(parents=True)
    Image.new("RGB", (80, 80), (200, 30, 30)).save(real / "0.jpg")
    os.symlink(real.name, data / "labrador")
    st = (real / "0.jpg").stat()
    rec = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "width": 80, "height": 80}
    flags = [Flag(data / "labrador" / "0.jpg", "labrador", "duplicate", 0.0, group="dup-1",
                  keep=real / "0.jpg", rel="labrador/0.jpg"),
             Flag(real / "0.jpg", real.name, "duplicate", 0.0, group="dup-1", keep=data / "labrador" / "0.jpg",
                  rel=f"{real.name}/0.jpg")]
    report = ScanReport(data.resolve(), "2026-01-01T00:00:00+00:00", ScanOptions(),
                        {"labrador/0.jpg": rec, f"{real.name}/0.jpg": rec}, flags, total=2)
    path = report_path_for(ws, data.resolve())
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(report.to_dict()))
    code, out, err = run(capsys, "data", "quarantine", "--workspace", str(ws), "--data", str(data))
    assert code == 1 and "moved 0 of 2" in out and err.count("same file") == 2
    assert (real / "0.jpg").exists()


def test_demo_on_a_full_disk_leaves_nothing_and_the_next_run_works(capsys, small_disk) -> None:
    ws = small_disk("256k")
    code, out, err = run(capsys, "data", "demo", "--workspace", str(ws), "--per-class", "300")
    assert code == 2 and err.count("\n") == 1 and "No space left on device" in err
    assert not (ws / "data" / "demo").exists()
    assert [p.name for p in (ws / "data").iterdir()] == []  # the partial temp folder is gone too
    code, out, err = run(capsys, "data", "demo", "--workspace", str(ws), "--per-class", "2")
    assert code == 0 and "wrote 10 images" in out, err
