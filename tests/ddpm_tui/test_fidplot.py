"""The Train screen's FID plot fills from eval.jsonl as evaluations are appended, and the
runs table shows each run's best FID and its step."""

from __future__ import annotations

from textual.widgets import DataTable

from core.quality.eval_log import append_records, eval_path
from ddpm_tui.app import StudioApp
from ddpm_tui.widgets.fidplot import FidPlot
from studio_helpers import make_checkpoint_run, run_async, wait_for


def _fid(step: int, value: float) -> dict:
    return {"step": step, "metric": "fid", "value": value, "sampler": "ddim", "steps": 10, "n": 50,
            "features": "dataset", "time": 0.0}


def test_fid_plot_fills_from_eval_jsonl(workspace):
    run_dir = make_checkpoint_run(workspace, "tiny-run")

    async def go():
        app = StudioApp(workspace, sysmon=False, color_mode="truecolor", start_mode="train")
        async with app.run_test(size=(120, 32)) as pilot:
            plot = app.screen.query_one("#fid", FidPlot)
            table = app.screen.query_one("#runs", DataTable)
            await wait_for(pilot, lambda: table.row_count == 1, 20, "the run row")
            assert plot.series == [] and not plot.display  # never evaluated: no empty plot

            append_records(run_dir, [_fid(100, 80.0), {**_fid(100, 0.5), "metric": "kid"}])
            await wait_for(pilot, lambda: plot.series == [(100, 80.0)], 20, "the first FID point")
            assert plot.display

            with open(eval_path(run_dir), "ab") as fh:
                fh.write(b'{"step": 150, "metric": "fid", "val')  # half-written: not shown
            append_records(run_dir, [_fid(200, 40.0)])
            append_records(run_dir, [_fid(300, 55.0)])
            await wait_for(pilot, lambda: plot.series == [(100, 80.0), (200, 40.0), (300, 55.0)], 20,
                           "the later FID points")
            await wait_for(pilot, lambda: str(table.get_row("tiny-run")[3]) == "40@200", 20, "the best FID cell")
            await pilot.press("ctrl+q")

    run_async(go())
