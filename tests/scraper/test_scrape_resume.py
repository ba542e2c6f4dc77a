"""Kill a real `ddpm-tui scrape` process with SIGKILL midway (mid-download), rerun it, and it finishes
without searching again or fetching any already downloaded URL a second time."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from contextlib import closing

import pytest

from scraper.download import PART_PREFIX
from scraper_testkit import bing_page, jpeg_bytes, serve_results, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.usefixtures("needs_browser")]

N = 12
FIRST = 4  # images served at once; the rest wait at a gate until the first process is dead


def _gated(body, gate, index):
    def route(req):
        if index >= FIRST:
            gate.wait(60)  # the first process is killed while it waits here, mid-download
        req.send(200, body, "image/jpeg")

    return route


def _manifest_state(db_path):
    """(query states, {url: state}) read the way another process (the studio) would."""
    if not db_path.exists():
        return [], {}
    try:
        with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)) as db:
            queries = [r[0] for r in db.execute("SELECT state FROM queries")]
            urls = dict(db.execute("SELECT url, state FROM urls"))
        return queries, urls
    except sqlite3.Error:
        return [], {}


def test_kill_9_then_rerun_resumes(tmp_path, server):
    gate = threading.Event()
    urls = [server.add(f"/img/{i}.jpg", _gated(jpeg_bytes(i), gate, i)) for i in range(N)]
    serve_results(server, "/images/search", bing_page(urls, initial=N, scroll_batches=0))
    ws = tmp_path / "ws"
    cmd = [sys.executable, "-m", "ddpm_tui", "--workspace", str(ws), "scrape", "--engine", "bing",
           "--breeds", "beagles", "--base-url", server.base, "--delay", "0", "--scroll-wait", "0.3",
           "--workers", "1", "--min-size", "32", "--quiet"]
    db = ws / "scrape.sqlite"
    log = open(tmp_path / "first.log", "wb")
    # Its own process group: the kill takes chromedriver and Chromium down with it.
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the browser profile lives in the test's folder
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        def midway():
            queries, states = _manifest_state(db)
            return queries == ["done"] and sum(s == "downloaded" for s in states.values()) == FIRST
        assert wait_until(lambda: midway() or proc.poll() is not None, timeout=120)
        assert proc.poll() is None, (tmp_path / "first.log").read_text()
        assert wait_until(lambda: server.count(f"/img/{FIRST}.jpg") == 1)  # in flight now
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        gate.set()
    assert proc.returncode == -signal.SIGKILL
    _, before = _manifest_state(db)
    done_before = [u for u, s in before.items() if s == "downloaded"]
    assert len(done_before) == FIRST and before[urls[FIRST]] == "pending"  # really midway

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert rerun.returncode == 0, rerun.stderr
    queries, after = _manifest_state(db)
    assert queries == ["done"] and set(after) == set(urls)
    assert all(s == "downloaded" for s in after.values()), after
    assert server.count("/images/search") == 1  # the finished search was not repeated
    for url in done_before:
        assert server.count(url[len(server.base):]) == 1, url  # never fetched again
    assert not list(tmp_path.glob("ddpm-tui-chrome-*"))  # the killed run's profile was cleaned up
    files = list((ws / "data" / "dogs" / "beagles").iterdir())
    assert len(files) == N and not any(f.name.startswith(PART_PREFIX) for f in files)
