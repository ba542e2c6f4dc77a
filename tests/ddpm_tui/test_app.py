"""Functional tests of the studio with App.run_test() and Pilot on temporary workspaces:
keyboard navigation, the Dataset counts, a real tiny training subprocess started, watched,
left running on quit, re-attached by a second studio and stopped, and sampling to PNGs."""

from __future__ import annotations

import json
import os
import signal
import socket

import numpy as np
import pytest
from textual.widgets import DataTable, Input, Select, Static

from ddpm_tui.app import StudioApp
from ddpm_tui.jobs import pid_alive
from ddpm_tui.screens.confirm import QuitScreen
from ddpm_tui.screens.dataset import DatasetScreen
from ddpm_tui.screens.help import HelpScreen
from ddpm_tui.screens.newrun import NewRunScreen
from ddpm_tui.screens.sample import SampleScreen
from ddpm_tui.screens.scrape import ScrapeScreen
from ddpm_tui.screens.train import TrainScreen
from ddpm_tui.widgets.halfblock import HalfBlockImage
from ddpm_tui.widgets.lossplot import LossPlot
from studio_helpers import BREEDS, fill_sample_form, make_app, make_checkpoint_run, make_dataset, run_async, text_of, wait_for


# -- navigation -------------------------------------------------------------------------------


@pytest.mark.slow
def test_navigate_every_screen_by_keyboard(workspace):
    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            assert isinstance(app.screen, DatasetScreen)
            for key, screen in (("2", ScrapeScreen), ("3", TrainScreen), ("4", SampleScreen),
                                ("1", DatasetScreen), ("t", TrainScreen), ("g", SampleScreen),
                                ("s", ScrapeScreen), ("d", DatasetScreen)):
                app.set_focus(None)  # letters are typed into focused fields; digits are not
                await pilot.press(key)
                await pilot.pause()
                assert isinstance(app.screen, screen), key
            await pilot.press("f1")
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("1")  # a modal keeps the keys: no switching under it
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
            assert isinstance(app.screen, DatasetScreen)
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
            # screens keep their state between switches (modes, not new screens)
            await pilot.press("3")
            train = app.screen
            await pilot.press("1", "3")
            assert app.screen is train
            # the command palette offers the screens, colour depth and this screen's actions
            titles = [c.title for c in app.get_system_commands(app.screen)]
            assert {"Go to Sample", "Image colours: 256", "Train: New run", "Train: Log scale"} <= set(titles)
            await pilot.press("ctrl+q")  # nothing running: quits at once
        assert app.return_code == 0

    run_async(go())


def test_colour_mode_switch_redraws_images_in_256_colours(workspace):
    async def go():
        app = make_app(workspace, start_mode="sample")
        async with app.run_test(size=(80, 24)) as pilot:
            preview = app.screen.query_one("#sample-preview", HalfBlockImage)
            preview.set_image(np.full((8, 8, 3), (255, 0, 0), dtype=np.uint8))
            await pilot.pause()
            blocks = [seg for seg in preview.render_line(5) if seg.text.startswith("\u2580")]
            assert blocks and {tuple(seg.style.color.triplet) for seg in blocks} == {(255, 0, 0)}  # truecolor
            app.set_color_mode("256")
            await pilot.pause()
            colors = {seg.style.color.number for seg in preview.render_line(5) if seg.text.startswith("\u2580")}
            assert colors == {196}

    run_async(go())


def test_digits_type_into_fields_and_switch_after_escape(workspace):
    async def go():
        app = make_app(workspace, start_mode="sample")
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            seed = app.screen.query_one("#seed", Input)
            seed.focus()
            seed.value = ""
            await pilot.press("4", "2")
            assert seed.value == "42" and isinstance(app.screen, SampleScreen)
            await pilot.press("escape", "2")
            assert isinstance(app.screen, ScrapeScreen)

    run_async(go())


def test_keys_never_act_inside_a_form_field(workspace):
    """A focused drop-down or number field keeps the keys typed at it (no screen switch on
    the 1 of 10), and the Sample screen's actions have Ctrl keys that work from any field."""
    async def go():
        app = make_app(workspace, start_mode="sample")
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            screen = app.screen
            saved, toggled = [], []
            screen.action_save = lambda: saved.append(app.focused)
            screen.action_toggle_preview = lambda: toggled.append(app.focused)
            sampler = screen.query_one("#sampler", Select)
            sampler.focus()
            await pilot.press("1", "0", "s", "t", "q")
            assert app.screen is screen and app.focused is sampler and app.return_code is None
            await pilot.press("enter")  # open the drop-down: letters search it
            await pilot.press("2", "d")
            assert app.screen is screen
            await pilot.press("escape")
            steps = screen.query_one("#steps", Input)
            steps.focus()
            steps.value = ""
            await pilot.press("1", "0", "w", "p")
            assert app.screen is screen and steps.value == "10" and saved == [] and toggled == []
            await pilot.press("ctrl+s", "ctrl+t")
            assert saved == [steps] and toggled == [steps] and steps.value == "10"
            await pilot.press("escape", "1")
            assert isinstance(app.screen, DatasetScreen)

    run_async(go())


def _looks(widget) -> list:
    """What a widget and its children draw (text and styles), for comparing two states."""
    from textual.geometry import Region

    return [[list(strip) for strip in w.render_lines(Region(0, 0, *w.size))]
            for w in [widget, *widget.query("*")] if w.display and w.size.area]


@pytest.mark.slow
def test_focus_is_always_visible_and_lands_on_the_main_widget(workspace):
    make_dataset(workspace.dataset_dir())
    make_checkpoint_run(workspace, "tiny-run", image_size=16, T=10)

    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(120, 40)) as pilot:
            for key, main in (("1", "#breeds"), ("2", "#breed-list"), ("3", "#runs"), ("4", None)):
                app.set_focus(None)
                await pilot.press(key)
                screen = app.screen
                if main is None:  # a form: nothing focused, so 1-4 switch at once
                    await pilot.pause(0.3)
                    assert app.focused is None
                else:
                    await wait_for(pilot, lambda: app.focused is not None, 20, f"focus on screen {key}")
                    assert app.focused is screen.query_one(main), key
                chain = list(screen.focus_chain)
                for _ in chain:  # Tab visits every focusable widget; each shows that it has focus
                    await pilot.press("tab")
                    widget = app.focused
                    await pilot.pause()
                    focused = _looks(widget)
                    app.set_focus(None)
                    await pilot.pause()
                    assert _looks(widget) != focused, f"{widget!r} on screen {key} looks the same focused"
                    app.set_focus(widget)

    run_async(go())


def test_breed_table_takes_focus_when_data_arrives(workspace):
    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            table = screen.query_one("#breeds", DataTable)
            await wait_for(pilot, lambda: not screen._busy, 20, "the empty count")
            make_dataset(workspace.dataset_dir())  # photos arrive (a scrape, another tool)
            await pilot.press("r")
            await wait_for(pilot, lambda: table.row_count == len(BREEDS) and not screen._busy, 20, "the breeds")
            await pilot.pause()
            assert app.focused is table
            await pilot.press("down")
            assert table.cursor_row == 1

    run_async(go())


@pytest.mark.parametrize("size", [(80, 24), (120, 40), (160, 50)])
def test_footer_shows_every_key_whole(workspace, size):
    from textual.widgets import Footer
    from textual.widgets._footer import FooterKey

    make_dataset(workspace.dataset_dir())

    async def go():
        app = make_app(workspace)
        async with app.run_test(size=size) as pilot:
            for key in ("1", "2", "3", "4"):
                app.set_focus(None)
                await pilot.press(key)
                await pilot.pause(0.2)
                footer = app.screen.query_one(Footer)
                keys = list(footer.query(FooterKey))
                assert keys, key
                assert footer.virtual_size.width <= footer.size.width, (key, footer.virtual_size)
                for k in keys:  # none covered by another (the palette key used to be docked over them)
                    assert k.region.right <= size[0] and "-command-palette" not in k.classes

    run_async(go())


# -- dataset ----------------------------------------------------------------------------------


def test_empty_workspace_explains_next_step(workspace):
    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(80, 24)) as pilot:
            empty = app.screen.query_one("#dataset-empty", Static)
            await wait_for(pilot, lambda: "demo dataset" in text_of(empty), 20, "the empty-state text")
            assert "Scrape" in text_of(empty)

    run_async(go())


def test_dataset_screen_shows_counts(workspace):
    make_dataset(workspace.dataset_dir())

    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(100, 30)) as pilot:
            table = app.screen.query_one("#breeds", DataTable)
            await wait_for(pilot, lambda: table.row_count == len(BREEDS), 30, "the breed table")
            rows = {str(table.get_row_at(i)[0]): table.get_row_at(i) for i in range(table.row_count)}
            assert {b: int(r[1]) for b, r in rows.items()} == BREEDS
            assert "50.0%" in rows["beagle"][2]  # 5 of 10 images
            summary = text_of(app.screen.query_one("#dataset-summary", Static))
            assert "10 images in 3 breeds" in summary
            gallery = app.screen.query_one("#gallery", HalfBlockImage)
            await wait_for(pilot, lambda: gallery.image is not None, 30, "the gallery thumbnails")
            label = str(app.screen.query_one("#gallery-label").render())
            assert label.startswith("beagle: 5 images")
            # the gallery follows the selection
            await pilot.click("#breeds")
            table.move_cursor(row=2)
            await wait_for(pilot, lambda: str(app.screen.query_one("#gallery-label").render()).startswith("pug: 2"),
                           30, "the pug gallery")

    run_async(go())


@pytest.mark.slow
def test_dataset_scan_then_quarantine_asks_then_restore(workspace):
    data = workspace.dataset_dir()
    make_dataset(data)
    (data / "pug" / "broken.jpg").write_bytes(b"")  # a 0-byte file: flagged "empty"

    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            table = screen.query_one("#breeds", DataTable)
            await wait_for(pilot, lambda: table.row_count == 3 and not screen._busy, 30, "counts")
            await pilot.press("c")
            await wait_for(pilot, lambda: not screen._busy and "flagged" in text_of(screen.query_one("#dataset-summary")),
                           60, "the scan")
            await pilot.press("x")
            await wait_for(pilot, lambda: app.screen is not screen, 10, "the confirmation")
            await pilot.press("n")  # No: nothing moves
            assert (data / "pug" / "broken.jpg").exists()
            await pilot.press("x")
            await wait_for(pilot, lambda: app.screen is not screen, 10, "the confirmation")
            await pilot.press("y")
            await wait_for(pilot, lambda: not (data / "pug" / "broken.jpg").exists() and not screen._busy, 30,
                           "the quarantine move")
            assert any(p.name == "broken.jpg" for p in workspace.quarantine_dir.rglob("*"))
            await pilot.press("u")
            await wait_for(pilot, lambda: (data / "pug" / "broken.jpg").exists() and not screen._busy, 30,
                           "the restore")

    run_async(go())


# -- training: launch, watch, leave running on quit, re-attach, stop --------------------------


@pytest.mark.slow
def test_train_launch_watch_reattach_and_stop(workspace, monkeypatch):
    make_dataset(workspace.dataset_dir(), {"beagle": 8, "corgi": 8})
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the trainer inherits it: no thread thrash on a busy CI box
    run_dir = workspace.run_dir("t1")

    async def first_studio():
        app = make_app(workspace, start_mode="train", poll_interval=0.25)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            await pilot.press("n")
            await wait_for(pilot, lambda: isinstance(app.screen, NewRunScreen), 10, "the new-run form")
            form = app.screen
            # 2 steps an epoch, a metrics line per epoch; no sample grids (save_frequency high)
            values = {"name": "t1", "image_size": "16", "T": "20", "lr": "1e-3", "batch_size": "8",
                      "epochs": "10000", "save_frequency": "10000", "samples": "0"}
            for fid, value in values.items():
                form.query_one(f"#{fid}", Input).value = value
            form.query_one("#preset", Select).value = "tiny"
            form.query_one("#device", Select).value = "cpu"
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: isinstance(app.screen, TrainScreen), 10, "the form to close")
            screen = app.screen
            plot = screen.query_one("#loss", LossPlot)
            # metrics from the real subprocess reach the plot and the summary
            await wait_for(pilot, lambda: len(plot.steps) >= 1, 120, "loss points from the trainer")
            assert all(loss > 0 for loss in plot.losses)
            table = screen.query_one("#runs", DataTable)
            await wait_for(pilot, lambda: "running" in str(table.get_row("t1")[1]), 30, "the run row")
            summary = text_of(screen.query_one("#run-summary", Static))
            assert "t1" in summary and "img/s" in summary and "step" in summary
            pid = json.loads((run_dir / "status.json").read_text())["pid"]
            # quitting with a run going asks; "leave running" is the default button
            await pilot.press("q")
            await wait_for(pilot, lambda: isinstance(app.screen, QuitScreen), 10, "the quit question")
            assert app.screen.focused.id == "leave"
            await pilot.press("enter")
        return pid

    pid = run_async(first_studio())
    try:
        assert pid_alive(pid), "training must survive the studio quitting"

        async def second_studio():
            app = make_app(workspace, start_mode="train", poll_interval=0.25)
            async with app.run_test(size=(100, 30)) as pilot:
                screen = app.screen
                table = screen.query_one("#runs", DataTable)
                plot = screen.query_one("#loss", LossPlot)
                await wait_for(pilot, lambda: table.row_count == 1, 30, "the re-attached run")
                assert "running" in str(table.get_row("t1")[1])
                await wait_for(pilot, lambda: len(plot.steps) >= 1, 60, "metrics read back from metrics.jsonl")
                await pilot.press("x")
                await wait_for(pilot, lambda: (json.loads((run_dir / "status.json").read_text()).get("state")
                                               == "stopped"), 120, "status.json to say stopped")
                await wait_for(pilot, lambda: "stopped" in str(table.get_row("t1")[1]), 30, "the row to say stopped")

        run_async(second_studio())
        assert (run_dir / "checkpoints" / "last.pt").is_file()  # the trainer saved on SIGTERM
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_dead_process_shows_as_died(workspace):
    from core.training.runs import write_status

    run_dir = workspace.run_dir("ghost")
    # a pid far above pid_max: no such process on this host
    write_status(run_dir, state="running", pid=2 ** 30, host=socket.gethostname(), step=7)

    async def go():
        app = make_app(workspace, start_mode="train")
        async with app.run_test(size=(100, 30)) as pilot:
            table = app.screen.query_one("#runs", DataTable)
            await wait_for(pilot, lambda: table.row_count == 1, 20, "the run row")
            assert "died" in str(table.get_row("ghost")[1])
            await pilot.press("ctrl+q")  # a died run is no reason to ask
        assert app.return_code == 0

    run_async(go())


def test_train_figures_are_steady_and_say_when_settling(workspace):
    """Windows of ~300 img/s between stalls (a checkpoint, a sample grid): the screen shows
    the median, not the stall the last line happened to be, and says when it is settling."""
    from core.training.runs import write_status

    run_dir = make_checkpoint_run(workspace, "busy", state="running")
    # another host: the studio cannot see its process, so it counts as running
    write_status(run_dir, state="running", pid=1, host="elsewhere", step=300, epoch=1, total_steps=3000,
                 images_per_s=8.0, eta_s=9000.0, message="training")

    def window(i: int) -> dict:
        stall = i % 5 == 4
        return {"step": 10 * (i + 1), "epoch": 0.1 * i, "loss": 0.5, "images_per_s": 8.0 if stall else 300.0,
                "elapsed_s": 0}

    records, t = [], 0.0
    for i in range(30):
        rec = window(i)
        t += 37.5 if i % 5 == 4 else 1.0  # 10 steps a second, except the stalls
        rec["elapsed_s"] = t
        records.append(rec)
    metrics = run_dir / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records[:3]))

    async def go():
        app = make_app(workspace, start_mode="train", poll_interval=0.25)
        async with app.run_test(size=(120, 40)) as pilot:
            summary = app.screen.query_one("#run-summary", Static)
            await wait_for(pilot, lambda: "img/s" in text_of(summary), 20, "the first figures")
            assert "settling" in text_of(summary)
            with open(metrics, "a") as fh:
                fh.write("".join(json.dumps(r) + "\n" for r in records[3:]))
            await wait_for(pilot, lambda: "settling" not in text_of(summary), 20, "settled figures")
            text = text_of(summary)
            assert "300.0 img/s" in text and "ETA 4m30s" in text  # (3000 - 300) steps at 10 a second

    run_async(go())


def test_stopped_run_says_the_studio_key(workspace):
    from core.training.runs import write_status

    run_dir = make_checkpoint_run(workspace, "paused")
    write_status(run_dir, state="stopped", pid=0, host="test", step=12, epoch=3,
                 message="stop requested at step 12; start the same run again to continue")

    async def go():
        app = make_app(workspace, start_mode="train")
        async with app.run_test(size=(120, 40)) as pilot:
            summary = app.screen.query_one("#run-summary", Static)
            await wait_for(pilot, lambda: "stop requested" in text_of(summary), 20, "the stopped run")
            assert "e resumes" in text_of(summary) and "same run again" not in text_of(summary)

    run_async(go())


def test_zoom_shows_the_latest_grid_on_the_whole_terminal(workspace):
    from PIL import Image

    from ddpm_tui.screens.zoom import ZoomScreen

    run_dir = make_checkpoint_run(workspace, "tiny-run")
    grid = np.zeros((40, 60, 3), dtype=np.uint8)
    grid[:, 30:] = (255, 0, 0)  # right half red
    (run_dir / "samples").mkdir(exist_ok=True)
    Image.fromarray(grid).save(run_dir / "samples" / "ema_epoch_0003.png")

    async def go():
        app = make_app(workspace, start_mode="train")
        async with app.run_test(size=(120, 40)) as pilot:
            small = app.screen.query_one("#train-samples", HalfBlockImage)
            await wait_for(pilot, lambda: small.image is not None, 20, "the sample grid")
            await pilot.press("z")
            await pilot.pause()
            assert isinstance(app.screen, ZoomScreen)
            big = app.screen.query_one("#zoom-image", HalfBlockImage)
            assert big.size.width == 120 and big.size.height >= 38  # the whole terminal, less a title
            assert big.size.width * big.size.height > 4 * small.size.width * small.size.height
            assert big.image.shape == (40, 60, 3)
            await pilot.press("plus", "right", "right", "right", "right")
            assert big.image.shape == (20, 30, 3) and (big.image == (255, 0, 0)).all()  # zoomed into the red half
            await pilot.press("0")
            assert big.image.shape == (40, 60, 3)
            await pilot.press("escape")
            assert isinstance(app.screen, TrainScreen)

    run_async(go())


def test_zoom_shows_dataset_thumbnails_larger(workspace):
    from ddpm_tui.screens.dataset import THUMB
    from ddpm_tui.screens.zoom import ZoomScreen

    make_dataset(workspace.dataset_dir(), size=80)

    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(120, 40)) as pilot:
            gallery = app.screen.query_one("#gallery", HalfBlockImage)
            await wait_for(pilot, lambda: gallery.image is not None, 20, "the gallery")
            small = gallery.image.shape
            await pilot.press("z")
            await wait_for(pilot, lambda: isinstance(app.screen, ZoomScreen), 20, "the zoomed thumbnails")
            big = app.screen.query_one("#zoom-image", HalfBlockImage).image
            assert big.shape[1] >= 2 * small[1]  # the same page in 80-px thumbnails, not THUMB-px ones
            assert THUMB < 80

    run_async(go())


def test_truecolor_choice_reaches_the_terminal_and_is_remembered(workspace, monkeypatch):
    """tmux/SSH without COLORTERM: Rich detects 256 colours. Choosing truecolor must send
    24-bit colours (not only compute them), and the next studio in this workspace keeps it."""
    from textual.widgets import Label

    monkeypatch.delenv("COLORTERM", raising=False)
    monkeypatch.delenv("DDPM_TUI_COLORS", raising=False)
    monkeypatch.setenv("TERM", "screen-256color")

    async def go(app, choose):
        async with app.run_test(size=(80, 24)) as pilot:
            preview = app.screen.query_one("#sample-preview", HalfBlockImage)
            preview.set_image(np.full((8, 8, 3), (250, 10, 10), dtype=np.uint8))
            await pilot.pause()
            if choose:
                assert "256 colours" in str(app.screen.query_one(".color-note", Label).render())
                app.set_color_mode(choose)
                await pilot.pause()
            line = next(s for s in (preview.render_line(y) for y in range(preview.size.height))
                        if any(seg.text.startswith("\u2580") for seg in s))
            sent = line.render(app.console)
            note = str(app.screen.query_one(".color-note", Label).render())
            return sent, note

    first = StudioApp(workspace, start_mode="sample", sysmon=False)
    assert first.console.color_system == "256" and first.color_mode == "auto"
    sent, note = run_async(go(first, "truecolor"))
    assert "38;2;250;10;10" in sent and "truecolor" in note
    assert json.loads((workspace.root / "studio.json").read_text())["color_mode"] == "truecolor"
    second = StudioApp(workspace, start_mode="sample", sysmon=False)
    assert second.color_mode == "truecolor"
    sent, note = run_async(go(second, None))
    assert "38;2;250;10;10" in sent and "truecolor" in note


def test_save_offers_x4_copies(workspace):
    from types import SimpleNamespace

    from PIL import Image

    async def go():
        app = make_app(workspace, start_mode="sample")
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            images = np.zeros((2, 8, 8, 3), dtype=np.uint8)
            images[1] = 255
            screen._result = SimpleNamespace(images=images, job=SimpleNamespace(run_name="r", request=SimpleNamespace(seed=5)))
            screen.query_one("#seed", Input).focus()  # Ctrl keys work from a field
            await pilot.press("ctrl+s")
            assert "Ctrl+U" in text_of(screen.query_one("#sample-saved", Static))
            await pilot.press("ctrl+u")
            out = sorted((workspace.root / "samples" / "r").glob("*/x4/*.png"))
            assert [p.name for p in out] == ["000.png", "001.png", "grid.png"]
            assert Image.open(out[0]).size == (32, 32)
            assert len(list((workspace.root / "samples" / "r").iterdir())) == 1  # one save, not two

    run_async(go())


# -- sampling -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_sample_generates_from_checkpoint_and_saves_pngs(workspace):
    make_checkpoint_run(workspace, "tiny-run", image_size=16, T=10)

    async def go():
        app = make_app(workspace, start_mode="sample")
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            await fill_sample_form(app, pilot, steps="5", count="4", seed="3")
            await pilot.press("w")  # nothing yet: a warning, no files
            assert not (workspace.root / "samples").exists()
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: screen._result is not None, 120, "the samples")
            images = screen._result.images
            assert images.shape == (4, 16, 16, 3)
            preview = screen.query_one("#sample-preview", HalfBlockImage)
            assert preview.image is not None and preview.image.shape[0] > 16  # the grid, not one image
            await pilot.press("w")
            saved = text_of(screen.query_one("#sample-saved", Static))
            assert "saved 4 PNGs" in saved
            out = sorted((workspace.root / "samples" / "tiny-run").rglob("*.png"))
            assert [p.name for p in out] == ["000.png", "001.png", "002.png", "003.png", "grid.png"]
            assert str(out[0].parent) in saved.replace("\n", "")
            from PIL import Image

            with Image.open(out[0]) as im:
                assert im.size == (16, 16) and im.mode == "RGB"

    run_async(go())


def test_sample_ema_length_only_for_a_power_ema(workspace):
    """The EMA length field is open for the EMA weights of a power-EMA run, closed otherwise."""
    make_checkpoint_run(workspace, "exp-run", image_size=16, T=10)
    make_checkpoint_run(workspace, "power-run", image_size=16, T=10, ema_kind="power")

    async def go():
        app = make_app(workspace, start_mode="sample")
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            length = screen.query_one("#ema-length", Input)
            await fill_sample_form(app, pilot, run="power-run")
            await wait_for(pilot, lambda: not length.disabled, 20, "the EMA length field")
            screen.query_one("#weights", Select).value = "raw"
            await wait_for(pilot, lambda: length.disabled, 20, "the field to close for raw weights")
            screen.query_one("#weights", Select).value = "ema"
            await wait_for(pilot, lambda: not length.disabled, 20, "the field to reopen")
            screen.query_one("#run", Select).value = "exp-run"
            await wait_for(pilot, lambda: length.disabled, 20, "the field to close for an exp EMA")

    run_async(go())


@pytest.mark.slow
def test_sample_draws_with_a_chosen_ema_length(workspace):
    """A length typed on the form reaches the sampler (rebuilt from the run's snapshots) and the
    status line names it; one out of range is a one-line error, not a draw."""
    make_checkpoint_run(workspace, "power-run", image_size=16, T=10, ema_kind="power")

    async def go():
        app = make_app(workspace, start_mode="sample")
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            await fill_sample_form(app, pilot, steps="2", count="2")
            length = screen.query_one("#ema-length", Input)
            await wait_for(pilot, lambda: not length.disabled, 20, "the EMA length field")
            length.value = "0.07"
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: screen._result is not None, 120, "the samples")
            assert screen._result.job.request.ema_length == 0.07
            assert "power EMA sigma_rel 0.07 weights" in text_of(screen.query_one("#sample-status", Static))
            screen._result = None
            length.value = "5"
            await pilot.press("ctrl+r")
            status = screen.query_one("#sample-status", Static)
            await wait_for(pilot, lambda: "ema_length" in text_of(status), 20, "the error")
            assert "got 5.0" in text_of(status) and screen._result is None

    run_async(go())


def test_sample_conditional_run_offers_breeds(workspace):
    make_checkpoint_run(workspace, "cond-run", image_size=16, T=10, conditional=True)

    async def go():
        app = make_app(workspace, start_mode="sample")
        async with app.run_test(size=(100, 30)) as pilot:
            breed = app.screen.query_one("#breed", Select)
            await wait_for(pilot, lambda: not breed.disabled, 20, "the breed choice")
            labels = [str(opt[0]) for opt in breed._options]
            assert [lab for lab in labels if lab in BREEDS] == sorted(BREEDS)

    run_async(go())


@pytest.mark.slow
def test_demo_dataset_from_empty_workspace(workspace):
    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            await wait_for(pilot, lambda: "demo dataset" in text_of(screen.query_one("#dataset-empty")), 20, "empty")
            await pilot.press("m")
            table = screen.query_one("#breeds", DataTable)
            await wait_for(pilot, lambda: table.row_count > 0 and not screen._busy, 120, "the demo dataset")
            demo = workspace.dataset_dir("demo")
            on_disk = {d.name: len(list(d.iterdir())) for d in demo.iterdir()}
            shown = {str(table.get_row_at(i)[0]): int(table.get_row_at(i)[1]) for i in range(table.row_count)}
            assert shown == on_disk and sum(shown.values()) > 0
        # a new studio opens on the dataset that has images
        app2 = make_app(workspace)
        async with app2.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            assert app2.dataset_name == "demo"

    run_async(go())


# -- scraping: follow a running job's events, stop it ---------------------------------------


def test_scrape_screen_follows_events_and_stops_job(workspace):
    """A stand-in process plays the scraper (no browser, no network): the screen re-attaches
    through job.json, shows per-breed counts and the log from the events file as lines
    arrive, and Ctrl+X sends SIGTERM."""
    import subprocess
    import sys

    scrape = workspace.cache_dir / "scrape"
    scrape.mkdir(parents=True)
    events = scrape / "events-test.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    (scrape / "job.json").write_text(json.dumps({"pid": proc.pid, "events": str(events), "log": str(scrape / "l.log"),
                                                 "started": 0, "breeds": ["beagles", "pugs"]}))

    def emit(**ev):
        with open(events, "a") as fh:
            fh.write(json.dumps(ev) + "\n")

    async def go():
        app = make_app(workspace, start_mode="scrape", poll_interval=0.25)
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            table = screen.query_one("#scrape-progress", DataTable)
            status = screen.query_one("#scrape-status", Static)
            await wait_for(pilot, lambda: "running" in text_of(status), 20, "the running job")
            emit(type="query_done", breed="beagles", message="12 URLs", time=1,
                 counts={"found": 12, "downloaded": 0, "duplicate": 0, "failed": 0})
            await wait_for(pilot, lambda: table.row_count == 1, 20, "the first breed row")
            emit(type="download", breed="beagles", message="ok", state="downloaded", time=2,
                 counts={"found": 12, "downloaded": 5, "duplicate": 1, "failed": 2})
            with open(events, "a") as fh:  # a half-written line waits for its newline
                fh.write('{"type": "query_done", "breed": "pugs", "counts": {"found": 3')
            await wait_for(pilot, lambda: table.get_row("beagles")[2] == "5", 20, "updated counts")
            assert table.row_count == 1 and table.get_row("beagles")[1:] == ["12", "5", "1", "2"]
            with open(events, "a") as fh:
                fh.write(', "downloaded": 1}}\n')
            await wait_for(pilot, lambda: table.row_count == 2, 20, "the completed line")
            assert "beagles: 12 URLs" in log_text_of(screen)
            await pilot.press("ctrl+x")
            assert proc.wait(timeout=30) == -signal.SIGTERM
            await wait_for(pilot, lambda: "finished or stopped" in text_of(status), 20, "the stopped state")

    try:
        run_async(go())
    finally:
        if proc.poll() is None:
            proc.kill()


def log_text_of(screen) -> str:
    """The scrape log as one string, its wrapped rows joined back with single spaces."""
    return " ".join(" ".join(strip.text.split()) for strip in screen.query_one("#scrape-log").lines)


def test_scrape_screen_shows_an_offline_stop_whole(workspace):
    """An offline machine: the failed searches are counted, the stop line naming the host is
    in the status, and the log shows each long error whole (wrapped, not cut off)."""
    import subprocess
    import sys

    scrape = workspace.cache_dir / "scrape"
    scrape.mkdir(parents=True)
    events = scrape / "events-test.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    (scrape / "job.json").write_text(json.dumps({"pid": proc.pid, "events": str(events), "log": str(scrape / "l.log"),
                                                 "started": 0, "breeds": ["havanese", "pugs", "boxers"]}))
    why = "cannot reach www.google.com (ERR_NAME_NOT_RESOLVED): the name does not resolve: no network or no DNS"
    with open(events, "a") as fh:
        for breed in ("havanese", "pugs", "boxers"):
            fh.write(json.dumps({"type": "error", "kind": "unreachable", "breed": breed, "time": 1,
                                 "message": f"engine google: search for '{breed} dog pictures' failed: {why}",
                                 "counts": {"found": 0, "downloaded": 0, "duplicate": 0, "failed": 0}}) + "\n")
        fh.write(json.dumps({"type": "error", "kind": "offline", "breed": None, "time": 2,
                             "message": why + "; stopped searching after 3 searches failed in a row"}) + "\n")

    async def go():
        app = make_app(workspace, start_mode="scrape", poll_interval=0.25)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = app.screen
            status = screen.query_one("#scrape-status", Static)
            await wait_for(pilot, lambda: "3 searches failed" in text_of(status), 20, "the failed searches")
            assert "cannot reach www.google.com" in text_of(status) and "stopped searching" in text_of(status)
            await wait_for(pilot, lambda: "no network or no DNS" in log_text_of(screen), 20, "the whole log line")
            assert log_text_of(screen).count("ERR_NAME_NOT_RESOLVED") == 4

    try:
        run_async(go())
    finally:
        proc.kill()
        proc.wait()


def test_scrape_breed_list_add_and_remove(workspace):
    from textual.widgets import SelectionList

    async def go():
        app = make_app(workspace, start_mode="scrape")
        async with app.run_test(size=(100, 30)) as pilot:
            sl = app.screen.query_one("#breed-list", SelectionList)
            await pilot.pause()
            assert sl.option_count == 26 and len(sl.selected) == 26  # the original's defaults
            box = app.screen.query_one("#add-breed", Input)
            box.focus()
            box.value = "shiba inu"
            await pilot.press("enter")
            assert sl.option_count == 27 and "shiba inu" in sl.selected
            sl.focus()
            sl.highlighted = 26
            await pilot.press("minus")
            assert sl.option_count == 26 and "shiba inu" not in sl.selected

    run_async(go())


# -- small pieces: job helpers (system figures: test_sysmon.py) ---------------------------------


def test_train_command_is_what_a_user_would_type(workspace):
    from ddpm_tui.jobs import train_command

    cmd = train_command("r1", {"preset": "tiny", "image_size": 16, "batch_size": 4, "conditional": True,
                               "schedule": "", "device": None}, workspace)
    assert cmd[1:3] == ["-m", "ddpm_tui"]
    assert cmd[3:] == ["train", "--workspace", str(workspace.root), "--run", "r1", "--preset", "tiny",
                       "--image-size", "16", "--batch-size", "4", "--conditional", "--quiet"]
    # every flag the form can produce is one the trainer's parser accepts
    from ddpm_tui.cli import build_parser

    args = build_parser().parse_args(cmd[3:] + ["--T", "20", "--lr", "1e-3", "--epochs", "2",
                                                "--save-frequency", "1", "--samples", "4", "--schedule", "cosine",
                                                "--data", str(workspace.dataset_dir()), "--device", "cpu"])
    assert args.image_size == 16 and args.batch_size == 4 and args.T == 20 and args.save_frequency == 1


def test_scrape_command_is_accepted_by_the_scraper_parser(workspace, tmp_path):
    from ddpm_tui.cli import build_parser
    from ddpm_tui.jobs import JobError, scrape_args

    argv = scrape_args(workspace, ["beagles", "shiba inu"], "bing", 7, tmp_path / "ev.jsonl", dataset="dogs")
    args = build_parser().parse_args(argv)
    assert args.engine == "bing" and args.max_per_breed == 7 and args.breeds == "beagles,shiba inu"
    assert args.events == str(tmp_path / "ev.jsonl") and args.dataset == "dogs"
    with pytest.raises(JobError, match="comma"):
        scrape_args(workspace, ["a,b"], "bing", 7, tmp_path / "ev.jsonl")


def test_quit_can_stop_running_jobs(workspace):
    """Quit with a job running, choose "stop": the job gets SIGTERM and the studio exits."""
    import subprocess
    import sys

    scrape = workspace.cache_dir / "scrape"
    scrape.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    (scrape / "job.json").write_text(json.dumps({"pid": proc.pid, "events": str(scrape / "e.jsonl"),
                                                 "log": str(scrape / "l.log"), "started": 0, "breeds": ["pugs"]}))

    async def go():
        app = make_app(workspace)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            await pilot.press("ctrl+q")
            await wait_for(pilot, lambda: isinstance(app.screen, QuitScreen), 10, "the quit question")
            await pilot.press("escape")  # cancel: still running, still here
            assert not isinstance(app.screen, QuitScreen) and proc.poll() is None
            await pilot.press("ctrl+q")
            await wait_for(pilot, lambda: isinstance(app.screen, QuitScreen), 10, "the quit question")
            await pilot.press("s")
        assert app.return_code == 0

    try:
        run_async(go())
        assert proc.wait(timeout=30) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
