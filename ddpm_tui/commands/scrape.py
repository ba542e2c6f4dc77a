"""`ddpm-tui scrape`: search Google/Bing Images per breed in a headless browser and download
the photos into data/<dataset>/<breed>/; `ddpm-tui scrape export`: the found URLs as one
CSV per breed for img2dataset."""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
from pathlib import Path

from core.io.safe_text import shown
from ddpm_tui.commands._common import CLIError, add_command, positive_int

_EPILOG = """\
examples:
  ddpm-tui scrape                                   the original's 26 breeds on Google Images
  ddpm-tui scrape --breeds "beagles,shih tzu" --engine bing --max-per-breed 200
  ddpm-tui scrape --breeds-file breeds.txt --urls-only
  ddpm-tui scrape export --out exports/             one CSV per breed (url,breed) for img2dataset

Rerunning the same command resumes: finished searches are not repeated, downloaded URLs
are not fetched again, failed ones are retried (up to --max-attempts over all runs).
Needs Chromium/Chrome and chromedriver (Debian/Ubuntu: apt-get install chromium chromium-driver).
"""

_DATASET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")




def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def _size(text: str) -> int:
    """Bytes, with an optional K/M/G suffix (powers of 1024)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?)i?b?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"expected a size like 20000000, 500K or 20M, got {text!r}")
    value = int(float(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2)])
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte, got {text!r}")
    return value


def _dataset_name(text: str) -> str:
    if not _DATASET_RE.fullmatch(text) or ".." in text:
        raise argparse.ArgumentTypeError(f"dataset name {text!r} must be letters, digits, '.', '_' or '-' "
                                         "(it names a folder under data/)")
    return text


def register(subparsers) -> None:
    p = add_command(
        subparsers, "scrape", run,
        help="search Google/Bing Images per breed and download the photos (or `scrape export`)",
        usage="ddpm-tui scrape [options]            search and download\n"
        "       ddpm-tui scrape export [--out DIR]  write the found URLs as CSVs for img2dataset",
        description="Search an image engine for each breed in a headless Chromium, download the full-size\n"
        "photos concurrently, validate them, and store them as JPEG under\n"
        "<workspace>/data/<dataset>/<breed>/. Every query and URL is recorded in <workspace>/scrape.sqlite.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_search_args(p.add_argument_group("what to search"))
    _add_browser_args(p.add_argument_group("browser"))
    _add_download_args(p.add_argument_group("downloads"))
    out = p.add_argument_group("output")
    out.add_argument("--events", metavar="FILE", help="append progress events as JSON lines to FILE")
    out.add_argument("--quiet", "-q", action="store_true", help="no live table; print only errors and the summary")
    _register_export(p.add_subparsers(dest="scrape_action", metavar="ACTION",
                                      title="actions", description="without an action: search and download"))


def _add_search_args(what) -> None:
    breeds = what.add_mutually_exclusive_group()
    breeds.add_argument("--breeds", metavar="A,B,...", help="comma-separated breed names (default: the original's 26)")
    breeds.add_argument("--breeds-file", metavar="FILE", help="breed names, one a line (# comments)")
    what.add_argument("--engine", choices=("google", "bing"), default="google",
                      help="image search engine (default: google)")
    what.add_argument("--max-per-breed", type=positive_int, default=100, metavar="N",
                      help="stop collecting URLs for a breed at N (default: 100)")
    what.add_argument("--dataset", type=_dataset_name, default="dogs", metavar="NAME",
                      help="store under data/NAME/<breed>/ (default: dogs)")
    what.add_argument("--base-url", metavar="URL",
                      help="replace the engine's https://www.google.com / https://www.bing.com (e.g. a local copy)")
    what.add_argument("--urls-only", action="store_true", help="only collect URLs into the manifest; download nothing")


def _add_browser_args(brw) -> None:
    brw.add_argument("--browsers", type=positive_int, default=1, metavar="N",
                     help="parallel browser workers, one headless browser each (default: 1)")
    brw.add_argument("--delay", type=_seconds, default=1.0, metavar="S",
                     help="polite pause between page actions and searches, jittered (default: 1.0)")
    brw.add_argument("--scroll-wait", type=_seconds, default=3.0, metavar="S",
                     help="how long to wait for more results after scrolling or 'more' (default: 3)")
    brw.add_argument("--chrome", metavar="PATH", help="Chromium/Chrome binary (default: search /usr/bin and PATH)")
    brw.add_argument("--chromedriver", metavar="PATH", help="chromedriver binary (default: search /usr/bin and PATH)")
    brw.add_argument("--show-browser", action="store_true", help="run the browser with a window (debugging)")


def _add_download_args(dl) -> None:
    dl.add_argument("--workers", type=positive_int, default=8, metavar="N", help="download threads (default: 8)")
    dl.add_argument("--min-size", type=positive_int, default=64, metavar="PX",
                    help="reject images whose shorter side is under PX pixels (default: 64)")
    dl.add_argument("--max-bytes", type=_size, default=20 * 1024**2, metavar="SIZE",
                    help="reject downloads larger than SIZE, e.g. 500K, 20M (default: 20M)")
    dl.add_argument("--timeout", type=_seconds, default=30.0, metavar="S",
                    help="connect/read timeout and limit for one whole download (default: 30)")
    dl.add_argument("--max-attempts", type=positive_int, default=3, metavar="N",
                    help="try a failing URL or search at most N times over all runs (default: 3)")


def _register_export(actions) -> None:
    e = add_command(
        actions, "export", run_export,
        prog="ddpm-tui scrape export",
        help="write the found URLs as one CSV per breed (url,breed) for img2dataset",
        description="Write every URL the scraper found as <out>/<breed>.csv with columns url,breed, "
        "ready for img2dataset (see docs/scraping.md for the command).",
    )
    e.add_argument("--out", metavar="DIR", help="output folder (default: <workspace>/exports/<dataset>)")
    e.add_argument("--dataset", type=_dataset_name, default=argparse.SUPPRESS, metavar="NAME",
                   help="which dataset's URLs (default: dogs)")
    e.add_argument("--breeds", default=argparse.SUPPRESS, metavar="A,B,...", help="only these breeds")
    e.add_argument("--state", choices=("all", "pending", "downloaded", "duplicate", "failed", "rejected"),
                   default="all", help="only URLs in this state (default: all)")


# -- progress display ---------------------------------------------------------------------------
class _EventsFile:
    def __init__(self, path: str) -> None:
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
        except OSError as exc:
            raise CLIError(f"cannot write events file {self.path}: {exc.strerror or exc}") from None
        self._lock = threading.Lock()

    def __call__(self, event: dict) -> None:
        line = json.dumps(event, ensure_ascii=False, default=str)
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class _Display:
    """Per-breed found/downloaded/failed, as a live Rich table on a terminal, else lines."""

    COLUMNS = ("found", "downloaded", "duplicate", "failed", "rejected", "pending")
    HEADERS = {"downloaded": "saved", "duplicate": "dupes"}

    def __init__(self, quiet: bool) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.quiet = quiet
        self.live_mode = not quiet and self.console.is_terminal
        self.counts: dict[str, dict] = {}
        self.status: dict[str, str] = {}
        self._lock = threading.Lock()
        self._live = None

    def start(self) -> None:
        if self.live_mode:
            from rich.live import Live

            self._live = Live(get_renderable=self.table, console=self.console, refresh_per_second=4, transient=False)
            self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def table(self):
        with self._lock:
            rows = {b: dict(c) for b, c in self.counts.items()}
            status = dict(self.status)
        return counts_table(rows, status, title="scrape", width=self.console.width)

    def _print(self, text: str, *, always: bool = False) -> None:
        text = shown(text)  # breeds, URLs and server messages: never escapes to the terminal
        if self._live is not None:
            self._live.console.print(text, markup=False, highlight=False, soft_wrap=True)
        elif always or not self.quiet:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def __call__(self, event: dict) -> None:
        kind, breed, message = event.get("type"), event.get("breed"), event.get("message", "")
        with self._lock:
            if kind == "start":
                to_search = set(event.get("to_search", ()))
                for b, c in event.get("all_counts", {}).items():
                    self.counts[b] = c
                    self.status[b] = "queued" if b in to_search else "earlier"
            if breed is not None and "counts" in event:
                self.counts[breed] = event["counts"]
            if kind == "query_start":
                self.status[breed] = "searching"
            elif kind == "query_stopped":
                self.status[breed] = "stopped"
            elif kind == "query_done":
                self.status[breed] = "searched"
            elif kind == "error" and breed is not None:
                self.status[breed] = {"captcha": "captcha", "consent": "consent wall", "no_results": "no results",
                                      "unreachable": "unreachable"}.get(event.get("kind"), "error")
            elif kind == "done":
                for b, c in event.get("all_counts", {}).items():
                    self.counts[b] = c
        if kind == "start":
            self._print(message)
        elif kind == "error" and event.get("kind") != "offline":  # that one is the summary's "stopped:" line
            self._print(f"error: {message}", always=True)
        elif kind in ("query_done",) and not self.live_mode:
            c = event.get("counts", {})
            self._print(f"{breed}: {message}; {c.get('downloaded', 0)} downloaded so far")


def counts_table(counts: dict[str, dict], status: dict[str, str] | None = None, title: str | None = None,
                 width: int = 80):
    """Per-breed counts as a compact Rich table (fits ``width`` columns, 80 at least), with a total row."""
    from rich import box
    from rich.table import Table

    t = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 0, 0, 1), pad_edge=False, show_footer=len(counts) > 1)
    totals = {c: sum(row.get(c, 0) for row in counts.values()) for c in _Display.COLUMNS}
    # Numbers and status keep their width; a long breed name is what gets shortened (with …).
    t.add_column("breed", no_wrap=True, max_width=max(12, min(32, width - 60)), overflow="ellipsis", footer="total")
    for c in _Display.COLUMNS:
        header = _Display.HEADERS.get(c, c)
        t.add_column(header, justify="right", no_wrap=True, min_width=len(header), footer=str(totals[c]))
    if status is not None:
        t.add_column("status", no_wrap=True, min_width=10)
    for breed, row in counts.items():
        cells = [breed, *(str(row.get(c, 0)) for c in _Display.COLUMNS)]
        if status is not None:
            cells.append(status.get(breed, ""))
        t.add_row(*cells)
    return t


# -- commands ---------------------------------------------------------------------------------
def _breeds(args) -> list[str]:
    from scraper.breeds import DEFAULT_BREEDS, BreedError, parse_breeds, read_breeds_file

    try:
        if args.breeds_file:
            return read_breeds_file(args.breeds_file)
        if args.breeds is not None:
            breeds = parse_breeds(args.breeds)
            if not breeds:
                raise CLIError(f"--breeds {args.breeds!r} names no breed")
            return breeds
    except BreedError as exc:
        raise CLIError(str(exc)) from None
    return list(DEFAULT_BREEDS)


def run(args, workspace) -> int:
    from scraper.browser import BrowserNotFound, BrowserOptions, check_browser
    from scraper.job import ScrapeError, ScrapeOptions, run_scrape, searches_needed
    from scraper.manifest import ManifestError

    options = ScrapeOptions(
        data_dir=workspace.dataset_dir(args.dataset), manifest_path=workspace.scrape_db, breeds=_breeds(args),
        engine=args.engine, dataset=args.dataset, max_per_breed=args.max_per_breed, workers=args.workers,
        browsers=args.browsers, delay=args.delay, base_url=args.base_url, min_size=args.min_size,
        max_bytes=args.max_bytes, timeout=args.timeout, urls_only=args.urls_only, max_attempts=args.max_attempts,
        chrome=args.chrome, chromedriver=args.chromedriver, headless=not args.show_browser,
        scroll_wait=args.scroll_wait,
    )
    try:
        options.validate()
        workspace.ensure()
        # A missing browser is one line before anything starts (a resumed job may not need one).
        if searches_needed(options):
            check_browser(BrowserOptions(chrome=args.chrome, chromedriver=args.chromedriver))
    except (ScrapeError, BrowserNotFound, ManifestError) as exc:
        raise CLIError(str(exc)) from None
    except OSError as exc:
        raise CLIError(f"cannot use workspace {workspace.root}: {exc.strerror or exc}") from None

    display = _Display(args.quiet)
    events = _EventsFile(args.events) if args.events else None

    def on_event(event: dict) -> None:
        display(event)
        if events is not None:
            events(event)

    # SIGTERM (the studio stopping a scrape) ends it like Ctrl-C: finish the current step, keep all.
    previous = signal.getsignal(signal.SIGTERM)

    def _term(signum, frame):
        raise KeyboardInterrupt

    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        signal.signal(signal.SIGTERM, _term)
    display.start()
    try:
        summary = run_scrape(options, on_event=on_event)
    except (ScrapeError, ManifestError) as exc:
        raise CLIError(str(exc)) from None
    finally:
        display.stop()
        if events is not None:
            events.close()
        if in_main:
            signal.signal(signal.SIGTERM, previous)

    _print_summary(display, summary, options)
    if summary.interrupted:
        print("ddpm-tui: scrape interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0 if summary.ok else 1


def _print_summary(display: _Display, summary, options) -> None:
    console = display.console
    if not display.live_mode and not display.quiet:
        console.print(counts_table(summary.counts, width=console.width))
    r = summary.this_run
    searches = f"{summary.searches_failed} of {len(summary.queries)} searches failed"
    if options.urls_only:
        line = (f"this run: {r['found']} new URLs collected, {searches}; manifest {options.manifest_path} "
                "(`ddpm-tui scrape export` writes CSVs)")
    else:
        line = (f"this run: {r['found']} new URLs, {r['downloaded']} images stored, {r['duplicate']} duplicates, "
                f"{r['failed']} failed, {r['rejected']} rejected, {searches}; images in {options.data_dir}, "
                f"manifest {options.manifest_path}")
    console.print(shown(line), markup=False, highlight=False, soft_wrap=True)
    if summary.stopped_reason:
        console.print(f"stopped: {shown(summary.stopped_reason)}", markup=False, highlight=False, soft_wrap=True)


def run_export(args, workspace) -> int:
    from scraper.breeds import BreedError, parse_breeds
    from scraper.job import export_csv
    from scraper.manifest import ManifestError

    dataset = getattr(args, "dataset", "dogs")
    if not workspace.scrape_db.is_file():
        raise CLIError(f"no scrape manifest at {workspace.scrape_db}; run `ddpm-tui scrape --urls-only` first")
    out = Path(args.out).expanduser() if args.out else workspace.root / "exports" / dataset
    try:
        breeds = parse_breeds(args.breeds) if getattr(args, "breeds", None) else None
    except BreedError as exc:
        raise CLIError(str(exc)) from None
    states = None if args.state == "all" else (args.state,)
    try:
        written = export_csv(workspace.scrape_db, out, dataset=dataset, breeds=breeds, states=states)
    except ManifestError as exc:
        raise CLIError(str(exc)) from None
    except OSError as exc:
        raise CLIError(f"cannot write to {out}: {exc.strerror or exc}") from None
    if not written:
        raise CLIError(f"no URLs in {workspace.scrape_db} for dataset {dataset!r}"
                       + (f" in state {args.state}" if states else ""))
    for breed, path in written.items():
        n = sum(1 for _ in open(path, encoding="utf-8")) - 1
        print(f"{path}  ({n} URL{'' if n == 1 else 's'})")
    print(f"{len(written)} CSV files in {out}; download with img2dataset (see README: Scraping at scale)")
    return 0
