"""A whole scrape: search every breed, download what was found, record it all.

Browser workers (``browsers`` of them, one headless browser each, reused across queries)
only find URLs; each batch goes into the manifest and onto a queue that ``workers``
download threads drain concurrently. Everything the job learns is in the manifest first,
so a rerun after Ctrl-C or ``kill -9`` picks up where it stopped. Progress goes out as
event dicts through ``on_event`` (the CLI draws them; ``--events`` writes them as JSON lines).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from scraper.breeds import DEFAULT_BREEDS, breed_folder, breed_slug, query_for
from scraper.browser import Browser, BrowserNotFound, BrowserOptions, reap_stale_browsers
from scraper.download import DownloadOptions, Downloader, DownloadStopped, remove_partials
from scraper.engines import get_engine
from scraper.manifest import Manifest, empty_counts
from scraper.search import NoResultsError, SearchOptions, SearchStopped, UnreachableError, WallError, collect_urls

EventCallback = Callable[[dict], None]
# Searches in a row that could not reach the engine before the job stops searching: enough
# to rule out one flaky page, few enough that an offline machine hears it within seconds.
UNREACHABLE_LIMIT = 3
# "error" event kinds that mean one breed's search failed (readers count them).
SEARCH_FAILED_KINDS = ("search", "no_results", "captcha", "consent", "unreachable")


class ScrapeError(RuntimeError):
    """The job cannot start (bad options, manifest in use); one line for the user."""


@dataclass
class ScrapeOptions:
    data_dir: Path  # the dataset folder: <workspace>/data/<dataset>
    manifest_path: Path  # <workspace>/scrape.sqlite
    breeds: list[str] = field(default_factory=lambda: list(DEFAULT_BREEDS))
    engine: str = "google"
    dataset: str = "dogs"
    max_per_breed: int = 100
    workers: int = 8  # download threads
    browsers: int = 1  # parallel browser workers
    delay: float = 1.0  # polite pause between browser actions and queries (seconds, jittered)
    base_url: str | None = None  # replaces the engine's https://www.google.com etc.
    min_size: int = 64
    max_bytes: int = 20 * 1024 * 1024
    timeout: float = 30.0
    urls_only: bool = False
    max_attempts: int = 3  # a failed URL or query is tried at most this often over all runs
    retries: int = 3  # in-run retries of one URL on 429/5xx
    backoff: float = 1.0
    max_retry_after: float = 30.0
    scroll_wait: float = 3.0
    preview_timeout: float = 5.0
    chrome: str | None = None
    chromedriver: str | None = None
    headless: bool = True

    def validate(self) -> None:
        for name in ("max_per_breed", "workers", "browsers", "min_size", "max_bytes", "max_attempts"):
            if getattr(self, name) < 1:
                raise ScrapeError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("delay", "timeout", "scroll_wait", "preview_timeout", "backoff", "max_retry_after"):
            if getattr(self, name) < 0:
                raise ScrapeError(f"{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")
        if self.timeout == 0:
            raise ScrapeError("timeout must be more than 0")
        try:
            get_engine(self.engine)
        except ValueError as exc:
            raise ScrapeError(str(exc)) from None
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise ScrapeError(f"base URL {self.base_url!r} must start with http:// or https://")
        if not self.breeds:
            raise ScrapeError("no breeds to scrape")


@dataclass
class ScrapeSummary:
    counts: dict[str, dict[str, int]]  # per breed, from the manifest at the end
    this_run: dict[str, int]  # found/downloaded/duplicate/failed/rejected during this run
    queries: list[dict]  # breed, state, found, error for each query attempted this run
    errors: list[str]
    interrupted: bool = False
    stopped_reason: str | None = None

    @property
    def searches_failed(self) -> int:
        return sum(1 for q in self.queries if q["state"] not in ("done", "stopped"))

    @property
    def ok(self) -> bool:
        return not self.errors and not self.interrupted and self.stopped_reason is None

    def totals(self) -> dict[str, int]:
        out = empty_counts()
        for counts in self.counts.values():
            for key, value in counts.items():
                out[key] = out.get(key, 0) + value
        return out


class _ManifestLock:
    """One scrape per manifest at a time: two would fetch the same URLs twice."""

    def __init__(self, manifest_path: Path) -> None:
        self.path = Path(str(manifest_path) + ".lock")
        self._fh = None

    def __enter__(self) -> "_ManifestLock":
        try:
            import fcntl
        except ImportError:  # Windows: no advisory lock; the manifest itself stays consistent
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a+")
        except OSError as exc:
            raise ScrapeError(f"cannot create {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._fh.close()
            self._fh = None
            raise ScrapeError(f"another scrape is already running on {self.path.parent} "
                              f"(lock {self.path.name} is held)") from None
        return self

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            self._fh.close()  # closing releases the lock; the lock file itself is kept


class _Job:
    def __init__(self, options: ScrapeOptions, on_event: EventCallback | None,
                 stop_event: threading.Event | None) -> None:
        self.o = options
        self.on_event = on_event
        self.stop = stop_event or threading.Event()
        self.engine = get_engine(options.engine).with_base_url(options.base_url)
        self.manifest = Manifest(options.manifest_path)
        self.breeds = [breed_slug(b) for b in options.breeds]
        self.breeds = list(dict.fromkeys(self.breeds))
        self.folders = {b: breed_folder(options.data_dir, b) for b in self.breeds}
        self.downloads: queue.Queue = queue.Queue()
        self.searches: queue.Queue = queue.Queue()
        self.errors: list[str] = []
        self.queries: list[dict] = []
        self.this_run = {"found": 0, "downloaded": 0, "duplicate": 0, "failed": 0, "rejected": 0}
        self.stopped_reason: str | None = None
        self.search_aborted = threading.Event()  # browser missing, walled or offline: no more searching
        self.unreachable_in_a_row = 0
        self._lock = threading.Lock()
        self.downloader = Downloader(
            DownloadOptions(
                timeout=options.timeout, connect_timeout=min(10.0, options.timeout), max_bytes=options.max_bytes,
                min_size=options.min_size, retries=options.retries, backoff=options.backoff,
                max_retry_after=options.max_retry_after,
            ),
            pool_size=options.workers, stop_event=self.stop,
        )

    # -- events ------------------------------------------------------------------------------
    def emit(self, type_: str, breed: str | None = None, message: str = "", **extra) -> None:
        if self.on_event is None:
            return
        event = {"type": type_, "breed": breed, "message": message, "time": time.time()}
        if breed is not None:
            event["counts"] = self.counts(breed)
        event.update(extra)
        try:
            self.on_event(event)
        except Exception:  # noqa: BLE001 - a broken display must not kill the job
            pass

    def counts(self, breed: str) -> dict[str, int]:
        return self.manifest.breed_counts(self.o.dataset, breed).get(breed, empty_counts())

    def error(self, message: str, breed: str | None = None, kind: str = "error") -> None:
        with self._lock:
            self.errors.append(message)
        self.emit("error", breed, message, kind=kind)

    # -- downloads ---------------------------------------------------------------------------
    def download_worker(self) -> None:
        while True:
            item = self.downloads.get()
            if item is None or self.stop.is_set():
                return
            url, breed = item
            try:
                result = self.downloader.download(
                    url, self.folders[breed], find_existing=lambda sha: self.manifest.find_sha(self.o.dataset, sha))
            except DownloadStopped:
                return
            except Exception as exc:  # noqa: BLE001 - one URL's bug must not end the job
                self.manifest.record_result(self.o.dataset, breed, url, state="failed",
                                            error=f"internal error: {exc!r}")
                self.emit("download", breed, f"{url}: internal error: {exc!r}", url=url, state="failed")
                continue
            self.manifest.record_result(self.o.dataset, breed, url, state=result.state, http_status=result.http_status,
                                        nbytes=result.nbytes, sha256=result.sha256, path=result.path,
                                        error=result.error)
            with self._lock:
                self.this_run[result.state] += 1
            message = f"{url}: {result.error}" if result.error else ""
            self.emit("download", breed, message, url=url, state=result.state)
            if result.fatal:
                self.stopped_reason = f"{result.error}; stopped (rerun to resume once there is space)"
                self.error(self.stopped_reason, breed, kind="disk_full")
                self.stop.set()
                return

    def enqueue(self, breed: str, urls: list[str]) -> None:
        if not self.o.urls_only:
            for url in urls:
                self.downloads.put((url, breed))

    # -- searches ----------------------------------------------------------------------------
    def search_worker(self) -> None:
        browser: Browser | None = None
        first = True
        try:
            while not self.stop.is_set() and not self.search_aborted.is_set():
                try:
                    breed = self.searches.get_nowait()
                except queue.Empty:
                    return
                if browser is None:  # started only when a query needs it (a resumed job may not)
                    try:
                        browser = Browser(BrowserOptions(chrome=self.o.chrome, chromedriver=self.o.chromedriver,
                                                         headless=self.o.headless)).start()
                    except BrowserNotFound as exc:
                        if not self.search_aborted.is_set():
                            self.search_aborted.set()
                            self.error(str(exc), kind="browser")
                        return
                if not first and self.o.delay > 0 and self.stop.wait(self.o.delay):
                    return
                first = False
                if not self.search_one(browser, breed):
                    browser.quit()  # it may have crashed: the next query gets a fresh one
                    browser = None
        finally:
            if browser is not None:
                browser.quit()

    def search_one(self, browser: Browser, breed: str) -> bool:
        """Search one breed; False when the browser itself may be broken."""
        o, engine = self.o, self.engine
        query = query_for(breed)
        self.manifest.start_query(o.dataset, engine.name, breed, query, o.max_per_breed)
        self.emit("query_start", breed, f"searching {engine.label} for {query!r}", query=query)

        def on_urls(urls: list[str]) -> None:
            new = self.manifest.add_urls(o.dataset, breed, urls, engine=engine.name, query=query)
            with self._lock:
                self.this_run["found"] += len(new)
            self.enqueue(breed, new)
            self.emit("found", breed, f"{len(new)} new URLs", new=len(new))

        record = {"breed": breed, "query": query, "state": "done", "found": 0, "error": None}
        browser_ok = True
        try:
            found = collect_urls(browser.driver, engine, query, SearchOptions(
                max_results=o.max_per_breed, delay=o.delay, scroll_wait=o.scroll_wait,
                preview_timeout=o.preview_timeout), on_urls=on_urls, stop_event=self.stop)
            record["found"] = len(found)
            with self._lock:
                self.unreachable_in_a_row = 0
            self.manifest.finish_query(o.dataset, engine.name, breed, query, state="done", found=len(found))
            self.emit("query_done", breed, f"{len(found)} URLs for {query!r}", found=len(found))
        except SearchStopped:
            record["state"] = "stopped"  # stays "running" in the manifest: the next run searches again
            self.emit("query_stopped", breed, f"search for {query!r} stopped; the next run repeats it")
        except WallError as exc:
            record.update(state="blocked", error=str(exc))
            self.manifest.finish_query(o.dataset, engine.name, breed, query, state="blocked", error=str(exc))
            self.search_aborted.set()  # the same wall would greet every other query
            self.error(str(exc), breed, kind=exc.kind)
        except UnreachableError as exc:
            # "blocked" in the manifest: not the query's fault, so it does not use up its attempts
            msg = f"engine {engine.name}: search for {query!r} failed: {exc}"
            record.update(state="unreachable", error=msg)
            self.manifest.finish_query(o.dataset, engine.name, breed, query, state="blocked", error=msg)
            self.error(msg, breed, kind="unreachable")
            self._unreachable(exc)
        except NoResultsError as exc:
            record.update(state="failed", error=str(exc))
            self.manifest.finish_query(o.dataset, engine.name, breed, query, state="failed", error=str(exc))
            self.error(str(exc), breed, kind="no_results")
        except Exception as exc:  # noqa: BLE001 - WebDriver errors, a crashed tab: report, go on
            if self.stop.is_set():
                record["state"] = "stopped"
                self.emit("query_stopped", breed, f"search for {query!r} stopped; the next run repeats it")
            else:
                first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                msg = f"engine {engine.name}: search for {query!r} failed: {type(exc).__name__}: {first_line}"
                record.update(state="failed", error=msg)
                self.manifest.finish_query(o.dataset, engine.name, breed, query, state="failed", error=msg)
                self.error(msg, breed, kind="search")
                browser_ok = False
        with self._lock:
            self.queries.append(record)
        return browser_ok

    def _unreachable(self, exc: UnreachableError) -> None:
        """Count a search that could not reach the engine; stop searching after a few in a row."""
        with self._lock:
            self.unreachable_in_a_row += 1
            if self.unreachable_in_a_row < UNREACHABLE_LIMIT or self.search_aborted.is_set():
                return
            self.search_aborted.set()
            self.stopped_reason = (f"cannot reach {exc.host} ({exc.code}): {exc.cause}; stopped searching after "
                                   f"{self.unreachable_in_a_row} searches failed in a row (rerun to resume)")
        self.error(self.stopped_reason, kind="offline")

    # -- the whole job -----------------------------------------------------------------------
    def run(self) -> ScrapeSummary:
        try:
            return self._run()
        finally:
            self.manifest.close()

    def _run(self) -> ScrapeSummary:
        o = self.o
        interrupted = False
        reap_stale_browsers()  # browsers of an earlier run that was killed with SIGKILL
        for folder in self.folders.values():
            remove_partials(folder)
        to_search = [b for b in self.breeds
                     if self.manifest.query_needed(o.dataset, self.engine.name, b, query_for(b),
                                                   max_results=o.max_per_breed, max_attempts=o.max_attempts)]
        for breed in to_search:
            self.searches.put(breed)
        pending = [] if o.urls_only else self.manifest.urls_to_fetch(o.dataset, self.breeds,
                                                                     max_attempts=o.max_attempts)
        n_search = self.searches.qsize()
        self.emit("start", None, f"{len(self.breeds)} breeds on {self.engine.label}: {n_search} to search, "
                                 f"{len(pending)} URLs left from earlier runs",
                  breeds=self.breeds, to_search=to_search, engine=self.engine.name, dataset=o.dataset,
                  all_counts={b: self.counts(b) for b in self.breeds})
        for url, breed in pending:
            self.downloads.put((url, breed))
        downloaders = [] if o.urls_only else [
            threading.Thread(target=self.download_worker, name=f"scrape-download-{i}", daemon=True)
            for i in range(o.workers)]
        searchers = [threading.Thread(target=self.search_worker, name=f"scrape-browser-{i}", daemon=True)
                     for i in range(min(o.browsers, n_search))]
        for t in downloaders + searchers:
            t.start()
        try:
            _join_all(searchers)
            for _ in downloaders:
                self.downloads.put(None)  # after every URL already queued
            _join_all(downloaders)
        except KeyboardInterrupt:
            interrupted = True
            self.stop.set()
            for _ in downloaders:
                self.downloads.put(None)
            for t in searchers + downloaders:
                t.join(timeout=60)
        finally:
            self.downloader.close()
        if self.stop.is_set() and self.stopped_reason is None and not interrupted:
            interrupted = True  # stopped from outside through stop_event
        counts = {b: self.counts(b) for b in self.breeds}
        summary = ScrapeSummary(counts=counts, this_run=dict(self.this_run), queries=list(self.queries),
                                errors=list(self.errors), interrupted=interrupted, stopped_reason=self.stopped_reason)
        t = summary.totals()
        self.emit("done", None, f"{t['downloaded']} images stored, {t['found']} URLs found, "
                                f"{t['failed'] + t['rejected']} failed or rejected, "
                                f"{summary.searches_failed} searches failed"
                  + (" (interrupted)" if interrupted else ""),
                  all_counts=counts, this_run=summary.this_run, interrupted=interrupted,
                  searches_failed=summary.searches_failed, stopped_reason=self.stopped_reason)
        return summary


def _join_all(threads: list[threading.Thread]) -> None:
    # Short joins keep the main thread responsive to Ctrl-C.
    for t in threads:
        while t.is_alive():
            t.join(timeout=0.2)


def run_scrape(options: ScrapeOptions, *, on_event: EventCallback | None = None,
               stop_event: threading.Event | None = None) -> ScrapeSummary:
    """Run a scrape to completion (or until ``stop_event`` is set / Ctrl-C) and summarise it.

    Raises ScrapeError for options that cannot work or a manifest held by another scrape;
    everything else (missing browser, captcha, bad URLs, full disk) ends up in the summary's
    ``errors`` and in ``error`` events, and what was done is kept."""
    options.validate()
    try:
        options.data_dir = Path(options.data_dir)
        options.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ScrapeError(f"cannot create {options.data_dir}: {exc.strerror or exc}") from None
    with _ManifestLock(Path(options.manifest_path)):
        return _Job(options, on_event, stop_event).run()


def searches_needed(options: ScrapeOptions) -> list[str]:
    """Breeds this job would search (the rest are done in the manifest); no browser needed if empty."""
    engine = get_engine(options.engine)
    if not Path(options.manifest_path).is_file():
        return [breed_slug(b) for b in options.breeds]
    with Manifest(options.manifest_path) as manifest:
        return [b for b in dict.fromkeys(breed_slug(x) for x in options.breeds)
                if manifest.query_needed(options.dataset, engine.name, b, query_for(b),
                                         max_results=options.max_per_breed, max_attempts=options.max_attempts)]


def export_csv(manifest_path: str | os.PathLike, out_dir: str | os.PathLike, *, dataset: str = "dogs",
               breeds: list[str] | None = None, states: tuple[str, ...] | None = None) -> dict[str, Path]:
    """One CSV per breed (columns url,breed) for img2dataset; returns breed -> file."""
    from scraper.export import write_breed_csvs

    with Manifest(manifest_path) as manifest:
        return write_breed_csvs(manifest, Path(out_dir), dataset=dataset, breeds=breeds, states=states)
