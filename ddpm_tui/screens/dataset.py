"""Dataset (home): per-breed counts, flagged images by reason, each breed's share of the
set; a gallery of half-block thumbnails of the selected breed; actions to scan for bad
images, quarantine flagged ones (after a confirmation), restore them, create the demo
dataset, and switch to another dataset folder. An empty workspace says what to do next.

Counting, scanning, moving files and decoding thumbnails all run in thread workers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Label, ProgressBar, Static
from textual.worker import get_current_worker

from core.io.safe_text import shown, shown_markup
from ddpm_tui.screens.base import StudioScreen
from ddpm_tui.screens.confirm import ConfirmScreen
from ddpm_tui.widgets.halfblock import HalfBlockImage, tile_images, to_rgb_array

DEMO_DATASET = "demo"
THUMB = 32  # thumbnail pixels (the mosaic is scaled to the gallery afterwards)
ZOOM_THUMB = 128  # thumbnail pixels in the full-screen view (z), where there is room for them
BAR_WIDTH = 10
EIGHTHS = " ▏▎▍▌▋▊▉█"


def share_bar(share: float, width: int = BAR_WIDTH) -> str:
    """A bar of `width` cells with 1/8-cell resolution."""
    share = min(max(share, 0.0), 1.0)
    eighths = round(share * width * 8)
    full, part = divmod(eighths, 8)
    return ("█" * full + (EIGHTHS[part] if part else "")).ljust(width)


SUMMARY_HELP = ("imbalance: the largest breed's image count over the smallest's (1x = even); flagged: images "
                "the last check (c) found suspect, by reason; median: the typical image size")


def flag_summary(flagged: dict[str, int], scanned: bool = False) -> str:
    """'blurry 2 small 1'; none: "0" after a scan, "–" before any (nothing known yet)."""
    return " ".join(f"{reason} {n}" for reason, n in sorted(flagged.items()) if n) or ("0" if scanned else "–")


def report_path_for(workspace, data_dir: Path) -> Path:
    """The scan report of a dataset folder, where `ddpm-tui data scan` writes it too."""
    from core.data.curation import report_path_for as curation_report_path

    return curation_report_path(workspace.root, data_dir)


def _moves_note(moves: list, done: str) -> str:
    """'moved 5 files ...; 1 left where it was: <first error>'."""
    ok = [m for m in moves if getattr(m, "ok", False)]
    bad = [m for m in moves if not getattr(m, "ok", False)]
    note = done.format(n=len(ok))
    if bad:
        note += f"; {len(bad)} left where they were: {bad[0].error}"
    return note


class FolderScreen(ModalScreen[Path | None]):
    """Ask for another dataset folder."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, current: Path) -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Dataset folder (one subfolder per breed)", classes="dialog-title")
            yield Input(str(self.current), compact=True, id="folder")
            yield Label("", id="folder-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Open", compact=True, id="open", variant="primary")
                yield Button("Cancel", compact=True, id="cancel")

    def on_input_submitted(self) -> None:
        self._open()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "open":
            self._open()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)

    def _open(self) -> None:
        path = Path(self.query_one("#folder", Input).value.strip()).expanduser()
        if not path.is_dir():
            self.query_one("#folder-error", Label).update(f"[red]{shown_markup(path)} is not a folder[/]")
            return
        self.dismiss(path.resolve())


class DatasetScreen(StudioScreen):
    MODE = "dataset"
    MAIN = "#breeds"
    BINDINGS = [
        Binding("r", "refresh", "Recount"),
        Binding("c", "scan", "Check"),
        Binding("x", "quarantine", "Quarantine"),
        Binding("u", "restore", "Restore"),
        Binding("m", "demo", "Demo data"),
        Binding("o", "open_folder", "Folder"),
        Binding("z", "zoom", "Zoom"),
        Binding("left_square_bracket", "page(-1)", "Prev", show=False),
        Binding("right_square_bracket", "page(1)", "Next", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._stats = None
        self._busy = False
        self._page = 0
        self._breed: str | None = None

    def compose_body(self) -> ComposeResult:
        summary = Static("", id="dataset-summary")
        summary.tooltip = SUMMARY_HELP
        yield summary
        yield Static("", id="dataset-last")
        with Horizontal(id="dataset-body"):
            with Vertical(id="dataset-left"):
                yield DataTable(id="breeds", cursor_type="row", zebra_stripes=True)
                yield Static("", id="dataset-empty")
            with Vertical(id="dataset-right"):
                yield Label("", id="gallery-label", classes="panel-title")
                yield HalfBlockImage(id="gallery", valign="top")
                yield Label(self.studio.color_note(), classes="color-note")
        yield ProgressBar(id="dataset-progress", show_eta=False)

    @property
    def data_dir(self) -> Path:
        return self.studio.dataset_dir

    def on_mount(self) -> None:
        self.query_one("#dataset-progress").display = False
        self.action_refresh()

    def on_screen_resume(self) -> None:
        if self._stats is not None and not self._busy:
            self.action_refresh()  # a scrape or another tool may have added images

    # -- background jobs -------------------------------------------------------------------

    def _begin_job(self, label: str, fn) -> bool:
        if self._busy:
            self.notify("busy with the previous job; wait for it to finish", severity="warning")
            return False
        self._busy = True
        bar = self.query_one("#dataset-progress", ProgressBar)
        bar.display = True
        bar.update(total=None, progress=0)
        self.query_one("#dataset-summary", Static).update(f"{label}…")
        self.run_worker(lambda: self._run_job(fn), thread=True, group="dataset", name="dataset job",
                        exit_on_error=False)
        return True

    def _run_job(self, fn) -> None:
        """Runs `fn(progress)` in a thread; then recounts. Errors become one-line notices."""
        call = self.app.call_from_thread
        last = [0.0]

        def progress(done: int, total: int, message: str = "") -> None:
            import time

            now = time.monotonic()
            if now - last[0] >= 0.25 or done >= total:  # <= 4 Hz
                last[0] = now
                call(self._progress, done, total, message)

        try:
            note = fn(progress)
            stats, error = self._count(progress)
        except Exception as exc:  # any back-end failure: show it, keep the studio alive
            note, stats, error = None, None, f"{type(exc).__name__}: {exc}"
        if not get_current_worker().is_cancelled:
            call(self._finished, stats, error, note)

    def _count(self, progress):
        from core.data.stats import DatasetFolderError, dataset_stats

        from core.data.curation import load_report

        # a garbled report reads as None (counts still come; a new scan rewrites it)
        report = load_report(report_path_for(self.studio.workspace, self.data_dir))
        from core.data.curation import cache_path_for

        stats_cache = cache_path_for(self.studio.workspace.root, self.data_dir, "stats")
        try:
            stats = dataset_stats(self.data_dir, cache_path=stats_cache, report=report, progress=progress)
        except DatasetFolderError as exc:
            return None, str(exc)
        return stats, None

    def _progress(self, done: int, total: int, message: str) -> None:
        self.query_one("#dataset-progress", ProgressBar).update(total=max(total, 1), progress=done)
        if message:
            self.query_one("#dataset-summary", Static).update(f"{message} {done}/{total}")

    def _show_note(self, note: str | None) -> None:
        """A job's result as a notice, and under the summary until the next one (a notice goes
        after a few seconds)."""
        if note:
            self.notify(note)
            last = self.query_one("#dataset-last", Static)
            last.update(Text(note))
            last.display = True

    def _finished(self, stats, error: str | None, note: str | None) -> None:
        self._busy = False
        self.query_one("#dataset-progress").display = False
        self._stats = stats
        self._show_note(note)
        table = self.query_one("#breeds", DataTable)
        keep = self._breed
        # columns sized from the data, not measured while rows stream in: stable on every redraw
        table.clear(columns=True)
        breeds = stats.breeds if stats is not None else []
        scanned = stats is not None and stats.report_created is not None
        flags = [flag_summary(b.flagged, scanned) for b in breeds]
        table.add_column("breed", key="breed", width=max([5] + [len(b.name) for b in breeds]))
        table.add_column("images", key="images", width=max([6] + [len(str(b.count)) for b in breeds]))
        table.add_column("share", key="share", width=BAR_WIDTH + 7)
        table.add_column("flagged", key="flagged", width=max([7] + [len(f) for f in flags]))
        empty = self.query_one("#dataset-empty", Static)
        summary = self.query_one("#dataset-summary", Static)
        if stats is None or stats.total == 0:
            where = self.data_dir
            if error and "does not exist" not in error:
                summary.update(f"[red]{shown_markup(error)}[/]")
            else:
                summary.update(f"[b]{shown_markup(where)}[/]: no images yet")
            empty.update(
                "No images here yet.\n\n"
                "• Press [b]m[/] to create the demo dataset (generated pictures, works offline), or\n"
                "• press [b]2[/] to go to Scrape and download dog photos, or\n"
                "• press [b]o[/] to open another folder (one subfolder per breed).")
            empty.display = True
            table.display = False
            self.query_one("#dataset-right").display = False
            self.query_one("#gallery", HalfBlockImage).set_image(None)
            self.query_one("#gallery-label", Label).update("")
            if stats is not None:
                for b in stats.breeds:
                    table.add_row(Text(shown(b.name)), "0", share_bar(0), "–", key=b.name)
            return
        empty.display = False
        table.display = True
        self.query_one("#dataset-right").display = True
        self.focus_main()  # e.g. right after the demo set is made: arrow keys move at once
        flagged = f" · [yellow]{stats.flagged_files} flagged[/] ({flag_summary(stats.flagged)})" if stats.flagged_files else ""
        imb = f" · imbalance {stats.imbalance:.1f}x" if stats.imbalance else ""
        size = (f" · median {stats.median_width:.0f}x{stats.median_height:.0f}"
                if stats.median_width and stats.median_height else "")
        unscanned = f" · {stats.unscanned} not checked yet (c)" if stats.unscanned else ""
        summary.update(f"[b]{shown_markup(self.data_dir)}[/]: {stats.total} images in {len(stats.breeds)} breeds"
                       f"{imb}{size}{flagged}{unscanned}")
        for b in stats.breeds:
            table.add_row(Text(shown(b.name)), str(b.count), f"{share_bar(b.share)} {b.share * 100:4.1f}%",
                          flag_summary(b.flagged, scanned), key=b.name)
        names = [b.name for b in stats.breeds]
        if keep in names:
            table.move_cursor(row=names.index(keep))
        elif names:
            # after the layout pass: the gallery was hidden, so its size is not known yet
            self.call_after_refresh(self._select, names[0])

    # -- gallery -----------------------------------------------------------------------------

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is not None and event.row_key.value != self._breed:
            self._page = 0
            self._select(event.row_key.value)

    def _select(self, breed: str) -> None:
        self._breed = breed
        self._load_gallery()

    def action_page(self, delta: int) -> None:
        self._page = max(0, self._page + delta)
        self._load_gallery()

    def _gallery_slots(self) -> tuple[int, int]:
        w, h = self.query_one("#gallery", HalfBlockImage).size
        cols = max(2, w // 14)
        rows = max(1, (2 * h) // 14)
        return cols, rows

    def _load_gallery(self) -> None:
        if self._breed is None:
            return
        cols, rows = self._gallery_slots()
        _, bg = self.query_one("#gallery", HalfBlockImage).background_colors  # inherited, resolved
        fill = (bg.r, bg.g, bg.b)  # the mosaic's gaps blend into the panel
        self.run_worker(lambda b=self._breed, p=self._page: self._read_thumbs(b, p, cols, rows, fill),
                        thread=True, group="gallery", name="thumbnails", exclusive=True,
                        exit_on_error=False)

    def action_zoom(self) -> None:
        """This page of thumbnails, larger, on the whole terminal."""
        if self._breed is None or not self.query_one("#dataset-right").display:
            self.notify("no pictures to show: select a breed first", severity="warning")
            return
        cols, rows = self._gallery_slots()
        _, bg = self.query_one("#gallery", HalfBlockImage).background_colors
        self.run_worker(lambda b=self._breed, p=self._page: self._read_thumbs(
            b, p, cols, rows, (bg.r, bg.g, bg.b), thumb=ZOOM_THUMB, zoom=True),
            thread=True, group="zoom", name="thumbnails", exclusive=True, exit_on_error=False)

    def _show_zoom(self, mosaic, label: str) -> None:
        from ddpm_tui.screens.zoom import ZoomScreen

        if mosaic is not None:
            self.app.push_screen(ZoomScreen(mosaic, label))

    def _read_thumbs(self, breed: str, page: int, cols: int, rows: int, fill: tuple[int, int, int],
                     thumb: int = THUMB, zoom: bool = False) -> None:
        from PIL import Image

        from core.data.images import ImageLoadError, is_image_file, load_rgb

        folder = self.data_dir / breed
        try:
            files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p)
                           and not any(part.startswith(".") for part in p.relative_to(folder).parts))
        except OSError as exc:
            self.app.call_from_thread(self.notify, f"{folder}: {exc}", severity="error")
            return
        per_page = cols * rows
        pages = max(1, (len(files) + per_page - 1) // per_page)
        page = min(page, pages - 1)
        chosen = files[page * per_page:(page + 1) * per_page]
        loaded: list[np.ndarray | None] = []
        bad = 0
        worker = get_current_worker()
        for path in chosen:
            if worker.is_cancelled:
                return
            try:
                img = load_rgb(path)
            except (ImageLoadError, OSError):
                bad += 1
                loaded.append(None)
                continue
            img.thumbnail((thumb, thumb), Image.Resampling.BOX)
            loaded.append(to_rgb_array(img))
        # tiles as big as the largest thumbnail (small images are not padded up to THUMB)
        side = max([max(a.shape[:2]) for a in loaded if a is not None] or [thumb])
        thumbs = []
        for arr in loaded:
            tile = np.empty((side, side, 3), dtype=np.uint8)
            if arr is None:
                tile[:] = (140, 0, 0)  # a red tile: unreadable file
            else:
                tile[:] = fill
                y, x = (side - arr.shape[0]) // 2, (side - arr.shape[1]) // 2
                tile[y:y + arr.shape[0], x:x + arr.shape[1]] = arr
            thumbs.append(tile)
        gap = max(1, side // 8)
        mosaic = tile_images(thumbs, cols=min(cols, len(thumbs)), gap=gap, fill=fill) if thumbs else None
        label = (f"{breed}: {len(files)} images · {page + 1}/{pages}"
                 + (f" · {bad} unreadable" if bad else ""))
        if worker.is_cancelled:
            return
        if zoom:
            self.app.call_from_thread(self._show_zoom, mosaic, label)
        else:
            self.app.call_from_thread(self._show_gallery, breed, page, mosaic, label, (cols, rows))

    def _show_gallery(self, breed: str, page: int, mosaic, label: str, slots: tuple[int, int]) -> None:
        if breed != self._breed:
            return
        if slots != self._gallery_slots():
            self._load_gallery()  # the gallery changed size while loading: lay out again
            return
        self._page = page
        self.query_one("#gallery", HalfBlockImage).set_image(mosaic)
        self.query_one("#gallery-label", Label).update(Text(shown(label)))

    # -- actions -------------------------------------------------------------------------------

    def action_refresh(self) -> None:
        self._begin_job("counting images", lambda progress: None)

    def action_scan(self) -> None:
        from core.data.curation import ScanOptions, cache_path_for, scan_dataset

        report = report_path_for(self.studio.workspace, self.data_dir)

        def job(progress):
            rep = scan_dataset(
                self.data_dir, report_path=report, options=ScanOptions(), progress=progress,
                cache_path=cache_path_for(self.studio.workspace.root, self.data_dir, "features"),
            )
            return f"scan done: {len(rep.flags)} flags; report {report}"

        self._begin_job("checking images", job)

    def action_quarantine(self) -> None:
        from core.data.curation import load_report
        from core.data.quarantine import quarantine_flagged

        report_file = report_path_for(self.studio.workspace, self.data_dir)
        report = load_report(report_file)
        if report is None or not report.flags:
            self.notify("nothing flagged: run a check first (c)", severity="warning")
            return
        n = len({f.path for f in report.flags})
        qdir = self.studio.workspace.quarantine_dir

        def answered(yes: bool | None) -> None:
            if not yes:
                return

            def job(progress):
                moves = quarantine_flagged(report, self.data_dir, qdir, progress=progress)
                return _moves_note(moves, f"moved {{n}} files to {qdir} (u restores them)")

            self._begin_job("moving flagged images to quarantine", job)

        self.app.push_screen(ConfirmScreen(
            f"Move {n} flagged images to quarantine?",
            f"They are moved, not deleted, to {qdir}; press u later to put them back.",
            yes="Move them", no="Cancel"), answered)

    def action_restore(self) -> None:
        from core.data.quarantine import restore

        qdir = self.studio.workspace.quarantine_dir

        def job(progress):
            moves = restore(qdir, progress=progress)
            if not moves:
                return "quarantine is empty: nothing to restore"
            return _moves_note(moves, "restored {n} files")

        self._begin_job("restoring quarantined images", job)

    def action_demo(self) -> None:
        from core.data.demo import make_demo_dataset

        # its own dataset folder (data/demo), so it never mixes with scraped photos
        out = self.studio.workspace.dataset_dir(DEMO_DATASET)
        self.studio.set_dataset(out)
        self._breed = None

        def job(progress):
            counts = make_demo_dataset(out, progress=progress)
            return f"demo dataset: {sum(counts.values())} images in {len(counts)} classes at {out}"

        self._begin_job("creating the demo dataset", job)

    def action_open_folder(self) -> None:
        def chosen(path: Path | None) -> None:
            if path is None:
                return
            self.studio.set_dataset(path)
            self._breed = None
            self.action_refresh()

        self.app.push_screen(FolderScreen(self.data_dir), chosen)

    def on_resize(self) -> None:
        super().on_resize()
        if self._breed is not None:
            self._load_gallery()
