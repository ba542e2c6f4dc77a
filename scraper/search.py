"""Run one image search in a browser and collect full-size image URLs.

Knows how to drive a page (load, dismiss consent, scroll, click "more results", open
previews) but not what the page looks like: every selector comes from an ``Engine`` table.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlparse

from scraper.engines import STRATEGY_ATTRIBUTE_JSON, STRATEGY_PREVIEW, Engine


class SearchError(RuntimeError):
    """A search that produced nothing usable; the message is one line for the user."""


class WallError(SearchError):
    """A captcha or a consent page stands between the browser and the results."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # "captcha" | "consent"


class UnreachableError(SearchError):
    """The engine's page did not load at all (no DNS, refused, proxy, timeout): not this
    query's fault, so every other query would fail the same way."""

    def __init__(self, host: str, code: str, cause: str) -> None:
        super().__init__(f"cannot reach {host} ({code}): {cause}")
        self.host = host
        self.code = code
        self.cause = cause


# Chromium's net:: errors that mean "the host cannot be reached", with the likely cause.
UNREACHABLE_CAUSES = {
    "ERR_NAME_NOT_RESOLVED": "the name does not resolve: no network or no DNS",
    "ERR_NAME_RESOLUTION_FAILED": "the name does not resolve: no network or no DNS",
    "ERR_INTERNET_DISCONNECTED": "this machine has no network connection",
    "ERR_ADDRESS_UNREACHABLE": "no route to the host: no network",
    "ERR_NETWORK_UNREACHABLE": "no route to the host: no network",
    "ERR_CONNECTION_REFUSED": "connection refused: nothing listens there (check --base-url) or a firewall",
    "ERR_CONNECTION_TIMED_OUT": "no answer: a firewall or no route out",
    "ERR_TIMED_OUT": "no answer: a firewall or no route out",
    "ERR_CONNECTION_RESET": "the connection was cut: a firewall or proxy",
    "ERR_CONNECTION_CLOSED": "the connection was cut: a firewall or proxy",
    "ERR_PROXY_CONNECTION_FAILED": "the proxy cannot be reached (check HTTP(S)_PROXY)",
    "ERR_TUNNEL_CONNECTION_FAILED": "the proxy refused the connection (check HTTP(S)_PROXY)",
    "ERR_PROXY_AUTH_REQUESTED": "the proxy wants a password",
}
_NET_ERROR = re.compile(r"net::(ERR_[A-Z_]+)")
_JS_ERROR_PAGE = ("return location.protocol === 'chrome-error:' && typeof loadTimeDataRaw !== 'undefined'"
                  " ? String(loadTimeDataRaw.errorCode || '') : '';")


class NoResultsError(SearchError):
    """The page loaded but none of the engine's selectors matched."""


class SearchStopped(Exception):
    """The stop event was set while searching."""


@dataclass
class SearchOptions:
    max_results: int = 100
    delay: float = 1.0  # polite pause (seconds, jittered) after page actions
    scroll_wait: float = 3.0  # how long new results may take to appear after scroll/click
    preview_timeout: float = 5.0  # how long a preview may take to show the original
    consent_timeout: float = 8.0
    max_rounds: int = 400  # scroll/more rounds per query, a backstop against endless pages


_JS_ATTRS = (
    "return Array.from(document.querySelectorAll(arguments[0]))"
    ".slice(arguments[2]).map(e => e.getAttribute(arguments[1]));"
)
_JS_COUNT = "return document.querySelectorAll(arguments[0]).length;"
_JS_SRCS = (
    "const out = []; for (const sel of arguments[0]) {"
    " for (const e of document.querySelectorAll(sel)) { out.push(e.currentSrc || e.getAttribute('src') || ''); } }"
    " return out;"
)
_JS_VISIBLE = (
    "const e = arguments[0]; const r = e.getBoundingClientRect();"
    " const s = window.getComputedStyle(e);"
    " return r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && s.display !== 'none' && !e.disabled;"
)
_JS_TEXT = "return document.body ? document.body.innerText.slice(0, 20000) : '';"


class _Searcher:
    def __init__(self, driver, engine: Engine, query: str, options: SearchOptions,
                 on_urls: Callable[[list[str]], None] | None, stop_event: threading.Event | None) -> None:
        self.driver = driver
        self.engine = engine
        self.query = query
        self.options = options
        self.on_urls = on_urls
        self.stop_event = stop_event
        self.found: list[str] = []
        self._seen: set[str] = set()

    # -- small helpers -------------------------------------------------------------------
    def _stopped(self) -> bool:
        return self.stop_event is not None and self.stop_event.is_set()

    def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        if self.stop_event is not None:
            if self.stop_event.wait(seconds):
                raise SearchStopped()
        else:
            time.sleep(seconds)

    def _pause(self) -> None:
        # Jitter so requests do not come at a machine-regular beat.
        if self.options.delay > 0:
            self._sleep(self.options.delay * random.uniform(0.5, 1.5))

    def _wait_for(self, predicate: Callable[[], bool], timeout: float, poll: float = 0.1) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self._stopped():
                raise SearchStopped()
            try:
                if predicate():
                    return True
            except Exception:  # noqa: BLE001 - the page may be mid-navigation; poll again
                pass
            if time.monotonic() >= deadline:
                return False
            self._sleep(poll)

    def _css(self, selector: str) -> list:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def _count(self, selector: str) -> int:
        return int(self.driver.execute_script(_JS_COUNT, selector) or 0)

    def _visible(self, element) -> bool:
        try:
            return bool(self.driver.execute_script(_JS_VISIBLE, element))
        except Exception:  # noqa: BLE001 - stale element
            return False

    def _click(self, element) -> bool:
        from selenium.common.exceptions import WebDriverException

        try:
            self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
            element.click()
            return True
        except WebDriverException:
            try:  # covered by an overlay: a script click still fires the page's handler
                self.driver.execute_script("arguments[0].click();", element)
                return True
            except WebDriverException:
                return False

    def _add(self, urls) -> int:
        new: list[str] = []
        for url in urls:
            if len(self.found) + len(new) >= self.options.max_results:
                break
            url = (url or "").strip()
            if url and url not in self._seen and self.engine.is_full_size_url(url):
                self._seen.add(url)
                new.append(url)
        if new:
            self.found.extend(new)
            if self.on_urls is not None:
                self.on_urls(new)
        return len(new)

    def _full(self) -> bool:
        return len(self.found) >= self.options.max_results

    # -- walls -----------------------------------------------------------------------------
    def detect_wall(self, check_text: bool) -> str | None:
        e = self.engine
        url = (self.driver.current_url or "").lower()
        if any(m.lower() in url for m in e.captcha_url_markers) or any(self._count(s) for s in e.captcha_selectors):
            return "captcha"
        if check_text and e.captcha_texts:
            text = str(self.driver.execute_script(_JS_TEXT) or "").lower()
            if any(t.lower() in text for t in e.captcha_texts):
                return "captcha"
        if any(m.lower() in url for m in e.consent_url_markers) or any(self._count(s) for s in e.consent_selectors):
            return "consent"
        return None

    def _wall_error(self, kind: str) -> WallError:
        label = self.engine.label
        if kind == "captcha":
            return WallError(kind, f"engine {self.engine.name} ({label}) shows a captcha for {self.query!r}; "
                                   "it cannot be solved by a script: wait, lower the rate (--delay), or try --engine "
                                   + ("bing" if self.engine.name != "bing" else "google"))
        return WallError(kind, f"engine {self.engine.name} ({label}) shows a consent page that could not be "
                               f"dismissed (no known accept button) for {self.query!r}")

    def _click_consent(self) -> bool:
        from selenium.webdriver.common.by import By

        for sel in self.engine.consent_buttons:
            for el in self._css(sel):
                if self._visible(el) and self._click(el):
                    return True
        for text in self.engine.consent_button_texts:
            xpath = (f"//button[contains(normalize-space(.), {json.dumps(text)})]"
                     f" | //input[@type='submit' and contains(@value, {json.dumps(text)})]")
            for el in self.driver.find_elements(By.XPATH, xpath):
                if self._visible(el) and self._click(el):
                    return True
        return False

    def handle_walls(self) -> None:
        kind = self.detect_wall(check_text=False)
        if kind == "captcha":
            raise self._wall_error(kind)
        if kind == "consent":
            if not self._click_consent():
                raise self._wall_error(kind)
            if not self._wait_for(lambda: self.detect_wall(check_text=False) is None
                                  and self.driver.execute_script("return document.readyState") == "complete",
                                  self.options.consent_timeout):
                raise self._wall_error(self.detect_wall(check_text=False) or "consent")
        for sel in self.engine.banner_buttons:  # non-blocking cookie banners
            for el in self._css(sel):
                if self._visible(el):
                    self._click(el)
                    break

    # -- results ---------------------------------------------------------------------------
    def _result_selector(self) -> str | None:
        for sel in self.engine.result_selectors:
            if self._count(sel):
                return sel
        return None

    def _link_selector(self) -> str | None:
        for sel in self.engine.link_selectors:
            if self._count(sel):
                return sel
        return None

    def _links_from(self, selector: str, start: int) -> list[str]:
        urls = []
        for href in self.driver.execute_script(_JS_ATTRS, selector, "href", start) or []:
            if not href:
                continue
            params = parse_qs(urlparse(href).query)
            for name in self.engine.link_url_params:
                if params.get(name):
                    urls.append(params[name][0])
                    break
        return urls

    def _json_urls(self, selector: str, start: int) -> list[str]:
        urls = []
        for raw in self.driver.execute_script(_JS_ATTRS, selector, self.engine.json_attribute, start) or []:
            if not raw:
                continue
            try:
                data = json.loads(raw)
            except ValueError:
                continue
            if isinstance(data, dict) and isinstance(data.get(self.engine.json_url_key), str):
                urls.append(data[self.engine.json_url_key])
        return urls

    def _preview_srcs(self) -> list[str]:
        return [s for s in (self.driver.execute_script(_JS_SRCS, list(self.engine.preview_selectors)) or []) if s]

    def _open_preview(self, element) -> str | None:
        """Click a thumbnail; wait until a preview shows an original (not data:/encrypted-tbn)
        URL that was not on screen before the click (the previous preview lingers)."""
        before = set(self._preview_srcs())
        if not self._click(element):
            return None
        result: list[str] = []

        def ready() -> bool:
            for src in self._preview_srcs():
                if src not in before and self.engine.is_full_size_url(src):
                    result.append(src)
                    return True
            return False

        return result[0] if self._wait_for(ready, self.options.preview_timeout) else None

    def _source_urls(self) -> list[str]:
        """Full-size URLs the engine embeds in its page source (see Engine.source_url_patterns)."""
        html = self.driver.page_source or ""
        urls = []
        for pattern in self.engine.source_url_patterns:
            for match in re.finditer(pattern, html):
                try:
                    urls.append(json.loads(f'"{match.group(1)}"'))  # undo \u003d, \/ and friends
                except ValueError:
                    continue
        return urls

    def _harvest(self, selector: str | None, link_selector: str | None, done: int) -> int:
        """Read results from index ``done`` on; returns the new ``done``."""
        if selector is None:
            if link_selector is None:
                return done
            total = self._count(link_selector)
            self._add(self._links_from(link_selector, done))
            return total
        if self.engine.strategy == STRATEGY_ATTRIBUTE_JSON:
            total = self._count(selector)
            self._add(self._json_urls(selector, done))
            return total
        if self.engine.strategy == STRATEGY_PREVIEW:
            elements = self._css(selector)
            for element in elements[done:]:
                if self._full():
                    break
                url = self._open_preview(element)
                if url:
                    self._add([url])
                done += 1
            return done
        raise ValueError(f"engine {self.engine.name}: unknown strategy {self.engine.strategy!r}")

    def _load_more(self, selector: str) -> bool:
        """Scroll to the end; if nothing new appears, click a visible "more results" button."""
        before = self._count(selector)
        self.driver.execute_script("window.scrollTo(0, document.body.scrollHeight);")
        if self._wait_for(lambda: self._count(selector) > before, self.options.scroll_wait):
            return True
        for more in self.engine.more_selectors:
            for el in self._css(more):
                if self._visible(el) and self._click(el):
                    self._pause()
                    if self._wait_for(lambda: self._count(selector) > before, self.options.scroll_wait):
                        return True
        return False

    def _load(self, url: str) -> None:
        """Open the results page; UnreachableError when the host itself cannot be reached."""
        from selenium.common.exceptions import TimeoutException, WebDriverException

        host = urlparse(url).netloc or url
        try:
            self.driver.get(url)
        except TimeoutException:
            raise UnreachableError(host, "timeout", "the page did not load in time: a slow network or "
                                                    "a proxy") from None
        except WebDriverException as exc:
            m = _NET_ERROR.search(str(exc))
            if m and m.group(1) in UNREACHABLE_CAUSES:
                raise UnreachableError(host, m.group(1), UNREACHABLE_CAUSES[m.group(1)]) from None
            raise
        try:  # some errors load Chromium's own error page instead of raising
            code = str(self.driver.execute_script(_JS_ERROR_PAGE) or "")
        except WebDriverException:
            code = ""
        if code:
            raise UnreachableError(host, code, UNREACHABLE_CAUSES.get(code, "the page did not load"))

    def run(self, url: str) -> list[str]:
        self._load(url)
        self.handle_walls()
        self._pause()
        done = 0
        selector = link_selector = None
        for _ in range(self.options.max_rounds):
            if self._stopped():
                raise SearchStopped()
            if selector is None:
                selector = self._result_selector()
                if selector is None and link_selector is None:
                    link_selector = self._link_selector()
            done = self._harvest(selector, link_selector, done)
            active = selector or link_selector
            if self._full() or active is None:
                break
            if not self._load_more(active):
                break
            self._pause()
        if not self.found and self.engine.source_url_patterns:
            self._add(self._source_urls())
            if self.found:
                return self.found
        if not self.found and selector is None and link_selector is None:
            kind = self.detect_wall(check_text=True)
            if kind:
                raise self._wall_error(kind)
            raise NoResultsError(f"engine {self.engine.name} found no results for {self.query!r}; "
                                 "selectors may be out of date (see scraper/engines.py)")
        if not self.found and done > 0 and self.engine.strategy == STRATEGY_PREVIEW and selector is not None:
            raise NoResultsError(f"engine {self.engine.name} found no results for {self.query!r}: {done} thumbnails "
                                 "but no preview showed a full-size URL; selectors may be out of date "
                                 "(see scraper/engines.py)")
        return self.found


def collect_urls(driver, engine: Engine, query: str, options: SearchOptions | None = None, *,
                 on_urls: Callable[[list[str]], None] | None = None,
                 stop_event: threading.Event | None = None) -> list[str]:
    """Search ``query`` on ``engine`` (its ``base_url`` already applied) in ``driver`` and
    return up to ``max_results`` distinct full-size image URLs, in page order. ``on_urls``
    is called with each new batch as it is found, so downloads can start at once."""
    searcher = _Searcher(driver, engine, query, options or SearchOptions(), on_urls, stop_event)
    return searcher.run(engine.search_url(query))
