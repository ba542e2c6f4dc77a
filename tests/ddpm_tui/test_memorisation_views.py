"""The studio's memorisation views (issue #21): the Train screen plots the copy rate beside
FID and shows the overfitting warning; `n` on the Sample screen shows each drawn image next
to its nearest training image, with the distance and the copy verdict."""

from __future__ import annotations

import numpy as np
import pytest
from textual.widgets import DataTable, Select, Static

from core.quality.eval_log import append_records
from core.training.runs import read_config, write_config
from ddpm_tui.app import StudioApp
from ddpm_tui.widgets.fidplot import FidPlot
from studio_helpers import make_checkpoint_run, make_dataset, run_async, wait_for


def _record(step: int, metric: str, value: float) -> dict:
    return {"step": step, "metric": metric, "value": value, "sampler": "ddim", "steps": 10, "n": 50,
            "features": "dataset", "time": 0.0}


# FID stops falling after step 200 while the copy rate climbs from 5 % to 40 %: the warning
COPYING = {"fid": [80.0, 40.0, 41.0, 42.0], "copy_rate": [0.05, 0.05, 0.2, 0.4]}
# FID keeps falling, the copy rate stays low: no warning
HEALTHY = {"fid": [80.0, 60.0, 40.0, 30.0], "copy_rate": [0.05, 0.06, 0.05, 0.06]}


@pytest.mark.parametrize("case", ["copying", "healthy"])
def test_train_screen_plots_the_copy_rate_and_warns_of_overfitting(workspace, case):
    figures = COPYING if case == "copying" else HEALTHY
    run_dir = make_checkpoint_run(workspace, "tiny-run")
    steps = [100, 200, 300, 400]
    append_records(run_dir, [_record(s, metric, values[i]) for i, s in enumerate(steps)
                             for metric, values in figures.items()])

    async def go():
        app = StudioApp(workspace, sysmon=False, color_mode="truecolor", start_mode="train")
        async with app.run_test(size=(120, 32)) as pilot:
            plot = app.screen.query_one("#fid", FidPlot)
            await wait_for(pilot, lambda: app.screen.query_one("#runs", DataTable).row_count == 1, 20, "the run")
            await wait_for(pilot, lambda: len(plot.series) == 4, 20, "the FID points")
            assert plot.copy_series == list(zip(steps, figures["copy_rate"]))
            assert "├100.0" in str(plot.render())  # the copy rate's own axis (right, in %) is drawn
            await pilot.pause(0.2)
            line = app.screen.query_one("#overfit-warning", Static)
            text = str(line.render())
            if case == "copying":
                assert line.display and "copying?" in text and "rose to 40%" in text
                assert line.region.height > 0 and not line.region.overlaps(plot.region)  # seen, not over the plot
            else:
                assert not line.display and text == ""
            await pilot.press("ctrl+q")

    run_async(go())


def test_n_shows_each_sample_beside_its_nearest_training_image(workspace, tmp_path):
    from core.data.dataset import DataOptions, ImageFolderDataset
    from core.diffusion.sampling import SampleRequest
    from ddpm_tui.screens.nearest import NearestScreen
    from ddpm_tui.screens.sample import SampleJob, SampleResult

    data_dir = tmp_path / "dogs"
    make_dataset(data_dir)
    run_dir = make_checkpoint_run(workspace, "tiny-run", image_size=16)
    write_config(run_dir, {**read_config(run_dir), "data": str(data_dir)})
    train = ImageFolderDataset(data_dir, DataOptions(image_size=16, flip=False))
    rows = [7, 2]  # the "drawn" images: exact copies of these training images, then noise
    noise = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    images = np.stack([train.images[r].permute(1, 2, 0).numpy() for r in rows] + [noise])
    names = [train.samples[r][0].relative_to(data_dir).as_posix() for r in rows]

    async def go():
        app = StudioApp(workspace, sysmon=False, color_mode="truecolor", start_mode="sample")
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            await wait_for(pilot, lambda: screen.query_one("#checkpoint", Select).value != Select.BLANK, 20,
                           "the checkpoint choice")
            app.set_focus(None)
            await pilot.press("n")  # nothing drawn yet: a warning, no view
            assert not isinstance(app.screen, NearestScreen)
            job = SampleJob(run_dir / "checkpoints" / "last.pt", "tiny-run", {},
                            request=SampleRequest(n=3, sampler="ddim", steps=5, seed=0))
            screen._done(SampleResult(job, images, 0.1, "EMA", "cpu"))  # as a finished draw
            await pilot.press("n")
            view = app.screen
            assert isinstance(view, NearestScreen)
            info = view.query_one("#nearest-info", Static)
            await wait_for(pilot, lambda: view.match is not None, 60, "the nearest search")
            for i, row in enumerate(rows):
                text = str(info.render())
                assert f"sample {i + 1}/3 · nearest training image #{row} {names[i]} · distance 0.000" in text
                assert text.endswith("· copy")
                await pilot.press("right")
            assert str(info.render()).endswith("· not a copy")  # noise copies nothing
            await pilot.press("left")
            assert f"#{rows[1]} " in str(info.render())
            await pilot.press("escape")
            assert app.screen is screen
            await pilot.press("ctrl+q")

    run_async(go())
