"""Snapshot tests (pytest-textual-snapshot) of every screen in a fixed state.

The workspace is rebuilt at a fixed path with fixed content (generated images, a finished
run with fixed metrics and sample grid, a finished scrape's events) so nothing varies:
no clocks, pids or temporary paths appear; the system monitor is off; colours are fixed
to truecolor. Update with `pytest --snapshot-update` after an intended change.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from textual.widgets import DataTable, Select
from textual.worker import WorkerState

from ddpm_tui.app import StudioApp
from ddpm_tui.widgets.halfblock import HalfBlockImage
from ddpm_tui.widgets.lossplot import LossPlot
from ddpm_tui.workspace import Workspace
from studio_helpers import make_checkpoint_run, make_dataset, wait_for

SNAP_ROOT = Path(tempfile.gettempdir()) / f"ddpm-tui-snapshot-ws-{os.getuid()}"


@pytest.fixture(scope="module")
def fixed_workspace() -> Workspace:
    if SNAP_ROOT.exists():
        shutil.rmtree(SNAP_ROOT)  # our own scratch folder, rebuilt identically every run
    ws = Workspace(SNAP_ROOT).ensure()
    make_dataset(ws.dataset_dir(), {"beagle": 6, "corgi": 3, "pug": 2, "husky": 1}, size=16)
    run_dir = make_checkpoint_run(ws, "tiny-run", image_size=16, T=10)
    with open(run_dir / "metrics.jsonl", "w") as fh:
        for step in range(10, 410, 10):
            loss = 0.08 + 0.9 / (1 + step / 40)
            fh.write(json.dumps({"step": step, "epoch": round(step / 134, 3), "loss": round(loss, 4),
                                 "images_per_s": 50.0, "lr": 3e-4}) + "\n")
    rng = np.random.default_rng(1)
    grid = rng.integers(0, 256, (38, 38, 3), dtype=np.uint8)
    grid[::2] = (200, 120, 40)
    (run_dir / "samples").mkdir(exist_ok=True)
    Image.fromarray(grid).save(run_dir / "samples" / "ema_epoch_0003.png")
    scrape = ws.cache_dir / "scrape"
    scrape.mkdir(parents=True)
    events = scrape / "events-fixed.jsonl"
    lines = [
        {"type": "start", "breed": None, "message": "2 breeds on Google Images", "time": 0},
        {"type": "query_done", "breed": "beagles", "message": "40 URLs", "time": 1,
         "counts": {"found": 40, "downloaded": 31, "duplicate": 2, "failed": 3}},
        {"type": "query_done", "breed": "pugs", "message": "25 URLs", "time": 2,
         "counts": {"found": 25, "downloaded": 20, "duplicate": 0, "failed": 1}},
        {"type": "done", "breed": None, "message": "51 images stored", "time": 3},
    ]
    events.write_text("".join(json.dumps(e) + "\n" for e in lines))
    (scrape / "job.json").write_text(json.dumps({"pid": 0, "events": str(events), "log": str(scrape / "x.log"),
                                                 "started": 0, "breeds": ["beagles", "pugs"]}))
    return ws


def workers_idle(app) -> bool:
    return not any(w.state in (WorkerState.PENDING, WorkerState.RUNNING) for w in app.workers)


async def settle(pilot) -> None:
    """Wait until no background reader is working, then for the screen to repaint."""
    await wait_for(pilot, lambda: workers_idle(pilot.app), 30, "idle workers")
    await pilot.pause(0.3)
    await wait_for(pilot, lambda: workers_idle(pilot.app), 30, "idle workers")


def app_for(ws: Workspace, mode: str) -> StudioApp:
    return StudioApp(ws, start_mode=mode, sysmon=False, color_mode="truecolor")


def test_dataset_screen(snap_compare, fixed_workspace):
    async def ready(pilot):
        screen = pilot.app.screen
        table = screen.query_one("#breeds", DataTable)
        gallery = screen.query_one("#gallery", HalfBlockImage)
        await wait_for(pilot, lambda: table.row_count == 4 and gallery.image is not None, 30, "dataset")
        await settle(pilot)

    assert snap_compare(app_for(fixed_workspace, "dataset"), terminal_size=(80, 24), run_before=ready)


def test_dataset_screen_120(snap_compare, fixed_workspace):
    """120x40: the footer shows every key whole (it used to end in "4 Sa▏^p palettep")."""
    async def ready(pilot):
        gallery = pilot.app.screen.query_one("#gallery", HalfBlockImage)
        await wait_for(pilot, lambda: gallery.image is not None, 30, "gallery")
        await settle(pilot)

    assert snap_compare(app_for(fixed_workspace, "dataset"), terminal_size=(120, 40), run_before=ready)


def test_dataset_screen_large(snap_compare, fixed_workspace):
    async def ready(pilot):
        screen = pilot.app.screen
        gallery = screen.query_one("#gallery", HalfBlockImage)
        await wait_for(pilot, lambda: gallery.image is not None, 30, "gallery")
        await settle(pilot)

    assert snap_compare(app_for(fixed_workspace, "dataset"), terminal_size=(160, 50), run_before=ready)


def test_scrape_screen(snap_compare, fixed_workspace):
    async def ready(pilot):
        table = pilot.app.screen.query_one("#scrape-progress", DataTable)
        await wait_for(pilot, lambda: table.row_count == 2, 20, "scrape progress")
        await settle(pilot)

    assert snap_compare(app_for(fixed_workspace, "scrape"), terminal_size=(80, 24), run_before=ready)


def test_train_screen(snap_compare, fixed_workspace):
    async def ready(pilot):
        screen = pilot.app.screen
        plot = screen.query_one("#loss", LossPlot)
        samples = screen.query_one("#train-samples", HalfBlockImage)
        await wait_for(pilot, lambda: len(plot.steps) == 40 and samples.image is not None, 20, "run view")
        await settle(pilot)

    assert snap_compare(app_for(fixed_workspace, "train"), terminal_size=(100, 30), run_before=ready)


def test_sample_screen(snap_compare, fixed_workspace):
    async def ready(pilot):
        ckpt = pilot.app.screen.query_one("#checkpoint", Select)
        await wait_for(pilot, lambda: ckpt.value != Select.BLANK, 20, "checkpoint choice")
        pilot.app.set_focus(None)
        await settle(pilot)

    assert snap_compare(app_for(fixed_workspace, "sample"), terminal_size=(80, 24), run_before=ready)


def test_help_screen(snap_compare, fixed_workspace):
    async def ready(pilot):
        await pilot.press("f1")
        await settle(pilot)

    assert snap_compare(app_for(fixed_workspace, "dataset"), terminal_size=(80, 24), run_before=ready)
