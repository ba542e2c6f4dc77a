"""Test helpers for the scraper: a local web server (results pages and a fault-injecting
image server on 127.0.0.1), fixture pages and generated images."""

from __future__ import annotations

import io
import json
import os
import shutil
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from PIL import Image

CHROMEDRIVER = shutil.which("chromedriver") or next(
    (p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver") if os.path.exists(p)), None)


# -- images ---------------------------------------------------------------------------------
def jpeg_bytes(seed: int, size: tuple[int, int] = (96, 80)) -> bytes:
    """A small distinct JPEG (colour from ``seed``)."""
    im = Image.new("RGB", size, ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256))
    for x in range(0, size[0], 8):  # some structure so JPEG is not trivially flat
        im.putpixel((x, (x * seed) % size[1]), (255, 255, 255))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 8] = width.to_bytes(4, "big")
    data[ihdr + 8:ihdr + 12] = height.to_bytes(4, "big")
    crc = zlib.crc32(bytes(data[ihdr:ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17:ihdr + 21] = crc.to_bytes(4, "big")
    return bytes(data)


# -- the server -----------------------------------------------------------------------------
Route = Callable[["Request"], None]


class Request:
    """What a route sees: the handler plus helpers to answer."""

    def __init__(self, handler: BaseHTTPRequestHandler, server: "FixtureServer") -> None:
        self.handler = handler
        self.server = server
        parts = urlsplit(handler.path)
        self.path = parts.path
        self.query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.cookies = handler.headers.get("Cookie", "")
        self.user_agent = handler.headers.get("User-Agent", "")

    def send(self, status: int, body: bytes = b"", content_type: str = "text/html; charset=utf-8",
             headers: dict[str, str] | None = None) -> None:
        h = self.handler
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        if body:
            h.wfile.write(body)

    def redirect(self, location: str, status: int = 302) -> None:
        self.send(status, b"", headers={"Location": location})


class FixtureServer:
    """ThreadingHTTPServer on 127.0.0.1 with routes by path; counts requests per path."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                req = Request(self, outer)
                with outer._lock:
                    outer.counts[req.path] += 1
                route = outer.routes.get(req.path)
                try:
                    if route is None:
                        req.send(404, b"not found")
                    else:
                        route(req)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (byte cap, timeout): expected

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return self.base + path

    def add(self, path: str, route: Route) -> str:
        self.routes[path] = route
        return self.url(path)

    def static(self, path: str, body: bytes, content_type: str = "image/jpeg", status: int = 200) -> str:
        return self.add(path, lambda req: req.send(status, body, content_type))

    def count(self, path: str) -> int:
        with self._lock:
            return self.counts[path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# -- results pages --------------------------------------------------------------------------
_PAGE_JS = """
const ALL = %(items)s;
let shown = 0;
const INITIAL = %(initial)d, BATCH = %(batch)d, SCROLL_BATCHES = %(scroll_batches)d;
let scrollBatches = 0;
function addItems(n) {
  const grid = document.getElementById('grid');
  for (let i = 0; i < n && shown < ALL.length; i++, shown++) {
    grid.insertAdjacentHTML('beforeend', makeItem(ALL[shown], shown));
  }
  updateMore();
}
function updateMore() {
  const more = document.getElementById('more');
  more.style.display = (scrollBatches >= SCROLL_BATCHES && shown < ALL.length) ? 'block' : 'none';
}
let loading = false;
window.addEventListener('scroll', () => {
  if (loading || scrollBatches >= SCROLL_BATCHES || shown >= ALL.length) return;
  if (window.innerHeight + window.scrollY >= document.body.scrollHeight - 50) {
    loading = true;
    setTimeout(() => { scrollBatches++; addItems(BATCH); loading = false; }, 60);
  }
});
document.getElementById('more').addEventListener('click', () => {
  setTimeout(() => addItems(BATCH), 60);
});
addItems(INITIAL);
"""

THUMB = "data:image/gif;base64,R0lGODlhAQABAAAAACw="


def bing_page(urls: list[str], *, initial: int = 4, batch: int = 3, scroll_batches: int = 2,
              fallback_links: bool = False) -> str:
    """A Bing-like results page: ``a.iusc`` with JSON ``m`` attributes (``murl``), data:
    thumbnails, infinite scroll for ``scroll_batches`` batches, then a "See more" button.
    ``fallback_links`` uses only ``a[href*=mediaurl=]`` links (older markup)."""
    if fallback_links:
        make = ("function makeItem(u, i) { return '<div class=\"tile\"><a href=\"/images/search?view=detail&mediaurl=' "
                "+ encodeURIComponent(u) + '&idx=' + i + '\"><img src=\"%s\" width=\"200\" height=\"300\"></a></div>'; }"
                % THUMB)
    else:
        make = ("function makeItem(u, i) { const m = JSON.stringify({murl: u, turl: '%s', purl: 'http://example.invalid/p' + i});"
                " const esc = m.replace(/&/g, '&amp;').replace(/\"/g, '&quot;');"
                " return '<div class=\"imgpt\"><a class=\"iusc\" m=\"' + esc + '\" href=\"#\"><img class=\"mimg\" src=\"%s\" "
                "width=\"200\" height=\"300\"></a></div>'; }" % (THUMB, THUMB))
    js = _PAGE_JS % {"items": json.dumps(urls), "initial": initial, "batch": batch, "scroll_batches": scroll_batches}
    return f"""<!doctype html><html><head><title>dogs - Bing images</title>
<style>.imgpt, .tile {{ display: block; height: 320px; }}</style></head>
<body><div id="grid"></div>
<a class="btn_seemore" id="more" href="javascript:void(0)" style="display:none">See more images</a>
<script>{make}
{js}</script></body></html>"""


def google_page(urls: list[str], *, initial: int = 4, batch: int = 3, scroll_batches: int = 2,
                swap_ms: int = 80) -> str:
    """A Google-like results page: ``div[data-ri] img.rg_i`` thumbnails (data: src); clicking
    one shows a side-panel ``img.sFlh5c`` that first shows a data: thumbnail, then an
    encrypted-tbn URL, and only after ``2*swap_ms`` the original. Infinite scroll, then a
    "Show more results" ``input.mye4qd`` button."""
    make = ("function makeItem(u, i) { return '<div class=\"isv-r\" data-ri=\"' + i + '\"><img class=\"rg_i\" "
            "src=\"%s\" width=\"200\" height=\"300\" onclick=\"openPreview(' + i + ')\"></div>'; }" % THUMB)
    preview = """
let token = 0;
function openPreview(i) {
  const img = document.getElementById('preview');
  const my = ++token;
  img.src = '%s';
  setTimeout(() => { if (my === token) img.src = location.origin + '/encrypted-tbn0/images?q=tbn:' + i; }, %d);
  setTimeout(() => { if (my === token) img.src = ALL[i]; }, %d);
}
""" % (THUMB, swap_ms, 2 * swap_ms)
    js = _PAGE_JS % {"items": json.dumps(urls), "initial": initial, "batch": batch, "scroll_batches": scroll_batches}
    return f"""<!doctype html><html><head><title>dogs - Google Search</title>
<style>.isv-r {{ display: block; height: 320px; width: 220px; }}
#panel {{ position: fixed; right: 0; top: 0; width: 300px; height: 300px; }}</style></head>
<body><div id="grid"></div>
<input class="mye4qd" id="more" type="button" value="Show more results" style="display:none">
<div id="panel"><img id="preview" class="sFlh5c FyHeAf" src="" alt=""></div>
<script>{make}
{preview}
{js}</script></body></html>"""


CONSENT_PAGE = """<!doctype html><html><head><title>Before you continue</title></head><body>
<form action="/consent/save" method="get" onsubmit="return false;">
<p>We use cookies and data to deliver our services.</p>
<button id="W0wltc" type="button" onclick="go()">Reject all</button>
<button id="L2AGLb" type="button" onclick="go()">Accept all</button>
</form>
<script>function go() { document.cookie = 'CONSENT=YES+; path=/';
 location.href = new URLSearchParams(location.search).get('continue'); }</script>
</body></html>"""

CAPTCHA_PAGE = """<!doctype html><html><head><title>Sorry...</title></head><body>
<div>Our systems have detected unusual traffic from your computer network.</div>
<form id="captcha-form" action="index" method="post"><div class="g-recaptcha"></div></form>
</body></html>"""


def serve_results(server: FixtureServer, path: str, page: str, *, consent: bool = False,
                  captcha: bool = False) -> None:
    """Serve ``page`` at ``path`` (the engine's search path), behind a consent wall (until the
    consent cookie is set) or a captcha when asked."""
    def results(req: Request) -> None:
        if captcha:
            req.redirect("/sorry/index?continue=" + req.handler.path)
        elif consent and "CONSENT=YES" not in req.cookies:
            from urllib.parse import quote
            req.redirect("/consent/ml?continue=" + quote(req.server.url(req.handler.path), safe=""))
        else:
            req.send(200, page.encode())

    server.add(path, results)
    server.add("/consent/ml", lambda req: req.send(200, CONSENT_PAGE.encode()))
    server.add("/sorry/index", lambda req: req.send(200, CAPTCHA_PAGE.encode()))


def wait_until(predicate: Callable[[], bool], timeout: float = 60.0, poll: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return predicate()
