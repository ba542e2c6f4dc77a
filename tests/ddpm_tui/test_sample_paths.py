"""One sampling path: `ddpm-tui sample` and the Sample screen draw the same images and say
which weights they used; `sample --out` never loses a user's file (issue 12)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from textual.widgets import Input, Select, Static

from ddpm_tui.app import StudioApp
from ddpm_tui.cli import main
from studio_helpers import make_checkpoint_run, run_async, wait_for

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def cli(ws, *args: str) -> int:
    return main(["--workspace", str(ws.root), *args])


def _drop_ema(run_dir: Path) -> None:
    """Rewrite the run's checkpoint without EMA weights (as an imported or early checkpoint)."""
    from core.diffusion.checkpoint import load_checkpoint, save_checkpoint

    path = run_dir / "checkpoints" / "last.pt"
    c = load_checkpoint(path)
    save_checkpoint(path, model_config=c["model_config"], diffusion_config=c["diffusion_config"],
                    model_state=c["model"], ema_state=None, step=c["step"], epoch=c["epoch"], extra=c["extra"])


def _screen_sample(ws, sampler: str) -> tuple[list[Path], str]:
    """Generate 4 images (5 steps, seed 3) on the Sample screen and save them with `w`."""
    async def go():
        app = StudioApp(ws, start_mode="sample", sysmon=False, color_mode="truecolor")
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            await wait_for(pilot, lambda: screen.query_one("#checkpoint", Select).value != Select.BLANK, 20,
                           "the checkpoint choice")
            screen.query_one("#sampler", Select).value = sampler
            screen.query_one("#steps", Input).value = "5"
            screen.query_one("#count", Input).value = "4"
            screen.query_one("#seed", Input).value = "3"
            app.set_focus(None)
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: screen._result is not None, 120, "the samples")
            status = str(screen.query_one("#sample-status", Static).render())
            await pilot.press("w")
            await wait_for(pilot, lambda: "saved" in str(screen.query_one("#sample-saved", Static).render()), 20,
                           "the save")
            return sorted((ws.root / "samples" / "tiny-run").rglob("*.png")), status

    return run_async(go())


@pytest.mark.slow
@pytest.mark.parametrize("sampler,ema,conditional", [("ddim", True, False), ("dpmpp2m", False, False),
                                                     ("ddim", True, True)])
def test_screen_and_cli_write_identical_pngs_and_name_the_weights(workspace, capsys, sampler: str, ema: bool,
                                                                  conditional: bool):
    """Same seed and settings, same PNGs; on a conditional run the screen's breed "any" is the
    CLI without --breed (one breed after another)."""
    run_dir = make_checkpoint_run(workspace, "tiny-run", image_size=16, T=10, conditional=conditional)
    if not ema:
        _drop_ema(run_dir)
    screen_files, status = _screen_sample(workspace, sampler)
    assert [p.name for p in screen_files] == ["000.png", "001.png", "002.png", "003.png", "grid.png"]

    out = workspace.root / "cli" / "grid.png"
    assert cli(workspace, "sample", "tiny-run", "--sampler", sampler, "--steps", "5", "--n", "4", "--seed", "3",
               "--individual", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    cli_files = [out.with_name(f"grid_{i:03d}.png") for i in range(4)] + [out]
    for screen_png, cli_png in zip(screen_files, cli_files):
        assert screen_png.read_bytes() == cli_png.read_bytes(), (screen_png, cli_png)
    # both say which weights they used, in the same words
    note = "EMA weights" if ema else "raw (this checkpoint has no EMA weights) weights"
    assert note in printed and note in status, (printed, status)


def test_sample_out_never_overwrites_what_the_user_would_lose(workspace, capsys, tmp_path):
    run_dir = make_checkpoint_run(workspace, "tiny-run", image_size=16, T=10)
    ckpt = run_dir / "checkpoints" / "last.pt"
    before = ckpt.read_bytes()
    base = ["sample", "tiny-run", "--n", "2", "--steps", "2", "--seed", "0", "--quiet"]
    # a checkpoint or config: never, not even with --force
    for target in (ckpt, run_dir / "config.json"):
        for force in ([], ["--force"]):
            assert cli(workspace, *base, "--out", str(target), *force) == 2
            assert "nothing written" in capsys.readouterr().err
    assert ckpt.read_bytes() == before
    # a dataset image: never
    breed = workspace.data_dir / "dogs" / "pug"
    breed.mkdir(parents=True)
    photo = breed / "pug_001.png"
    Image.new("RGB", (8, 8), "red").save(photo)
    photo_bytes = photo.read_bytes()
    assert cli(workspace, *base, "--out", str(photo), "--force") == 2
    assert "dataset" in capsys.readouterr().err and photo.read_bytes() == photo_bytes
    # someone else's file: only with --force; our own earlier output: replaced freely
    mine = tmp_path / "notes.png"
    mine.write_text("my notes")
    assert cli(workspace, *base, "--out", str(mine)) == 2
    assert "use --force" in capsys.readouterr().err and mine.read_text() == "my notes"
    assert cli(workspace, *base, "--out", str(mine), "--force") == 0
    assert cli(workspace, *base, "--out", str(mine)) == 0  # now ddpm-tui's own image
    # --individual outputs are checked before anything is drawn
    other = tmp_path / "grid_001.png"
    other.write_bytes(b"precious")
    assert cli(workspace, *base, "--out", str(tmp_path / "grid.png"), "--individual") == 2
    capsys.readouterr()
    assert other.read_bytes() == b"precious" and not (tmp_path / "grid.png").exists()


def test_sample_bad_seed_is_one_line(workspace, capsys):
    make_checkpoint_run(workspace, "tiny-run", image_size=16, T=10)
    with pytest.raises(SystemExit) as exit_info:
        cli(workspace, "sample", "tiny-run", "--seed", "99999999999999999999")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--seed: '99999999999999999999' must be in [0, 9223372036854775807]" in err and "Traceback" not in err


def test_nan_weights_fail_clearly(workspace, capsys):
    from core.diffusion.checkpoint import load_checkpoint, save_checkpoint

    run_dir = make_checkpoint_run(workspace, "tiny-run", image_size=16, T=10)
    path = run_dir / "checkpoints" / "last.pt"
    c = load_checkpoint(path)
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in c["model"].items()}
    save_checkpoint(path, model_config=c["model_config"], diffusion_config=c["diffusion_config"],
                    model_state=state, ema_state=None, step=c["step"], epoch=c["epoch"], extra=c["extra"])
    assert cli(workspace, "sample", "tiny-run", "--n", "2", "--steps", "2", "--quiet") == 2
    err = capsys.readouterr().err
    assert "NaN" in err and err.strip().count("\n") == 0
    assert not list((run_dir / "samples").glob("*.png")) if (run_dir / "samples").exists() else True


def test_any_n_runs_in_batches(workspace, capsys, tmp_path):
    make_checkpoint_run(workspace, "tiny-run", image_size=16, T=10)
    out = tmp_path / "many.png"
    assert cli(workspace, "sample", "tiny-run", "--n", "7", "--batch-size", "3", "--steps", "2", "--seed", "5",
               "--quiet", "--individual", "--out", str(out)) == 0
    paths = capsys.readouterr().out.split()
    assert len(paths) == 8
    # the first batch is what a single batch of 3 gives
    assert cli(workspace, "sample", "tiny-run", "--n", "3", "--batch-size", "3", "--steps", "2", "--seed", "5",
               "--quiet", "--individual", "--out", str(tmp_path / "three.png")) == 0
    for i in range(3):
        assert (tmp_path / f"many_{i:03d}.png").read_bytes() == (tmp_path / f"three_{i:03d}.png").read_bytes()


def test_individual_on_a_full_disk_leaves_nothing_behind(workspace, capsys, small_disk):
    make_checkpoint_run(workspace, "tiny-run", image_size=16, T=10)
    disk = small_disk("64k")
    theirs = disk / "theirs_000.png"  # a user's file with a name of the set: never touched
    theirs.write_bytes(b"precious")
    before = sorted(p.name for p in disk.iterdir())
    assert cli(workspace, "sample", "tiny-run", "--n", "40", "--steps", "1", "--seed", "0", "--quiet",
               "--individual", "--force", "--out", str(disk / "theirs.png")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left" in err and "nothing written" in err, err
    assert sorted(p.name for p in disk.iterdir()) == before and theirs.read_bytes() == b"precious"


def test_sample_notes_what_it_ignores_and_bounds_n(workspace, capsys):
    make_checkpoint_run(workspace, "tiny-run", image_size=16, T=10)
    assert cli(workspace, "sample", "tiny-run", "--n", "2", "--steps", "2", "--quiet", "--sampler", "dpmpp2m",
               "--eta", "0.3", "--guidance", "5") == 0
    err = capsys.readouterr().err
    assert "note: eta 0.3 is ignored" in err and "note: guidance 5 is ignored" in err
    with pytest.raises(SystemExit):
        cli(workspace, "sample", "tiny-run", "--n", "1000000000000")
    assert "must be in [1, 50000]" in capsys.readouterr().err
