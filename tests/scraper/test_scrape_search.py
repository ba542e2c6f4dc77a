"""Real headless Chromium against Bing-like and Google-like results pages served on
127.0.0.1: exactly the full-size URLs, through consent pages; captcha and changed markup
are reported, never silence."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from scraper.engines import BING, ENGINES, GOOGLE, get_engine
from scraper.search import NoResultsError, WallError, collect_urls
from scraper_testkit import THUMB, bing_page, google_page, serve_results

pytestmark = pytest.mark.browser


def _urls(server, n, prefix="/full/dog"):
    # query strings and an encoded space: the URL must come back exactly as the page had it
    return [server.url(f"{prefix}{i}.jpg?w=1024&id={i}%20x") for i in range(n)]


def test_bing_collects_every_full_size_url(browser, server, fast_search):
    urls = _urls(server, 14)  # 4 at first, 2 scroll batches of 3, then "See more" x2
    serve_results(server, "/images/search", bing_page(urls))
    batches = []
    got = collect_urls(browser.driver, BING.with_base_url(server.base), "beagles dog pictures", fast_search,
                       on_urls=batches.append)
    assert got == urls
    assert len(batches) > 1 and sum(batches, []) == urls  # reported as found, not only at the end


def test_bing_fallback_links_and_cap(browser, server, fast_search):
    urls = _urls(server, 9)
    serve_results(server, "/images/search", bing_page(urls, fallback_links=True))
    fast_search.max_results = 5
    got = collect_urls(browser.driver, BING.with_base_url(server.base), "q", fast_search)
    assert got == urls[:5]


def test_google_waits_for_the_original_behind_consent(browser, server, fast_search):
    urls = _urls(server, 10)
    serve_results(server, "/search", google_page(urls, initial=4, batch=3, scroll_batches=1), consent=True)
    got = collect_urls(browser.driver, GOOGLE.with_base_url(server.base), "beagles dog pictures", fast_search)
    assert got == urls  # never a data: or encrypted-tbn preview
    assert server.count("/consent/ml") == 1
    browser.driver.delete_all_cookies()


def test_captcha_is_reported(browser, server, fast_search):
    serve_results(server, "/search", "<html></html>", captcha=True)
    with pytest.raises(WallError, match="captcha") as info:
        collect_urls(browser.driver, GOOGLE.with_base_url(server.base), "q", fast_search)
    assert info.value.kind == "captcha"


def test_consent_wall_without_a_known_button_is_reported(browser, server, fast_search):
    serve_results(server, "/search", "<html></html>", consent=True)
    server.add("/consent/ml", lambda r: r.send(200, b"<form action='/consent/x'><a href='#'>Maybe later</a></form>"))
    with pytest.raises(WallError, match="consent page that could not be dismissed") as info:
        collect_urls(browser.driver, GOOGLE.with_base_url(server.base), "q", fast_search)
    assert info.value.kind == "consent"


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_changed_markup_says_selectors_may_be_out_of_date(browser, server, fast_search, engine):
    page = "<html><body><div class='new-grid'><img src='/x.jpg'></div></body></html>"
    serve_results(server, get_engine(engine).search_path.split("?")[0], page)
    with pytest.raises(NoResultsError, match=f"engine {engine} found no results.*selectors may be out of date"):
        collect_urls(browser.driver, get_engine(engine).with_base_url(server.base), "q", fast_search)


def test_engine_table_urls():
    assert GOOGLE.search_url("shih tzu dog pictures") == (
        "https://www.google.com/search?q=shih+tzu+dog+pictures&tbm=isch&hl=en")
    assert BING.with_base_url("http://127.0.0.1:8000/").search_url("a&b").startswith(
        "http://127.0.0.1:8000/images/search?q=a%26b")
    assert not GOOGLE.is_full_size_url("https://encrypted-tbn0.gstatic.com/images?q=tbn:abc")
    assert not GOOGLE.is_full_size_url("data:image/jpeg;base64,xx")
    assert not BING.is_full_size_url("javascript:alert(1)")
    assert GOOGLE.is_full_size_url("https://example.com/dog.jpg")
    with pytest.raises(ValueError, match="unknown engine 'yahoo'; known: google, bing"):
        get_engine("yahoo")


def test_google_fallback_imgurl_links(browser, server, fast_search):
    urls = _urls(server, 3)
    links = "".join(f'<a href="/imgres?imgurl={quote(u, safe="")}&imgrefurl=x"><img src="{THUMB}"></a>' for u in urls)
    serve_results(server, "/search", f"<html><body>{links}</body></html>")
    assert collect_urls(browser.driver, GOOGLE.with_base_url(server.base), "q", fast_search) == urls


def test_google_falls_back_to_urls_in_the_page_source(browser, server, fast_search):
    urls = _urls(server, 3)
    # markup no selector knows, but Google's inline data arrays: [thumbnail], [original, h, w]
    def js(u: str) -> str:  # as Google writes URLs in scripts: = and & escaped
        return json.dumps(u).replace("=", "\\u003d").replace("&", "\\u0026")

    arrays = ",".join(f'[{js(f"https://encrypted-tbn0.gstatic.com/images?q=tbn:{i}")},181,279],[{js(u)},1200,800]'
                      for i, u in enumerate(urls))
    page = f"<html><body><div class='new-grid'></div><script>var AF_data = [{arrays}];</script></body></html>"
    serve_results(server, "/search", page)
    assert collect_urls(browser.driver, GOOGLE.with_base_url(server.base), "q", fast_search) == urls
