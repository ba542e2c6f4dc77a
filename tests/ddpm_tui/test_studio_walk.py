"""Issue 24's studio rows: a hung draw is ended with a countdown (real SIGSTOP), the new-run
form, the Sample screen's breeds, zoom and help, the Train screen's first-samples note and
the Dataset screen's scan result. Pilot tests on temporary workspaces."""

from __future__ import annotations

import os
import signal
import time

import pytest
from textual.widgets import Input, Select, Static

from ddpm_tui.app import StudioApp
from ddpm_tui.jobs import pid_alive
from studio_helpers import make_checkpoint_run, run_async, wait_for


def make_app(workspace, **kw) -> StudioApp:
    kw.setdefault("sysmon", False)
    kw.setdefault("color_mode", "truecolor")
    return StudioApp(workspace, **kw)


def text_of(widget: Static) -> str:
    return str(widget.render())


async def start_hung_draw(app, pilot) -> int:
    """Start a long draw, wait for its first preview, SIGSTOP the sampling process: its pid."""
    screen = app.screen
    await wait_for(pilot, lambda: screen.query_one("#checkpoint", Select).value != Select.BLANK, 20,
                   "the checkpoint choice")
    screen.query_one("#sampler", Select).value = "ddpm"
    screen.query_one("#count", Input).value = "4"
    app.set_focus(None)
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
def test_quitting_during_a_hung_draw_is_quick(workspace):
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
        assert took < 8, f"quitting took {took:.0f} s"
        deadline = time.monotonic() + 10
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
            await wait_for(pilot, lambda: screen.query_one("#checkpoint", Select).value != Select.BLANK, 20,
                           "the checkpoint choice")
            screen.query_one("#steps", Input).value = "2"
            screen.query_one("#count", Input).value = "2"
            app.set_focus(None)
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
