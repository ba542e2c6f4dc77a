"""Issue 24's studio rows: a hung draw is ended with a countdown (real SIGSTOP), the new-run
form, the Sample screen's breeds, zoom and help, the Train screen's first-samples note and
the Dataset screen's scan result. Pilot tests on temporary workspaces."""

from __future__ import annotations

import os
import signal
import time

import pytest
from textual.widgets import Static

from ddpm_tui.jobs import pid_alive
from studio_helpers import fill_sample_form, make_app, make_checkpoint_run, run_async, text_of, wait_for


async def start_hung_draw(app, pilot) -> int:
    """Start a long draw, wait for its first preview, SIGSTOP the sampling process: its pid."""
    screen = app.screen
    await fill_sample_form(app, pilot, sampler="ddpm", count="4")
    await pilot.press("ctrl+r")
    status = screen.query_one("#sample-status", Static)
    await wait_for(pilot, lambda: text_of(status).startswith("step "), 120, "the first preview")
    pid = screen._drawer.pid
    os.kill(pid, signal.SIGSTOP)
    return pid


@pytest.mark.slow
def test_cancelling_a_hung_draw_counts_down_then_ends_it(workspace):
    make_checkpoint_run(workspace, "long-run", image_size=16, T=1000)

    async def go():
        app = make_app(workspace, start_mode="sample")
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            pid = await start_hung_draw(app, pilot)
            try:
                await pilot.press("ctrl+x")
                status = screen.query_one("#sample-status", Static)
                await wait_for(pilot, lambda: "terminating it in" in text_of(status), 10, "the countdown")
                await wait_for(pilot, lambda: text_of(status) == "cancelled", 20, "the end of the draw")
                await wait_for(pilot, lambda: not pid_alive(pid), 10, "the hung process to end")
            finally:
                if pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)

    run_async(go())


@pytest.mark.slow
def test_quitting_during_a_hung_draw_is_quick(workspace, monkeypatch):
    """Quitting ends a hung sampling process at once: not after the cancel's grace, not after
    the quit's join timeout. Both are made 100 s here, so a quit that waited for either would
    take that long; the bound below only says how long the test waits."""
    from ddpm_tui import draw_worker

    monkeypatch.setattr(draw_worker, "CANCEL_GRACE", 100.0)
    monkeypatch.setattr(draw_worker, "JOIN_TIMEOUT", 100.0)
    make_checkpoint_run(workspace, "long-run", image_size=16, T=1000)
    box = {}

    async def go():
        app = make_app(workspace, start_mode="sample")
        async with app.run_test(size=(100, 30)) as pilot:
            box["pid"] = await start_hung_draw(app, pilot)
            box["quit"] = time.monotonic()
            app.exit()

    try:
        run_async(go())  # asyncio.run returns once the worker threads are done (a real quit waits too)
        took = time.monotonic() - box["quit"]
        assert took < 60, f"quitting took {took:.0f} s: it waited for a grace period"
        deadline = time.monotonic() + 30
        while pid_alive(box["pid"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pid_alive(box["pid"])
    finally:
        if "pid" in box and pid_alive(box["pid"]):
            os.kill(box["pid"], signal.SIGKILL)


def test_sample_screen_zooms_the_images(workspace):
    from ddpm_tui.screens.zoom import ZoomScreen
    from ddpm_tui.widgets.halfblock import HalfBlockImage

    make_checkpoint_run(workspace, "tiny-run", image_size=16, T=10)

    async def go():
        app = make_app(workspace, start_mode="sample")
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            await fill_sample_form(app, pilot, steps="2", count="2")
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: screen._result is not None, 120, "the samples")
            await pilot.press("z")
            await pilot.pause()
            assert isinstance(app.screen, ZoomScreen)
            shown = screen.query_one("#sample-preview", HalfBlockImage).image
            assert (app.screen.query_one("#zoom-image", HalfBlockImage).image == shown).all()
            await pilot.press("escape")
            assert app.screen is screen

    run_async(go())


def test_train_grid_and_its_note_fit_at_120_columns(workspace):
    import numpy as np
    from PIL import Image
    from textual.widgets import Label

    from core.quality.eval_log import append_records

    run_dir = make_checkpoint_run(workspace, "tiny-run")
    (run_dir / "samples").mkdir(exist_ok=True)
    Image.fromarray(np.zeros((70, 172, 3), np.uint8)).save(run_dir / "samples" / "ema_epoch_0003.png")
    append_records(run_dir, [{"step": s, "metric": "fid", "value": v, "sampler": "ddim", "steps": 10, "n": 50,
                              "features": "dataset", "time": 0.0} for s, v in ((100, 80.0), (200, 40.0))])

    async def go():
        app = make_app(workspace, start_mode="train", color_mode="256")
        async with app.run_test(size=(120, 30)) as pilot:
            from ddpm_tui.widgets.halfblock import HalfBlockImage

            grid = app.screen.query_one("#train-samples", HalfBlockImage)
            await wait_for(pilot, lambda: grid.image is not None, 20, "the sample grid")
            await pilot.pause()
            note = app.screen.query_one("#train-samples-box .color-note", Label)
            assert note.content_region.width >= len(str(note.render()))  # "256 colours · ^p Image colours"
            assert grid.region.right <= 120 and grid.size.width >= 30

    run_async(go())


async def open_new_run_form(app, pilot):
    from ddpm_tui.screens.newrun import NewRunScreen

    await pilot.pause()
    await pilot.press("n")
    await wait_for(pilot, lambda: isinstance(app.screen, NewRunScreen), 10, "the new-run form")
    return app.screen


def test_new_run_form_proposes_breed_labels_and_shows_the_box_state_without_colour(workspace):
    from textual.widgets import Checkbox

    from studio_helpers import make_dataset

    make_dataset(workspace.dataset_dir("dogs"))  # three breed folders

    async def go():
        app = make_app(workspace, start_mode="train", color_mode="256")
        async with app.run_test(size=(100, 40)) as pilot:
            form = await open_new_run_form(app, pilot)
            assert form.query_one("#conditional", Checkbox).value is True
            on, off = form.query_one("#conditional", Checkbox), form.query_one("#channels_last", Checkbox)
            assert off.value is False
            # the glyphs and words differ, whatever the colours
            assert on.render().plain != off.render().plain
            assert "✓" in on.render().plain and "✓" not in off.render().plain
            off.value = True
            await pilot.pause()
            assert "✓" in off.render().plain
            assert form.collect().options["conditional"] is True

    run_async(go())


def test_new_run_form_one_breed_stays_unconditional(workspace):
    from textual.widgets import Checkbox

    from studio_helpers import make_dataset

    make_dataset(workspace.dataset_dir("dogs"), {"pug": 3})

    async def go():
        app = make_app(workspace, start_mode="train")
        async with app.run_test(size=(100, 40)) as pilot:
            form = await open_new_run_form(app, pilot)
            assert form.query_one("#conditional", Checkbox).value is False

    run_async(go())


def test_new_run_form_explains_every_field_and_labels_fit(workspace):
    from core.training import options

    async def go():
        app = make_app(workspace, start_mode="train")
        async with app.run_test(size=(80, 24)) as pilot:
            form = await open_new_run_form(app, pilot)
            for option in options.form_options():
                widget = form.query_one(f"#{option.name}")
                assert widget.tooltip and option.help in str(widget.tooltip), option.name
            help_line = form.query_one("#newrun-help", Static)
            form.query_one("#zero_terminal_snr").focus()
            await pilot.pause()
            assert "x_T is pure noise" in text_of(help_line)
            form.query_one("#preset").focus()
            await pilot.pause()
            assert options.BY_NAME["preset"].help in " ".join(text_of(help_line).split())
            for label in form.query("#newrun-grid > Label"):
                text = str(label.render())
                assert label.content_region.width >= len(text), text  # whole, not cut

    run_async(go())


def test_empty_samples_panel_says_when_the_first_grid_comes(workspace):
    from textual.widgets import Label

    from core.training.runs import write_config, write_status

    run_dir = workspace.run_dir("young")
    write_config(run_dir, {"preset": "tiny", "image_size": 16, "epochs": 20, "batch_size": 4, "save_frequency": 5,
                           "samples": 10})
    write_status(run_dir, state="stopped", pid=0, host="test", step=30, epoch=3, total_steps=200, epochs=20)

    async def go():
        app = make_app(workspace, start_mode="train")
        async with app.run_test(size=(120, 30)) as pilot:
            label = app.screen.query_one("#samples-label", Label)
            await wait_for(pilot, lambda: "first samples" in str(label.render()), 20, "the note")
            assert str(label.render()) == "first samples at step 50"  # save_frequency 5 x 200/20 steps
            assert label.content_region.width >= len(str(label.render()))

    run_async(go())


@pytest.mark.slow
def test_dataset_scan_result_stays_and_flagged_counts_show(workspace):
    from textual.widgets import DataTable

    from studio_helpers import make_dataset

    data = workspace.dataset_dir()
    make_dataset(data, {"beagle": 2, "pug": 2}, size=64)  # 64 px: not too small; noise: not low-information
    (data / "pug" / "broken.jpg").write_bytes(b"")  # flagged "empty"

    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            table = screen.query_one("#breeds", DataTable)
            await wait_for(pilot, lambda: table.row_count == 2 and not screen._busy, 30, "counts")
            assert table.get_cell("beagle", "flagged") == "–"  # not checked yet
            await pilot.press("c")
            await wait_for(pilot, lambda: not screen._busy and "flagged" in text_of(screen.query_one("#dataset-summary")),
                           60, "the scan")
            assert table.get_cell("beagle", "flagged") == "0" and "empty 1" in table.get_cell("pug", "flagged")
            last = screen.query_one("#dataset-last", Static)
            assert text_of(last).startswith("scan done:")
            await pilot.press("r")  # a recount (and any time passing) keeps the last result
            await wait_for(pilot, lambda: not screen._busy, 30, "the recount")
            assert text_of(last).startswith("scan done:")

    run_async(go())


def test_no_flip_help_says_what_the_flag_does():
    from core.training.options import BY_NAME, help_text

    option = BY_NAME["flip"]
    assert option.cli_flags == ("--no-flip",)
    assert "--no-flip trains without them" in help_text(option)
