"""Downloads against a fault-injecting image server on 127.0.0.1: every fault ends in the
right manifest state, nothing lands outside the breed folder, duplicates are stored once."""

from __future__ import annotations

import io
import subprocess
import time

import pytest
from PIL import Image

from scraper_testkit import jpeg_bytes, png_bomb
from scraper.breeds import query_for
from scraper.download import PART_PREFIX, DownloadOptions, Downloader, decode_image, parse_retry_after
from scraper.job import ScrapeOptions, run_scrape
from scraper.manifest import Manifest


def _then(first, then):
    """A route that answers with ``first`` on the first request and ``then`` afterwards."""
    calls = []

    def route(req):
        calls.append(1)
        (first if len(calls) == 1 else then)(req)

    return route


def _ok(body):
    return lambda req: req.send(200, body, "image/jpeg")


def _trickle(req):
    h = req.handler
    h.send_response(200)
    h.send_header("Content-Type", "image/jpeg")
    h.send_header("Content-Length", "5000")
    h.end_headers()
    for _ in range(100):  # 1 byte every 50 ms: each read is quick, the whole transfer is not
        h.wfile.write(b"\xff")
        h.wfile.flush()
        time.sleep(0.05)


def _endless_no_length(req):
    h = req.handler
    h.send_response(200)
    h.send_header("Content-Type", "image/jpeg")
    h.end_headers()
    for _ in range(64):  # 4 MiB without Content-Length: only the streaming cap stops it
        h.wfile.write(b"\x00" * 65536)


def _exif_rotated() -> bytes:
    im = Image.new("RGB", (120, 70), (10, 200, 30))
    exif = im.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif)
    return buf.getvalue()


def _rgba_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (80, 80), (255, 0, 0, 0)).save(buf, "PNG")
    return buf.getvalue()


FAULTS = {
    # path: (expected state, substring of the error or None)
    "/img/good.jpg": ("downloaded", None),
    "/img/missing.jpg": ("failed", "HTTP 404"),
    "/img/flaky.jpg": ("downloaded", None),  # 500, then the image
    "/img/busy.jpg": ("downloaded", None),  # 429 Retry-After: 1, then the image
    "/img/very-busy.jpg": ("downloaded", None),  # 429 Retry-After: 3600 (capped), then the image
    "/img/down.jpg": ("failed", "HTTP 503"),  # 503 forever
    "/img/trickle.jpg": ("failed", "timed out"),
    "/img/huge.jpg": ("rejected", "too large"),  # Content-Length over the cap
    "/img/endless.jpg": ("rejected", "too large"),  # no Content-Length, body over the cap
    "/img/page.jpg": ("rejected", "not an image (got HTML)"),  # HTML served as image/jpeg
    "/img/truncated.jpg": ("rejected", "truncated"),
    "/img/bomb.png": ("rejected", "decompression bomb"),
    "/img/tiny.jpg": ("rejected", "too small"),
    "/loop/a": ("failed", "redirect loop"),
    "/chain/0": ("failed", "too many redirects"),
    "/img/..%2F..%2F..%2Fescape.jpg": ("downloaded", None),  # a name that tries to climb out
    "/img/copy-a.jpg": ("downloaded", None),  # the same bytes at two URLs
    "/img/copy-b.jpg": ("duplicate", None),
    "/img/rotated.jpg": ("downloaded", None),
    "/img/alpha.png": ("downloaded", None),
}


@pytest.fixture
def fault_site(server):
    s = server
    s.static("/img/good.jpg", jpeg_bytes(1))
    s.add("/img/flaky.jpg", _then(lambda r: r.send(500, b"oops", "text/plain"), _ok(jpeg_bytes(2))))
    s.add("/img/busy.jpg", _then(lambda r: r.send(429, b"slow down", "text/plain", {"Retry-After": "1"}),
                                 _ok(jpeg_bytes(3))))
    s.add("/img/very-busy.jpg", _then(lambda r: r.send(429, b"", "text/plain", {"Retry-After": "3600"}),
                                      _ok(jpeg_bytes(4))))
    s.add("/img/down.jpg", lambda r: r.send(503, b"down", "text/plain"))
    s.add("/img/trickle.jpg", _trickle)
    s.static("/img/huge.jpg", b"\xff" * 300_000)
    s.add("/img/endless.jpg", _endless_no_length)
    s.static("/img/page.jpg", b"<!doctype html><html><body>Not found, but 200</body></html>")
    s.static("/img/truncated.jpg", jpeg_bytes(5, (400, 300))[:1500])
    s.static("/img/bomb.png", png_bomb(), "image/png")
    s.static("/img/tiny.jpg", jpeg_bytes(6, (20, 20)))
    s.add("/loop/a", lambda r: r.redirect("/loop/b"))
    s.add("/loop/b", lambda r: r.redirect("/loop/a"))
    for i in range(10):
        s.add(f"/chain/{i}", lambda r, i=i: r.redirect(f"/chain/{i + 1}"))
    s.static("/img/..%2F..%2F..%2Fescape.jpg", jpeg_bytes(7))
    s.static("/img/copy-a.jpg", jpeg_bytes(8))
    s.static("/img/copy-b.jpg", jpeg_bytes(8))
    s.static("/img/rotated.jpg", _exif_rotated())
    s.static("/img/alpha.png", _rgba_png(), "image/png")
    return s


def _options(tmp_path, **kw) -> ScrapeOptions:
    base = dict(data_dir=tmp_path / "ws" / "data" / "dogs", manifest_path=tmp_path / "ws" / "scrape.sqlite",
                breeds=["beagles"], engine="bing", workers=6, delay=0, timeout=1.0, max_bytes=200_000,
                min_size=32, backoff=0.05, max_retry_after=0.3, retries=2, base_url="http://127.0.0.1:9")
    base.update(kw)
    return ScrapeOptions(**base)


def _seed_manifest(options: ScrapeOptions, urls: list[str]) -> None:
    """URLs already found by an earlier run's search: this run only downloads."""
    with Manifest(options.manifest_path) as m:
        q = query_for("beagles")
        m.start_query(options.dataset, options.engine, "beagles", q, options.max_per_breed)
        m.add_urls(options.dataset, "beagles", urls, engine=options.engine, query=q)
        m.finish_query(options.dataset, options.engine, "beagles", q, state="done", found=len(urls))


def test_every_fault_ends_in_the_right_state(tmp_path, fault_site):
    options = _options(tmp_path)
    urls = {path: fault_site.url(path) for path in FAULTS}
    _seed_manifest(options, list(urls.values()))
    events = []
    summary = run_scrape(options, on_event=events.append)

    with Manifest(options.manifest_path) as m:
        for path, (state, error) in FAULTS.items():
            rec = m.url_record("dogs", "beagles", urls[path])
            assert rec["state"] == state, (path, rec)
            if error:
                assert error in rec["error"], (path, rec["error"])
            if state in ("downloaded", "duplicate"):
                assert rec["error"] is None and rec["sha256"] and rec["path"]
        a = m.url_record("dogs", "beagles", urls["/img/copy-a.jpg"])
        b = m.url_record("dogs", "beagles", urls["/img/copy-b.jpg"])
        assert a["path"] == b["path"] and a["sha256"] == b["sha256"]
        assert m.url_record("dogs", "beagles", urls["/img/missing.jpg"])["http_status"] == 404

    folder = options.data_dir / "beagles"
    stored = sorted(folder.iterdir())
    n_downloaded = sum(1 for s, _ in FAULTS.values() if s == "downloaded")
    assert len(stored) == n_downloaded  # the duplicate is stored once, no temp files left
    assert all(p.suffix == ".jpg" and len(p.stem) == 20 for p in stored)
    # nothing outside the breed folder: the workspace holds only data/dogs/beagles/* and the manifest
    everything = {p.relative_to(tmp_path / "ws").as_posix() for p in (tmp_path / "ws").rglob("*") if p.is_file()}
    assert {p for p in everything if not p.startswith("scrape.sqlite")} == {
        f"data/dogs/beagles/{p.name}" for p in stored}
    assert not list(tmp_path.glob("escape*")) and not list((tmp_path / "ws").glob("*.jpg"))
    for p in stored:
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
    with Manifest(options.manifest_path) as m:
        rotated = m.resolve_path(m.url_record("dogs", "beagles", urls["/img/rotated.jpg"])["path"])
    with Image.open(rotated) as im:
        assert im.size == (70, 120)  # EXIF orientation applied
    assert fault_site.count("/img/flaky.jpg") == 2 and fault_site.count("/img/busy.jpg") == 2
    assert fault_site.count("/img/down.jpg") == 3  # 1 + 2 retries
    assert summary.this_run["downloaded"] == n_downloaded and summary.this_run["duplicate"] == 1
    assert [e["type"] for e in events][0] == "start" and events[-1]["type"] == "done"
    assert sum(1 for e in events if e["type"] == "download") == len(FAULTS)


def test_rerun_fetches_only_failed_urls_up_to_the_limit(tmp_path, fault_site):
    options = _options(tmp_path, max_attempts=2)
    urls = [fault_site.url(p) for p in ("/img/good.jpg", "/img/missing.jpg", "/img/tiny.jpg")]
    _seed_manifest(options, urls)
    run_scrape(options)
    run_scrape(options)
    run_scrape(options)
    assert fault_site.count("/img/good.jpg") == 1  # downloaded: never again
    assert fault_site.count("/img/tiny.jpg") == 1  # rejected: permanent
    assert fault_site.count("/img/missing.jpg") == 2  # failed: retried until max_attempts
    with Manifest(options.manifest_path) as m:
        assert m.url_record("dogs", "beagles", urls[1])["attempts"] == 2


def test_parse_retry_after():
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert 0 <= parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") <= 0.0 + 1e-9


def test_decode_image_reasons():
    with pytest.raises(ValueError, match="empty body"):
        decode_image(b"")
    with pytest.raises(ValueError, match="decompression bomb"):
        decode_image(png_bomb(5000, 5000), max_pixels=1_000_000)
    im = decode_image(jpeg_bytes(1, (64, 64)), min_size=64)
    assert im.mode == "RGB" and im.size == (64, 64)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs: a full disk after the first photo (needs root to mount)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root) to simulate a full disk")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def _noise_jpeg(seed: int, size: int) -> bytes:
    noise = Image.effect_noise((size, size), 60 + seed).convert("RGB")  # noise: JPEG cannot shrink it
    buf = io.BytesIO()
    noise.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_full_disk_fails_that_url_and_leaves_no_half_file(tiny_disk, server):
    url = server.static("/img/noise.jpg", _noise_jpeg(0, 400))
    result = Downloader(DownloadOptions(timeout=5)).download(url, tiny_disk / "beagles")
    assert result.state == "failed" and result.fatal
    assert "disk full" in result.error and str(tiny_disk / "beagles") in result.error
    assert list((tiny_disk / "beagles").iterdir()) == []  # no half-written file, no temp file


def test_full_disk_stops_the_job_cleanly(tmp_path, tiny_disk, server):
    urls = [server.static(f"/img/n{i}.jpg", _noise_jpeg(i, 300)) for i in range(6)]
    options = _options(tmp_path, data_dir=tiny_disk / "dogs", workers=1)
    _seed_manifest(options, urls)
    summary = run_scrape(options)
    assert summary.stopped_reason and "disk full" in summary.stopped_reason
    assert not summary.ok
    with Manifest(options.manifest_path) as m:
        states = [r["state"] for r in m.url_rows("dogs")]
    assert "failed" in states and "pending" in states  # stopped; the rest waits for a rerun
    for p in (tiny_disk / "dogs" / "beagles").iterdir():
        assert not p.name.startswith(PART_PREFIX)
        with Image.open(p) as im:
            im.load()  # every stored file is whole


def test_stop_event_leaves_the_rest_pending(tmp_path, server):
    import threading

    gate = threading.Event()

    def held(req):
        gate.wait(30)
        req.send(200, jpeg_bytes(9), "image/jpeg")

    urls = [server.static("/img/first.jpg", jpeg_bytes(1))] + [server.add(f"/img/held{i}.jpg", held) for i in range(3)]
    options = _options(tmp_path, workers=1)
    _seed_manifest(options, urls)
    stop = threading.Event()

    def on_event(event):
        if event["type"] == "download":
            stop.set()  # as Ctrl-C / SIGTERM would, after the first photo
            gate.set()

    summary = run_scrape(options, on_event=on_event, stop_event=stop)
    assert summary.interrupted and not summary.ok
    with Manifest(options.manifest_path) as m:
        states = {r["url"]: r["state"] for r in m.url_rows("dogs")}
    assert states[urls[0]] == "downloaded"
    assert list(states.values()).count("pending") >= 2  # not marked failed: the next run fetches them


def test_cli_events_file_and_summary(tmp_path, fault_site, capsys):
    import argparse
    import json

    from ddpm_tui.commands import scrape as scrape_cmd
    from ddpm_tui.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    options = _options(tmp_path)
    urls = [fault_site.url(p) for p in ("/img/good.jpg", "/img/missing.jpg", "/img/copy-a.jpg", "/img/copy-b.jpg")]
    _seed_manifest(options, urls)  # searched earlier: this run needs no browser
    parser = argparse.ArgumentParser(prog="ddpm-tui")
    scrape_cmd.register(parser.add_subparsers(dest="command"))
    events_file = tmp_path / "events" / "scrape.jsonl"
    args = parser.parse_args(["scrape", "--breeds", "beagles", "--engine", "bing", "--events", str(events_file),
                              "--quiet", "--min-size", "32", "--chromedriver", str(tmp_path / "none")])
    assert args.func(args, ws) == 0
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    assert [e["type"] for e in events if e["type"] != "download"] == ["start", "done"]
    assert sorted(e["state"] for e in events if e["type"] == "download") == [
        "downloaded", "downloaded", "duplicate", "failed"]
    assert events[-1]["all_counts"]["beagles"]["downloaded"] == 2
    err = capsys.readouterr().err
    assert "this run: 0 new URLs, 2 images stored, 1 duplicates, 1 failed, 0 rejected" in err
