"""`ddpm-tui runs`: the training runs in the workspace, with state and whether each is alive."""

from __future__ import annotations

import argparse
import json
import time

from ddpm_tui.commands._common import add_command


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers, "runs", run,
        help="list training runs (state, step, last loss, alive)",
        description="List the runs in the workspace, newest first. State is running, stopped, finished, "
        "failed, or died (status said running but its process is gone).",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument("--tensorboard", action="store_true",
                   help="print the `tensorboard --logdir` line that shows every run trained with --tensorboard")


def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    s = max(0, int(time.time() - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def run(args: argparse.Namespace, workspace) -> int:
    if args.tensorboard:
        from core.training import tensorboard  # torch-free; the package itself is not imported

        print(tensorboard.logdir_command(workspace.runs_dir))
        if not tensorboard.available():
            print(f"(tensorboard is not installed here: {tensorboard.INSTALL})")
        return 0
    from core.quality.eval_log import best_fid, format_best_fid
    from core.training.runs import list_runs  # no torch needed

    infos = list_runs(workspace.runs_dir)
    best = {r.name: best_fid(r.path) for r in infos}
    if args.json:
        rows = [
            {
                "name": r.name, "path": str(r.path), "state": r.state, "step": r.step, "epoch": r.epoch,
                "last_loss": r.last_loss, "pid": r.pid, "alive": r.alive, "host": r.host,
                "updated_at": r.updated_at, "message": r.message, "preset": r.config.get("preset"),
                "best_fid": dict(zip(("value", "step", "features"), best[r.name])) if best[r.name] else None,
            }
            for r in infos
        ]
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich import box
    from rich.table import Table

    console = Console()
    if not infos:
        console.print(f"no runs in {workspace.runs_dir} (start one with `ddpm-tui train`)")
        return 0
    colours = {"running": "green", "finished": "cyan", "stopped": "yellow", "failed": "red", "died": "red"}
    wide = console.width >= 120  # room for the message column; otherwise messages go below
    # A light box: the full run names and states must fit in 80 columns (SSH, pipes).
    table = Table(title=f"runs in {workspace.runs_dir}", box=box.SIMPLE_HEAD, pad_edge=False)
    columns = ["run", "state", "preset", "step", "epoch", "last loss", "best FID", "alive", "age"] + (["message"] if wide else [])
    for col in columns:
        table.add_column(col, justify="right" if col in ("step", "epoch", "last loss") else "left",
                         no_wrap=col != "message", overflow="fold")
    notes = []
    for r in infos:
        alive = "-" if r.alive is None else ("yes" if r.alive else "no")
        if r.alive and r.pid and wide:
            alive = f"yes (pid {r.pid})"
        colour = colours.get(r.state, "white")
        row = [
            r.name, f"[{colour}]{r.state}[/]", str(r.config.get("preset") or "-"),
            "-" if r.step is None else str(r.step), "-" if r.epoch is None else str(r.epoch),
            "-" if r.last_loss is None else f"{r.last_loss:.4f}", format_best_fid(best[r.name]), alive, _ago(r.updated_at),
        ]
        table.add_row(*row, *([r.message] if wide else []))
        if not wide and r.message and r.state in ("failed", "died", "stopped", "running"):
            notes.append(f"[bold]{r.name}[/]: {r.message}")
    console.print(table)
    for note in notes:
        console.print(note, markup=True, highlight=False)
    return 0
