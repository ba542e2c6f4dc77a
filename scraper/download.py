"""Fetch one image URL, validate it, and store it once under its breed folder.

Fetching streams with urllib3 under a connect/read timeout, a whole-transfer deadline, a
byte cap and a redirect limit, and retries 429/5xx with backoff (honouring Retry-After,
capped). The body must decode fully with Pillow (decompression-bomb guard) and be at least
``min_size`` on its shorter side. It is stored re-encoded as RGB JPEG with EXIF orientation
applied, named by the SHA-256 of the downloaded bytes: never by the URL, so no URL can name
a path, and an exact duplicate (another URL, another breed, a rerun) is stored once.
Files appear by temp file + ``os.replace``, never half-written.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import urllib3
from PIL import Image, ImageOps, UnidentifiedImageError

from scraper.browser import DEFAULT_USER_AGENT

PART_PREFIX = ".ddpm-part-"  # temp files; a killed run may leave some, the next run removes them
HASH_NAME_CHARS = 20  # 80 bits of SHA-256: collisions are not a concern at dataset scale
_REDIRECTS = (301, 302, 303, 307, 308)


@dataclass
class DownloadOptions:
    connect_timeout: float = 10.0
    timeout: float = 30.0  # socket read timeout, and the limit for the whole transfer
    max_bytes: int = 20 * 1024 * 1024
    min_size: int = 64  # shorter side in pixels
    max_pixels: int = 50_000_000  # more is treated as a decompression bomb
    max_redirects: int = 5
    retries: int = 3  # extra tries on 429, 5xx and connection errors
    backoff: float = 1.0  # first retry wait; doubles each try
    max_retry_after: float = 30.0  # cap on Retry-After and backoff waits
    jpeg_quality: int = 95
    user_agent: str = DEFAULT_USER_AGENT


@dataclass
class DownloadResult:
    url: str
    state: str  # "downloaded" | "duplicate" | "failed" | "rejected"
    http_status: int | None = None
    nbytes: int | None = None
    sha256: str | None = None
    path: Path | None = None
    error: str | None = None
    fatal: bool = False  # the job cannot go on (disk full)


class DownloadStopped(Exception):
    """The stop event was set mid-download; the URL stays pending."""


class _Outcome(Exception):
    def __init__(self, state: str, error: str, status: int | None = None) -> None:
        super().__init__(error)
        self.state, self.error, self.status = state, error, status


class _Retry(Exception):
    def __init__(self, error: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(error)
        self.error, self.status, self.retry_after = error, status, retry_after



def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date; None when absent or garbled."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


# -- validation -----------------------------------------------------------------------------
def decode_image(data: bytes, *, min_size: int = 64, max_pixels: int = 50_000_000) -> Image.Image:
    """Bytes -> RGB image (EXIF orientation applied), or ValueError with the one-line reason."""
    if not data:
        raise ValueError("empty body")
    with warnings.catch_warnings():
        # Pillow warns above Image.MAX_IMAGE_PIXELS and raises above twice that; both are bombs.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                raise ValueError(f"decompression bomb: {w}x{h} pixels is over the {max_pixels:,} limit")
            im.load()  # decode everything: a truncated file fails here
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise ValueError(f"decompression bomb: {exc}") from None
        except UnidentifiedImageError:
            head = data[:200].lstrip().lower()
            what = "HTML" if head.startswith((b"<!doctype", b"<html", b"<")) else f"{len(data)} bytes"
            raise ValueError(f"not an image (got {what})") from None
        except ValueError:
            raise
        except (OSError, SyntaxError, EOFError, IndexError, TypeError) as exc:
            reason = "truncated image" if "truncat" in str(exc).lower() else "corrupt image"
            raise ValueError(f"{reason}: {_short(exc)}") from None
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:  # noqa: BLE001 - broken EXIF only loses the orientation
            pass
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        rgb = Image.new("RGB", rgba.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba.getchannel("A"))
        im = rgb
    elif im.mode != "RGB":
        im = im.convert("RGB")
    w, h = im.size
    if min(w, h) < min_size:
        raise ValueError(f"too small: {w}x{h}, shorter side under {min_size}px")
    return im


def encode_jpeg(im: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write_atomic(target: Path, data: bytes) -> None:
    """Write via a temp file in the same folder + os.replace: the target is whole or absent."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=PART_PREFIX, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def remove_partials(folder: Path) -> int:
    """Remove our own leftover temp files (from a killed run) in ``folder``."""
    removed = 0
    try:
        entries = list(folder.glob(PART_PREFIX + "*.tmp"))
    except OSError:
        return 0
    for p in entries:
        try:
            p.unlink()
            removed += 1
        except OSError:
            pass
    return removed


def safe_child(folder: Path, name: str) -> Path:
    """``folder/name``, refusing anything that would land outside ``folder``."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise ValueError(f"unsafe file name {name!r}")
    target = folder / name
    if target.resolve().parent != folder.resolve():
        raise ValueError(f"unsafe file name {name!r}")
    return target


# -- the downloader -------------------------------------------------------------------------
class Downloader:
    """Thread-safe: one shared connection pool; call ``download`` from many threads."""

    def __init__(self, options: DownloadOptions | None = None, *, pool_size: int = 8,
                 stop_event: threading.Event | None = None) -> None:
        self.options = options or DownloadOptions()
        self.stop_event = stop_event or threading.Event()
        self.pool = urllib3.PoolManager(num_pools=64, maxsize=max(1, pool_size), block=False, retries=False)
        self._store_lock = threading.Lock()
        self._stored: dict[str, Path] = {}  # sha256 -> path, for duplicates within this run

    # fetching
    def _fetch_once(self, url: str) -> tuple[bytes, int]:
        o = self.options
        current, hops, visited = url, 0, set()
        while True:
            if urlsplit(current).scheme.lower() not in ("http", "https"):
                raise _Outcome("rejected", f"unsupported URL scheme in {current[:120]!r}")
            try:
                resp = self.pool.request(
                    "GET", current, preload_content=False, redirect=False, retries=False,
                    headers={"User-Agent": o.user_agent, "Accept": "image/avif,image/webp,image/*,*/*;q=0.8"},
                    timeout=urllib3.Timeout(connect=o.connect_timeout, read=o.timeout),
                )
            except urllib3.exceptions.TimeoutError as exc:
                raise _Outcome("failed", f"timed out ({_short(exc)})") from None
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise _Retry(f"connection error ({_short(exc)})") from None
            try:
                status = resp.status
                if status in _REDIRECTS:
                    location = resp.headers.get("Location")
                    if not location:
                        raise _Outcome("failed", f"HTTP {status} redirect without a Location", status)
                    visited.add(current)
                    current = urljoin(current, location)
                    hops += 1
                    if current in visited:
                        raise _Outcome("failed", f"redirect loop after {hops} redirects", status)
                    if hops > o.max_redirects:
                        raise _Outcome("failed", f"too many redirects (more than {o.max_redirects})", status)
                    continue
                if status == 429 or 500 <= status <= 599:
                    raise _Retry(f"HTTP {status}", status, parse_retry_after(resp.headers.get("Retry-After")))
                if not 200 <= status <= 299:
                    raise _Outcome("failed", f"HTTP {status}", status)
                length = resp.headers.get("Content-Length")
                if length and length.isdigit() and int(length) > o.max_bytes:
                    raise _Outcome("rejected", f"too large: {int(length):,} bytes over the {o.max_bytes:,} cap", status)
                ctype = (resp.headers.get("Content-Type") or "").lower()
                if ctype.startswith(("text/html", "application/xhtml", "application/json")):
                    raise _Outcome("rejected", f"not an image (Content-Type {ctype.split(';')[0]})", status)
                return self._read_body(resp, status), status
            finally:
                resp.release_conn()

    def _read_body(self, resp, status: int) -> bytes:
        o = self.options
        deadline = time.monotonic() + o.timeout
        buf = bytearray()
        try:
            while True:
                # read1 returns what has arrived, so a trickling server meets the deadline check.
                chunk = resp.read1(64 * 1024)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > o.max_bytes:
                    raise _Outcome("rejected", f"too large: over the {o.max_bytes:,} byte cap", status)
                if time.monotonic() > deadline:
                    raise _Outcome("failed", f"timed out: transfer took longer than {o.timeout:g}s", status)
                if self.stop_event.is_set():
                    raise DownloadStopped()
        except urllib3.exceptions.TimeoutError as exc:
            raise _Outcome("failed", f"timed out reading the body ({_short(exc)})", status) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _Retry(f"connection broken ({_short(exc)})", status) from None
        return bytes(buf)

    def fetch(self, url: str) -> tuple[bytes, int]:
        """(body, HTTP status) or _Outcome; retries 429/5xx/connection errors with backoff."""
        o = self.options
        attempt = 0
        while True:
            try:
                return self._fetch_once(url)
            except _Retry as r:
                attempt += 1
                if attempt > o.retries:
                    raise _Outcome("failed", f"{r.error}, gave up after {attempt} tries", r.status) from None
                wait = r.retry_after if r.retry_after is not None else o.backoff * 2 ** (attempt - 1)
                if self.stop_event.wait(min(wait, o.max_retry_after)):
                    raise DownloadStopped() from None

    # storing
    def _store(self, jpeg: bytes, sha: str, folder: Path,
               find_existing: Callable[[str], Path | None] | None) -> tuple[str, Path]:
        with self._store_lock:  # check-then-write must not interleave for one hash
            existing = self._stored.get(sha)
            if existing is None and find_existing is not None:
                existing = find_existing(sha)
            if existing is not None and existing.is_file():
                return "duplicate", existing
            folder.mkdir(parents=True, exist_ok=True)
            target = safe_child(folder, f"{sha[:HASH_NAME_CHARS]}.jpg")
            if target.is_file():  # stored by an earlier run whose manifest row was lost
                self._stored[sha] = target
                return "duplicate", target
            write_atomic(target, jpeg)
            self._stored[sha] = target
            return "downloaded", target

    def download(self, url: str, folder: str | os.PathLike, *,
                 find_existing: Callable[[str], Path | None] | None = None) -> DownloadResult:
        """Fetch ``url`` and store it in ``folder``. Never raises for a bad URL or image; raises
        DownloadStopped when the stop event is set (the URL should stay pending)."""
        folder = Path(folder)
        try:
            data, status = self.fetch(url)
        except _Outcome as out:
            return DownloadResult(url, out.state, http_status=out.status, error=out.error)
        sha = hashlib.sha256(data).hexdigest()
        try:
            im = decode_image(data, min_size=self.options.min_size, max_pixels=self.options.max_pixels)
            jpeg = encode_jpeg(im, self.options.jpeg_quality)
        except ValueError as exc:
            return DownloadResult(url, "rejected", http_status=status, nbytes=len(data), sha256=sha, error=str(exc))
        except (OSError, MemoryError) as exc:
            return DownloadResult(url, "rejected", http_status=status, nbytes=len(data), sha256=sha,
                                  error=f"cannot re-encode: {_short(exc)}")
        try:
            state, path = self._store(jpeg, sha, folder, find_existing)
        except OSError as exc:
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            what = "disk full" if full else (exc.strerror or type(exc).__name__)
            return DownloadResult(url, "failed", http_status=status, nbytes=len(data), sha256=sha,
                                  error=f"cannot write to {folder}: {what}", fatal=full)
        return DownloadResult(url, state, http_status=status, nbytes=len(data), sha256=sha, path=path)

    def close(self) -> None:
        self.pool.clear()
