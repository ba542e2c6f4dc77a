"""Whole scrapes in-process with a real headless Chromium against the local site, and the
`ddpm-tui scrape` command's user-facing behaviour."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import pytest

from ddpm_tui.commands import scrape as scrape_cmd
from ddpm_tui.commands._common import CLIError
from ddpm_tui.workspace import Workspace
from scraper.job import ScrapeError, ScrapeOptions, run_scrape
from scraper.manifest import Manifest
from scraper_testkit import bing_page, jpeg_bytes, serve_results, wait_until


def _site(server, n=6):
    urls = [server.static(f"/img/{i}.jpg", jpeg_bytes(i)) for i in range(n)]
    urls.append(server.static("/img/copy.jpg", jpeg_bytes(0)))  # same bytes as 0.jpg
    urls.append(server.url("/img/gone.jpg"))  # 404
    serve_results(server, "/images/search", bing_page(urls, initial=3, batch=2, scroll_batches=1))
    return urls


def _options(tmp_path, server, **kw):
    base = dict(data_dir=tmp_path / "data" / "dogs", manifest_path=tmp_path / "scrape.sqlite", engine="bing",
                breeds=["beagles", "labrador_retrievers_dog_pictures"], base_url=server.base, delay=0,
                scroll_wait=0.4, workers=4, timeout=5, min_size=32)
    base.update(kw)
    return ScrapeOptions(**base)


@pytest.mark.browser
@pytest.mark.usefixtures("needs_browser")
@pytest.mark.slow
def test_scrape_resume_and_export(tmp_path, server):
    urls = _site(server)
    original_folder = tmp_path / "data" / "dogs" / "labrador_retrievers_dog_pictures"
    original_folder.mkdir(parents=True)  # a folder from the original's own scraper
    events = []
    summary = run_scrape(_options(tmp_path, server), on_event=events.append)
    assert summary.errors == [] and summary.ok  # a 404 is a failed URL, not a job error
    assert summary.counts["beagles"] == {"found": 8, "pending": 0, "downloaded": 6, "duplicate": 1, "failed": 1,
                                         "rejected": 0}
    # the second breed finds the same photos: all exact duplicates of the first breed's files
    assert summary.counts["labrador_retrievers"]["duplicate"] == 7
    assert len(list((tmp_path / "data" / "dogs" / "beagles").glob("*.jpg"))) == 6
    assert list(original_folder.iterdir()) == []  # the original's folder is that breed's folder (nothing new to store)
    assert not (tmp_path / "data" / "dogs" / "labrador_retrievers").exists()
    assert server.count("/images/search") == 2
    types = [e["type"] for e in events]
    assert types[0] == "start" and types[-1] == "done"
    assert {"query_start", "found", "query_done", "download"} <= set(types)
    for e in events:
        json.dumps(e)  # the studio reads them as JSON lines
        assert {"type", "breed", "message", "time"} <= set(e)
    with Manifest(tmp_path / "scrape.sqlite") as m:
        assert m.breed_counts() == summary.counts

    # rerun: nothing searched again, nothing fetched again except the failed URL
    fetched = {u: server.count(u.split(str(server.port))[1]) for u in urls}
    again = run_scrape(_options(tmp_path, server))
    assert server.count("/images/search") == 2
    for u in urls[:-1]:
        assert server.count(u.split(str(server.port))[1]) == fetched[u]
    assert server.count("/img/gone.jpg") == fetched[urls[-1]] + 2  # one retry per breed
    assert again.this_run["found"] == 0 and again.this_run["downloaded"] == 0

    # export: one CSV per breed for img2dataset
    ws = Workspace(tmp_path)
    parser = argparse.ArgumentParser(prog="ddpm-tui")
    scrape_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["scrape", "export", "--out", str(tmp_path / "csv")])
    assert args.func(args, ws) == 0
    with open(tmp_path / "csv" / "beagles.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["url"] for r in rows] == urls and {r["breed"] for r in rows} == {"beagles"}
    assert (tmp_path / "csv" / "labrador_retrievers.csv").is_file()


@pytest.mark.browser
@pytest.mark.usefixtures("needs_browser")
@pytest.mark.slow
def test_urls_only_with_two_browsers(tmp_path, server):
    urls = _site(server)
    breeds = ["beagles", "boxers", "pugs"]
    summary = run_scrape(_options(tmp_path, server, breeds=breeds, browsers=2, urls_only=True))
    assert summary.ok and summary.this_run["found"] == 3 * len(urls)
    assert {b: c["pending"] for b, c in summary.counts.items()} == {b: len(urls) for b in breeds}
    assert all(server.count(u[len(server.base):]) == 0 for u in urls)  # nothing downloaded
    assert server.count("/images/search") == 3 and sorted(q["breed"] for q in summary.queries) == breeds


@pytest.mark.browser
@pytest.mark.usefixtures("needs_browser")
def test_captcha_stops_searching_and_is_reported(tmp_path, server):
    serve_results(server, "/images/search", "", captcha=True)
    server.add("/sorry/index", lambda r: r.send(200, b"<div id='b_captcha'>Solve the challenge</div>"))
    summary = run_scrape(_options(tmp_path, server, urls_only=True))
    assert len(summary.errors) == 1 and "captcha" in summary.errors[0] and "bing" in summary.errors[0]
    assert not summary.ok
    with Manifest(tmp_path / "scrape.sqlite") as m:
        states = {q["breed"]: q["state"] for q in m.queries()}
    assert states == {"beagles": "blocked"}  # the other breed was not sent into the same wall
    assert server.count("/images/search") == 1


def test_missing_chromedriver_is_one_clear_line(tmp_path, server):
    events = []
    summary = run_scrape(_options(tmp_path, server, chromedriver=str(tmp_path / "no" / "chromedriver")),
                         on_event=events.append)
    assert len(summary.errors) == 1
    line = summary.errors[0]
    assert "\n" not in line and str(tmp_path / "no" / "chromedriver") in line
    assert "apt-get install chromium chromium-driver" in line
    assert server.count("/images/search") == 0


def _cli(tmp_path, *argv):
    parser = argparse.ArgumentParser(prog="ddpm-tui")
    scrape_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return args.func(args, Workspace(tmp_path / "ws"))


def test_cli_missing_chromedriver(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no chromedriver on PATH either
    with pytest.raises(CLIError) as info:
        _cli(tmp_path, "scrape", "--breeds", "beagles", "--chromedriver", "/nowhere/chromedriver")
    assert str(info.value).startswith("chromedriver /nowhere/chromedriver not found")
    assert "apt-get install chromium chromium-driver" in str(info.value) and "\n" not in str(info.value)


def test_cli_bad_input_names_the_value(tmp_path, capsys):
    with pytest.raises(CLIError, match="nope.txt: cannot read breeds file"):
        _cli(tmp_path, "scrape", "--breeds-file", str(tmp_path / "nope.txt"))
    with pytest.raises(CLIError, match="'//' has no letters or digits"):
        _cli(tmp_path, "scrape", "--breeds", "beagles,//")
    with pytest.raises(CLIError, match="base URL 'ftp://x'"):
        _cli(tmp_path, "scrape", "--base-url", "ftp://x")
    with pytest.raises(CLIError, match="no scrape manifest at"):
        _cli(tmp_path, "scrape", "export")
    for argv, needle in ((["--workers", "0"], "'0' must be >= 1"), (["--max-bytes", "lots"], "expected a size"),
                         (["--dataset", "../x"], "dataset name '../x'"), (["--engine", "yahoo"], "invalid choice")):
        with pytest.raises(SystemExit):
            _cli(tmp_path, "scrape", *argv)
        assert needle in capsys.readouterr().err


def test_cli_help_lists_export(capsys):
    with pytest.raises(SystemExit):
        _cli(Path("unused"), "scrape", "--help")
    out = capsys.readouterr().out
    assert "ddpm-tui scrape export" in out and "--urls-only" in out and "apt-get install chromium" in out


def test_options_are_checked(tmp_path):
    with pytest.raises(ScrapeError, match="unknown engine"):
        run_scrape(ScrapeOptions(data_dir=tmp_path, manifest_path=tmp_path / "m.sqlite", engine="yahoo"))


def test_a_crashed_browser_is_replaced_for_the_next_query(tmp_path, server, monkeypatch):
    import scraper.job as job

    started = []

    class FakeBrowser:
        def __init__(self, options):
            self.driver = object()

        def start(self):
            started.append(self)
            return self

        def quit(self):
            self.driver = None

    def fake_collect(driver, engine, query, options, *, on_urls=None, stop_event=None):
        if driver is None or query.startswith("beagles"):
            raise RuntimeError("chrome not reachable\n(Session info: chrome=156)")
        urls = [server.static(f"/img/{query[:5]}.jpg", jpeg_bytes(len(query)))]
        on_urls(urls)
        return urls

    monkeypatch.setattr(job, "Browser", FakeBrowser)
    monkeypatch.setattr(job, "collect_urls", fake_collect)
    summary = run_scrape(_options(tmp_path, server, breeds=["beagles", "boxers"]))
    assert len(started) == 2  # a fresh browser after the failure
    assert summary.errors == ["engine bing: search for 'beagles dog pictures' failed: RuntimeError: chrome not reachable"]
    assert summary.counts["boxers"]["downloaded"] == 1
    with Manifest(tmp_path / "scrape.sqlite") as m:
        assert {q["breed"]: q["state"] for q in m.queries()} == {"beagles": "failed", "boxers": "done"}


def test_browsers_orphaned_by_kill_9_are_reaped(tmp_path):
    import os
    import subprocess
    import sys

    from scraper.browser import PROFILE_PREFIX, reap_stale_browsers

    if not os.path.isdir("/proc"):
        pytest.skip("needs /proc (Linux)")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()  # a pid that has exited
    stale = tmp_path / f"{PROFILE_PREFIX}{dead}-abc"
    mine = tmp_path / f"{PROFILE_PREFIX}{os.getpid()}-def"
    stale.mkdir()
    mine.mkdir()
    sleeper = "import time; time.sleep(60)"
    orphan = subprocess.Popen([sys.executable, "-c", sleeper, f"--user-data-dir={stale}"])
    driver = subprocess.Popen([sys.executable, "-c", sleeper, f"--log-path={stale}/chromedriver.log"])
    alive = subprocess.Popen([sys.executable, "-c", sleeper, f"--user-data-dir={mine}"])
    try:
        assert wait_until(lambda: all(
            str(tmp_path) in open(f"/proc/{p.pid}/cmdline").read() for p in (orphan, driver, alive)))
        assert reap_stale_browsers(str(tmp_path)) == 2
        assert orphan.wait(timeout=10) == -9 and driver.wait(timeout=10) == -9
        assert alive.poll() is None  # its owner (this process) is alive: untouched
        assert not stale.exists() and mine.exists()
    finally:
        for p in (orphan, driver, alive):
            if p.poll() is None:
                p.kill()
                p.wait()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.browser
@pytest.mark.usefixtures("needs_browser")
@pytest.mark.parametrize("base, host, code", [
    ("closed", None, "ERR_CONNECTION_REFUSED"),
    ("http://no-such-engine.invalid", "no-such-engine.invalid", "ERR_NAME_NOT_RESOLVED"),
])
def test_cli_cannot_reach_the_engine_stops_early_and_says_why(tmp_path, capsys, base, host, code):
    from scraper.job import UNREACHABLE_LIMIT

    if base == "closed":
        port = _closed_port()
        base, host = f"http://127.0.0.1:{port}", f"127.0.0.1:{port}"
    breeds = "beagles,boxers,pugs,pomeranians,poodles"
    events_file = tmp_path / "events.jsonl"
    code_ = _cli(tmp_path, "scrape", "--breeds", breeds, "--engine", "bing", "--base-url", base, "--delay", "0",
                 "--quiet", "--events", str(events_file))
    assert code_ == 1
    err = capsys.readouterr().err
    stopped = [line for line in err.splitlines() if line.startswith("stopped: ")]
    assert len(stopped) == 1 and f"cannot reach {host} ({code})" in stopped[0]
    assert ("no network or no DNS" if "NAME" in code else "nothing listens there") in stopped[0]
    assert f"{UNREACHABLE_LIMIT} of {UNREACHABLE_LIMIT} searches failed" in err
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    assert sum(e["type"] == "query_start" for e in events) == UNREACHABLE_LIMIT  # not all five
    assert events[-1]["type"] == "done" and events[-1]["searches_failed"] == UNREACHABLE_LIMIT
    assert [e["kind"] for e in events if e["type"] == "error"] == ["unreachable"] * UNREACHABLE_LIMIT + ["offline"]
    # not the queries' fault: a rerun with a network searches every breed again
    with Manifest(tmp_path / "ws" / "scrape.sqlite") as m:
        assert {q["state"] for q in m.queries()} == {"blocked"}
