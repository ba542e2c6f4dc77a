"""Names the studio shows come from the disk and from other programs: breed folders, image
files, run folders, the trainer's status messages. A name with terminal escape sequences,
BEL or newlines must reach the screen as text, never as a control character the terminal
would act on. Checked on what Textual rendered (the compositor's strips, segment by
segment), not on the source."""

from __future__ import annotations

import json
import os
import re

import pytest
from textual.widgets import DataTable

from ddpm_tui.app import StudioApp
from ddpm_tui.modes import SCREENS
from studio_helpers import make_checkpoint_run, make_dataset, run_async, wait_for

# CSI colour + OSC window title ended by BEL + newline + BEL + a backspace: what a hostile
# name holds. File names stop at 255 bytes; the 300-character ones are in status.json.
EVIL = "\x1b[31mred\x1b]0;pwned\x07\nline2\x07\x08"
MARK = "zq"  # a visible stretch to find the name by on screen
BREED = f"{MARK}breed{EVIL}" + "b" * 200
RUN = f"{MARK}run{EVIL}" + "r" * 200
MESSAGE = f"{MARK}msg{EVIL}" + "m" * (300 - len(EVIL) - 5)
CONTROL = re.compile(r"[\x00-\x1f\x7f\x80-\x9f]")  # C0 (ESC, BEL, LF, BS...), DEL and C1 (CSI)


def hostile_workspace(workspace) -> None:
    data = workspace.dataset_dir()
    make_dataset(data, {"beagle": 3, "pug": 2})
    os.rename(data / "beagle", data / BREED)
    for i, png in enumerate(sorted((data / BREED).glob("*.png"))):
        os.rename(png, data / BREED / f"{i}{EVIL}{'f' * 200}.png")
    run = make_checkpoint_run(workspace, "plain", conditional=True, state="failed")
    for name in ("config.json", "status.json"):  # breed and message text from other programs
        doc = json.loads((run / name).read_text())
        doc.update({"classes": [BREED, "pug"], "message": MESSAGE, "error": MESSAGE, "run": RUN})
        (run / name).write_text(json.dumps(doc))
    os.rename(run, workspace.run_dir(RUN))


def rendered(app) -> list[str]:
    """Every line the screen would send to the terminal, as the segments' text."""
    return ["".join(segment.text for segment in strip) for strip in app.screen._compositor.render_strips()]


def control_characters(lines: list[str]) -> list[tuple[int, str]]:
    return [(row, repr(line)) for row, line in enumerate(lines) if CONTROL.search(line)]


@pytest.mark.parametrize("mode", [m.name for m in SCREENS])
def test_hostile_names_reach_the_screen_as_text(workspace, mode: str):
    hostile_workspace(workspace)

    async def go():
        app = StudioApp(workspace, sysmon=False, color_mode="truecolor", start_mode=mode)
        async with app.run_test(size=(160, 50)) as pilot:
            await pilot.pause(0.5)
            tables = list(app.screen.query(DataTable))
            for table in tables:  # select each list's rows in turn: the detail panes show the names too
                await wait_for(pilot, lambda: table.row_count > 0 or mode in ("scrape", "sample"), 20, "rows")
                for row in range(table.row_count):
                    table.move_cursor(row=row)
                    await pilot.pause(0.3)
                    bad = control_characters(rendered(app))
                    assert not bad, (mode, row, bad[:3])
            await pilot.pause(0.5)
            lines = rendered(app)
            assert not control_characters(lines), (mode, control_characters(lines)[:3])
            return "\n".join(lines)

    screen_text = run_async(go())
    if mode in ("dataset", "train", "sample"):  # the names are on these screens, as text
        assert MARK in screen_text, screen_text[:3000]


@pytest.mark.parametrize("columns", ["80", "160"])
def test_runs_prints_hostile_run_names_and_messages_as_text(workspace, columns, monkeypatch, capsys):
    """`ddpm-tui runs` puts the run name and the trainer's message in the table (wide) or
    under it (narrow): either way as text, escapes and all."""
    from ddpm_tui.cli import main

    hostile_workspace(workspace)
    monkeypatch.setenv("COLUMNS", columns)
    assert main(["--workspace", str(workspace.root), "runs"]) == 0
    out = capsys.readouterr().out
    assert f"{MARK}run" in out and f"{MARK}msg" in out
    assert "\x1b" not in out and "\x07" not in out and "\x08" not in out
