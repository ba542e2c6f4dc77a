"""Fixtures for the scraper tests: the local server and one shared headless Chromium."""

from __future__ import annotations

import pytest

from scraper_testkit import CHROMEDRIVER, FixtureServer


@pytest.fixture
def server():
    srv = FixtureServer()
    yield srv
    srv.close()


# -- the browser ----------------------------------------------------------------------------
NO_BROWSER = "chromedriver not installed (apt-get install chromium chromium-driver); browser tests need it"


@pytest.fixture
def needs_browser():
    """For tests that start their own browser (a whole scrape, a subprocess)."""
    if CHROMEDRIVER is None:
        pytest.skip(NO_BROWSER)


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for all browser tests (starting one costs 1-2 s)."""
    if CHROMEDRIVER is None:
        pytest.skip(NO_BROWSER)
    import os

    from scraper.browser import Browser, BrowserOptions

    # Selenium Manager would download drivers; if it ever ran, this bogus path makes it fail loudly.
    saved = os.environ.get("SE_MANAGER_PATH")
    os.environ["SE_MANAGER_PATH"] = "/nonexistent/selenium-manager"
    try:
        b = Browser(BrowserOptions()).start()
    finally:
        if saved is None:
            os.environ.pop("SE_MANAGER_PATH", None)
        else:
            os.environ["SE_MANAGER_PATH"] = saved
    yield b
    profile = b._profile.name
    b.quit()
    assert not os.path.exists(profile)  # the throwaway profile is removed


@pytest.fixture
def fast_search():
    from scraper.search import SearchOptions

    return SearchOptions(max_results=100, delay=0, scroll_wait=0.6, preview_timeout=2.0, consent_timeout=5.0)


