"""`ddpm-tui data stats|scan|quarantine|restore|demo`: look at the dataset and clean it.

The work is done by ``core.data.curation`` (scan, statistics, quarantine) and ``core.data.demo``;
this module parses flags, shows Rich progress bars on stderr and prints the results.
Files live in the workspace: the scan report in ``reports/``, caches in ``cache/``,
quarantined images in ``quarantine/<breed>/``. Every name from disk is printed through
``core.io.safe_text`` (``shown`` for plain lines, ``_m`` = shown + Rich markup escape for
Rich output), so a file name cannot move the cursor, retitle or clear the terminal.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from core.io.safe_text import shown, shown_markup as _m
from ddpm_tui.commands._common import CLIError, add_command
from ddpm_tui.workspace import DEFAULT_DATASET, Workspace

# Flag defaults are read from core.data.curation lazily (keeps `--help` light), so the
# help text quotes the same numbers the code uses.
_SCAN_FLAGS = (
    # flag, ScanOptions field, type, metavar, constant, help
    ("--min-size", "min_size", int, "PX", "DEFAULT_MIN_SIZE", "flag images whose shorter side is below PX"),
    ("--min-aspect", "min_aspect", float, "R", "DEFAULT_MIN_ASPECT", "flag min(w/h, h/w) below R"),
    ("--min-entropy", "min_entropy", float, "BITS", "DEFAULT_MIN_ENTROPY", "flag grey-level entropy below BITS (0-8)"),
    ("--max-gray-chroma", "max_gray_chroma", float, "C", "DEFAULT_MAX_GRAY_CHROMA",
     "flag as grayscale when the mean channel spread is below C (0-255)"),
    ("--near-phash", "near_phash", int, "BITS", "DEFAULT_NEAR_PHASH",
     "near duplicates: pHash Hamming distance at most BITS of 64 (-1 turns it off)"),
    ("--near-dhash", "near_dhash", int, "BITS", "DEFAULT_NEAR_DHASH", "... and dHash distance at most BITS of 64"),
    ("--collage-threshold", "collage_threshold", float, "S", "DEFAULT_COLLAGE_THRESHOLD",
     "flag collage score (0-1) at or above S (above 1 turns it off)"),
    ("--workers", "workers", int, "N", "DEFAULT_WORKERS", "decode with N threads"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    from core.data import curation as C  # light: numpy + Pillow, no torch

    p = subparsers.add_parser(
        "data",
        help="dataset statistics, curation scan, quarantine/restore, offline demo dataset",
        description="Look at a dataset (<workspace>/data/<dataset>/<breed>/*.jpg) and clean it. "
        "Flagged files are moved to <workspace>/quarantine/, never deleted.",
    )
    p.set_defaults(func=_no_subcommand, _data_parser=p)
    sub = p.add_subparsers(dest="data_command", metavar="COMMAND")

    def dataset_args(sp: argparse.ArgumentParser) -> None:
        g = sp.add_mutually_exclusive_group()
        g.add_argument("--data", metavar="DIR", help="dataset folder with one sub-folder per breed")
        g.add_argument("--dataset", metavar="NAME",
                       help=f"dataset NAME under <workspace>/data/ (default: {DEFAULT_DATASET}; the demo set is 'demo')")

    s = add_command(sub, "stats", run_stats,
                    help="per-breed counts, flags, median sizes, imbalance (fast: headers only)",
                    description="Per breed: images, flagged images by reason (from the latest scan), median "
                    "width/height and share of the set; totals and the largest/smallest breed ratio.")
    dataset_args(s)
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")

    s = add_command(sub, "scan", run_scan,
                    help="flag bad, tiny, odd, grey, duplicate and collage images; write a report",
                    description="Decode every image (only new or changed ones on a rerun) and flag problems. "
                    "Reasons: " + ", ".join(C.REASONS) + ". Writes <workspace>/reports/scan-<dataset>-*.json.")
    dataset_args(s)
    for flag, _field, typ, metavar, const, text in _SCAN_FLAGS:
        s.add_argument(flag, type=typ, metavar=metavar, default=getattr(C, const),
                       help=f"{text} (default: {getattr(C, const)})")
    s.add_argument("--list", type=int, default=20, metavar="N", help="list at most N flagged files (default: 20; 0: none, -1: all)")
    s.add_argument("--json", action="store_true", help="print the report (without the per-file table) as JSON")

    s = add_command(sub, "quarantine", run_quarantine,
                    help="move flagged files to <workspace>/quarantine/<breed>/",
                    description="Move the files the latest scan flagged (optionally only for some reasons) "
                    "out of the dataset into <workspace>/quarantine/<breed>/, logging each move so "
                    "`data restore` can put it back. Training no longer sees them.")
    dataset_args(s)
    s.add_argument("--reason", action="extend", nargs="+", choices=C.REASONS, metavar="REASON",
                   help="only files flagged for REASON (repeatable). Reasons: " + ", ".join(C.REASONS))
    s.add_argument("--dry-run", action="store_true", help="show what would move; move nothing")

    _register_restore_and_demo(sub)


def _register_restore_and_demo(sub: argparse._SubParsersAction) -> None:
    s = add_command(sub, "restore", run_restore,
                    help="put quarantined files back where they came from",
                    description="Move quarantined files back to their original paths (never overwriting a file "
                    "there). With no arguments, lists what is in quarantine.")
    s.add_argument("paths", nargs="*", metavar="PATH", help="a quarantined file, or its original path")
    s.add_argument("--all", action="store_true", help="restore every quarantined file")
    s.add_argument("--dry-run", action="store_true", help="show what would move; move nothing")

    from core.data.demo import CLASSES, DEFAULT_PER_CLASS  # light: Pillow + numpy

    s = add_command(sub, "demo", run_demo,
                    help="write a small synthetic dataset for trying everything offline",
                    description=f"Draw {len(CLASSES)} classes ({', '.join(sorted(CLASSES))}) of 64x64 pictures into "
                    "<workspace>/data/demo/<class>/. Same seed, same bytes.")
    s.add_argument("--per-class", type=int, default=DEFAULT_PER_CLASS, metavar="N",
                   help=f"images per class (default: {DEFAULT_PER_CLASS})")
    s.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default: 0)")
    s.add_argument("--name", default="demo", metavar="NAME", help="dataset name under <workspace>/data/ (default: demo)")
    s.add_argument("--force", action="store_true", help="rewrite the demo images if the folder already has files")


def _no_subcommand(args: argparse.Namespace, workspace: Workspace) -> int:
    args._data_parser.print_help(sys.stderr)
    raise CLIError("choose a data command: stats, scan, quarantine, restore or demo")


# ---------------------------------------------------------------------------- shared bits


def _dataset_dir(args: argparse.Namespace, workspace: Workspace) -> Path:
    if getattr(args, "data", None):
        path = Path(args.data).expanduser().resolve()
    else:
        path = workspace.dataset_dir(getattr(args, "dataset", None) or DEFAULT_DATASET)
    if not path.exists():
        hint = ("make the offline demo set with `ddpm-tui data demo` and use --dataset demo, "
                "scrape with `ddpm-tui scrape`, or pass --data DIR")
        raise CLIError(f"dataset folder {shown(path)} does not exist ({hint})")
    if not path.is_dir():
        raise CLIError(f"{shown(path)} is not a folder (expected {shown(path)}/<breed>/*.jpg)")
    return path


def _report_path(workspace: Workspace, data_dir: Path) -> Path:
    from core.data.curation import report_path_for

    return report_path_for(workspace.root, data_dir)


def _cache_path(workspace: Workspace, data_dir: Path, kind: str) -> Path:
    from core.data.curation import cache_path_for

    return cache_path_for(workspace.root, data_dir, kind)


@contextmanager
def _progress(description: str) -> Iterator[Callable[[int, int, str], None]]:
    """A Rich progress bar on stderr, removed when done; yields a core-style callback."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int, message: str) -> None:
            bar.update(task, completed=done, total=total, description=message or description)

        yield update


def _console():
    """stdout console; when piped, lines are not wrapped at 80 columns (paths stay greppable)."""
    import os

    from rich.console import Console

    console = Console(soft_wrap=True)
    if not console.is_terminal:
        try:
            width = int(os.environ.get("COLUMNS") or 200)
        except ValueError:
            width = 200
        console = Console(soft_wrap=True, width=max(40, width))
    return console


def _rel(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


def _err(message: str) -> None:
    print(f"ddpm-tui: {shown(message)}", file=sys.stderr)


# ---------------------------------------------------------------------------- stats


def run_stats(args: argparse.Namespace, workspace: Workspace) -> int:
    from core.data.curation import load_report
    from core.data.stats import DatasetFolderError, dataset_stats

    data_dir = _dataset_dir(args, workspace)
    report = load_report(_report_path(workspace, data_dir))
    try:
        with _progress("reading image headers") as progress:
            st = dataset_stats(data_dir, cache_path=_cache_path(workspace, data_dir, "stats"), report=report,
                               progress=progress)
    except DatasetFolderError as exc:
        raise CLIError(shown(exc)) from exc
    if args.json:
        print(json.dumps(st.to_dict(), indent=2))  # json.dumps escapes control characters itself
        return 0
    _print_stats(st, report is not None)
    return 0


def _size(w: float | None, h: float | None) -> str:
    return f"{w:g}x{h:g}" if w is not None and h is not None else "-"


def _print_stats(st, have_report: bool) -> None:
    from rich.table import Table

    console = _console()
    table = Table(title=_m(st.data_dir), title_justify="left")
    table.add_column("breed")
    table.add_column("images", justify="right")
    table.add_column("share", justify="right")
    table.add_column("median w x h", justify="right")
    table.add_column("flagged", justify="right")
    table.add_column("by reason")
    for b in st.breeds:
        table.add_row(_m(b.name), str(b.count), f"{b.share:.1%}", _size(b.median_width, b.median_height),
                      str(b.flagged_files) if b.flagged_files else "", ", ".join(f"{r} {n}" for r, n in b.flagged.items()))
    table.add_section()
    table.add_row("total", str(st.total), "100%" if st.total else "-", _size(st.median_width, st.median_height),
                  str(st.flagged_files) if st.flagged_files else "",
                  ", ".join(f"{r} {n}" for r, n in st.flagged.items()))
    console.print(table)
    non_empty = [b for b in st.breeds if b.count]
    if st.imbalance is not None and non_empty:
        big = max(non_empty, key=lambda b: b.count)
        small = min(non_empty, key=lambda b: b.count)
        console.print(f"imbalance {st.imbalance:.2f} (largest {_m(big.name)} {big.count} / "
                      f"smallest {_m(small.name)} {small.count})")
    if st.empty_breeds:
        console.print(f"[yellow]empty breed folders:[/] {', '.join(_m(b) for b in st.empty_breeds)}")
    if not have_report:
        console.print("no scan yet: only header problems are counted; `ddpm-tui data scan` finds duplicates, "
                      "collages, tiny and grey images")
    else:
        note = f"flags from the scan of {_m(st.report_created)}"
        if st.unscanned:
            note += f"; {st.unscanned} files new or changed since (run `ddpm-tui data scan`)"
        console.print(note)


# ---------------------------------------------------------------------------- scan


def run_scan(args: argparse.Namespace, workspace: Workspace) -> int:
    from core.data.curation import DatasetFolderError, ScanOptions, scan_dataset

    data_dir = _dataset_dir(args, workspace)
    try:
        options = ScanOptions(**{field: getattr(args, field) for _f, field, *_ in _SCAN_FLAGS})
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    report_path = _report_path(workspace, data_dir)
    try:
        with _progress("analysing images") as progress:
            report = scan_dataset(data_dir, report_path=report_path, options=options, progress=progress,
                                  cache_path=_cache_path(workspace, data_dir, "features"))
    except DatasetFolderError as exc:
        raise CLIError(shown(exc)) from exc
    except OSError as exc:
        raise CLIError(f"cannot write the report {shown(report_path)}: {shown(exc.strerror or exc)}") from exc
    if args.json:
        d = report.to_dict()
        d.pop("files")
        print(json.dumps(d, indent=2))
        return 0
    _print_scan(report, report_path, args.list)
    return 0


def _print_scan(report, report_path: Path, limit: int) -> None:
    from rich.table import Table

    console = _console()
    flagged_files = len({f.rel for f in report.flags})
    console.print(f"scanned {report.total} images in {_m(report.data_dir)} ({report.analysed} decoded, "
                  f"{report.total - report.analysed} unchanged) in {report.elapsed_s:.1f} s: "
                  f"{flagged_files} flagged")
    by_reason = report.flags_by_reason()
    if by_reason:
        table = Table()
        table.add_column("reason")
        table.add_column("files", justify="right")
        table.add_column("rule")
        for reason, flags in sorted(by_reason.items()):
            thr = flags[0].threshold
            table.add_row(reason, str(len(flags)), _rule(reason, thr))
        console.print(table)
    shown = report.flags if limit < 0 else report.flags[:limit]
    if shown:
        table = Table(title="flagged files" + ("" if len(shown) == len(report.flags) else
                                               f" (first {len(shown)} of {len(report.flags)}; --list -1 for all)"),
                      title_justify="left")
        table.add_column("file", overflow="fold")
        table.add_column("reason")
        table.add_column("value", justify="right")
        table.add_column("detail", overflow="fold")
        for f in shown:
            value = "" if f.value is None else f"{f.value:g}"
            table.add_row(_m(f.rel), f.reason, value, _m(f.detail))
        console.print(table)
    console.print(f"report: {_m(report_path)}")
    if report.flags:
        console.print("next: `ddpm-tui data quarantine --dry-run` (then without --dry-run; `--reason R` to pick)")


def _rule(reason: str, threshold: float | None) -> str:
    rules = {
        "too_small": "shorter side < {t:g} px",
        "odd_aspect": "min(w/h, h/w) < {t:g}",
        "low_information": "entropy < {t:g} bits",
        "grayscale": "mean channel spread < {t:g}",
        "near_duplicate": "pHash distance <= {t:g} (and dHash)",
        "collage": "collage score >= {t:g}",
        "duplicate": "same decoded pixels",
    }
    if reason in rules and threshold is not None:
        return rules[reason].format(t=threshold)
    return rules.get(reason, "cannot be decoded")


# ---------------------------------------------------------------------------- quarantine / restore


def run_quarantine(args: argparse.Namespace, workspace: Workspace) -> int:
    from core.data.curation import CurationError, load_report
    from core.data.quarantine import quarantine_flagged

    data_dir = _dataset_dir(args, workspace)
    report_path = _report_path(workspace, data_dir)
    try:
        report = load_report(report_path, strict=True)
    except CurationError as exc:
        raise CLIError(shown(exc)) from exc
    if report is None:
        raise CLIError(f"no scan report for {shown(data_dir)}; run `ddpm-tui data scan` first")
    try:
        with _progress("quarantining") as progress:
            moves = quarantine_flagged(report, data_dir, workspace.quarantine_dir, reasons=args.reason,
                                       dry_run=args.dry_run, progress=progress)
    except (CurationError, ValueError) as exc:
        raise CLIError(shown(exc)) from exc
    verb = "would move" if args.dry_run else "moved"
    ok = _print_moves(moves, lambda m: f"{verb} {_rel(m.source, data_dir)} -> {_rel(m.dest, workspace.root)}"
                      f"  ({', '.join(m.reasons)})")
    if not moves:
        print("nothing flagged" + (f" for {', '.join(args.reason)}" if args.reason else ""))
    else:
        print(f"{verb} {len(ok)} of {len(moves)} flagged files to {shown(workspace.quarantine_dir)}"
              + ("" if args.dry_run or not ok else "; undo with `ddpm-tui data restore --all`"))
    return 0 if len(ok) == len(moves) else 1


def _print_moves(moves: list, line: Callable) -> list:
    """One stdout line per done move, one stderr error line per failed one; the done ones."""
    ok = [m for m in moves if m.ok]
    for m in ok:
        print(shown(line(m)))
    for m in moves:
        if not m.ok:
            _err(f"{m.source}: {m.error}")
    return ok


def run_restore(args: argparse.Namespace, workspace: Workspace) -> int:
    from core.data.quarantine import quarantined_files, restore

    qdir = workspace.quarantine_dir
    if args.all and args.paths:
        raise CLIError("give either --all or PATH ..., not both")
    if not args.all and not args.paths:
        present = quarantined_files(qdir)
        if not present:
            print(f"quarantine is empty ({shown(qdir)})")
            return 0
        for e in present:
            print(shown(f"{_rel(Path(e['quarantined']), workspace.root)}  <- {e['original']}  "
                        f"({', '.join(e.get('reasons', []))})"))
        print(f"{len(present)} files in quarantine; `ddpm-tui data restore --all` or `... restore PATH` puts them back")
        return 0
    with _progress("restoring") as progress:
        moves = restore(qdir, paths=None if args.all else args.paths, dry_run=args.dry_run, progress=progress)
    verb = "would restore" if args.dry_run else "restored"
    ok = _print_moves(moves, lambda m: f"{verb} {m.dest}")
    print(f"{verb} {len(ok)} of {len(moves)} files" if moves else "nothing in quarantine")
    return 0 if len(ok) == len(moves) else 1


# ---------------------------------------------------------------------------- demo


def run_demo(args: argparse.Namespace, workspace: Workspace) -> int:
    from core.data.demo import make_demo_dataset

    if args.per_class < 1:
        raise CLIError(f"--per-class must be at least 1, got {args.per_class}")
    if args.seed < 0:
        raise CLIError(f"--seed must be 0 or more, got {args.seed}")
    if not args.name or "/" in args.name or args.name.startswith("."):
        raise CLIError(f"--name must be a plain folder name, got {shown(repr(args.name))}")
    out = workspace.dataset_dir(args.name)
    if out.exists() and not out.is_dir():
        raise CLIError(f"{shown(out)} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise CLIError(f"{shown(out)} already has files; pass --force to rewrite its demo images (other files are kept)")
    try:
        # A new folder is built in a temp folder and renamed: a failure leaves nothing behind.
        with _progress("drawing") as progress:
            counts = make_demo_dataset(out, per_class=args.per_class, seed=args.seed, progress=progress)
    except OSError as exc:
        raise CLIError(f"cannot write {shown(out)}: {shown(exc.strerror or exc)}") from exc
    total = sum(counts.values())
    print(f"wrote {total} images ({', '.join(f'{k} {v}' for k, v in counts.items())}) to {shown(out)}")
    print(f"next: ddpm-tui data stats --dataset {args.name}")
    print(f"      ddpm-tui train --run {args.name} --data {shown(out)} --preset tiny --image-size 32 --conditional --max-time 15m")
    print(f"      ddpm-tui sample {args.name} --breed {sorted(counts)[0]}")
    return 0
