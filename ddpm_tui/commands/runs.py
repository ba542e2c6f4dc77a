"""`ddpm-tui runs`: the training runs in the workspace, with state and whether each is alive."""

from __future__ import annotations

import argparse
import json
import time

from ddpm_tui.commands._common import add_command


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers, "runs", run,
        help="list training runs (state, step, last loss, best FID, quality trend, alive)",
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


COLOURS = {"running": "green", "finished": "cyan", "stopped": "yellow", "failed": "red", "died": "red"}
# Dropped in this order where the terminal is too narrow for every column: a figure or a state
# is never cut (a step of 1390 shown as "139" reads as another number).
LESS_IMPORTANT = ("check", "age", "alive", "preset", "epoch", "best FID", "trend")  # "check" also prints below
RUN_NAME_MIN = 12  # narrower than its name, the run column wraps the name (never cuts it)


def _table(rows: list[dict[str, str]], title: str, width: int):
    """The runs table: every column as wide as its widest cell, except the run name (wrapped)
    and the message (wrapped, wide terminals only); less important columns left out until it fits."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    columns = list(rows[0])
    fixed = {c: max(len(c), *(len(row[c]) for row in rows)) for c in columns if c not in ("run", "message")}

    def needed(cols: list[str]) -> int:  # SIMPLE_HEAD without edge padding: 3 between columns, 1 each side
        run = min(RUN_NAME_MIN, max(len(row["run"]) for row in rows))
        return sum(fixed.get(c, run if c == "run" else 20) for c in cols) + 3 * (len(cols) - 1) + 2

    for drop in LESS_IMPORTANT:
        if needed(columns) <= width:
            break
        columns.remove(drop)
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for col in columns:
        table.add_column(col, justify="right" if col in ("step", "epoch", "last loss") else "left",
                         no_wrap=col in fixed, min_width=fixed.get(col), overflow="fold")
    for row in rows:
        cells = [Text(row[c], style=COLOURS.get(row[c], "white")) if c == "state" else Text(row[c])
                 for c in columns]
        table.add_row(*cells)
    return table


def _print_tensorboard_line(workspace) -> int:
    from core.training import tensorboard  # torch-free; the package itself is not imported

    print(tensorboard.logdir_command(workspace.runs_dir))
    if not tensorboard.available():
        print(f"(tensorboard is not installed here: {tensorboard.INSTALL})")
    return 0


def _json_row(r, best, trend, warned) -> dict:
    return {
        "name": r.name, "path": str(r.path), "state": r.state, "step": r.step, "epoch": r.epoch,
        "last_loss": r.last_loss, "pid": r.pid, "alive": r.alive, "host": r.host,
        "updated_at": r.updated_at, "message": r.message, "preset": r.config.get("preset"),
        "best_fid": dict(zip(("value", "step", "features"), best)) if best else None,
        "trend": {"verdict": trend.verdict, "since_step": trend.since_step, "text": trend.text},
        "overfitting": warned.message if warned else None,
    }


def run(args: argparse.Namespace, workspace) -> int:
    if args.tensorboard:
        return _print_tensorboard_line(workspace)
    from core.io.safe_text import shown, shown_markup
    from core.quality.eval_log import best_fid_of, format_best_fid, read_eval
    from core.quality.overfitting import FLAG, overfitting_warning
    from core.quality.trend import trend
    from core.training.runs import list_runs  # no torch needed

    infos = list_runs(workspace.runs_dir)
    evals = {r.name: read_eval(r.path)[0] for r in infos}
    best = {r.name: best_fid_of(evals[r.name]) for r in infos}
    trends = {r.name: trend(evals[r.name]) for r in infos}  # "too few" for a run never evaluated
    warned = {r.name: overfitting_warning(evals[r.name]) for r in infos}
    if args.json:
        print(json.dumps([_json_row(r, best[r.name], trends[r.name], warned[r.name]) for r in infos], indent=2))
        return 0
    from rich.console import Console

    console = Console()
    if not infos:
        console.print(f"no runs in {workspace.runs_dir} (start one with `ddpm-tui train`)")
        return 0
    wide = console.width >= 120  # room for the message column; otherwise messages go below
    rows = []
    notes = []
    for r in infos:
        alive = "-" if r.alive is None else ("yes" if r.alive else "no")
        if r.alive and r.pid and wide:
            alive = f"yes (pid {r.pid})"
        rows.append({
            "run": shown(r.name), "state": r.state, "preset": str(r.config.get("preset") or "-"),
            "step": "-" if r.step is None else str(r.step), "epoch": "-" if r.epoch is None else str(r.epoch),
            "last loss": "-" if r.last_loss is None else f"{r.last_loss:.4f}",
            "best FID": format_best_fid(best[r.name]),
            "trend": trends[r.name].short if trends[r.name].points else "–", "check": FLAG if warned[r.name] else "-",
            "alive": alive, "age": _ago(r.updated_at),
            **({"message": shown(r.message or "")} if wide else {}),
        })
        if not wide and r.message and r.state in ("failed", "died", "stopped", "running"):
            notes.append(f"[bold]{shown_markup(r.name)}[/]: {shown_markup(r.message)}")
        if warned[r.name]:  # the flag's meaning and what to do, whatever the width
            notes.append(f"[bold]{shown_markup(r.name)}[/]: {shown_markup(warned[r.name].message)}")
    console.print(_table(rows, f"runs in {workspace.runs_dir}", console.width))
    for note in notes:
        console.print(note, markup=True, highlight=False)
    return 0
