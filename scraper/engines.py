"""One table per image search engine. Every CSS selector and page marker lives here.

Search engines change their markup every few months; when they do, only this file changes.
Each list is tried in order (first the current markup, then older/fallback ones).
``scraper.search`` drives a browser through a table; it knows no selector itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from urllib.parse import quote_plus

STRATEGY_ATTRIBUTE_JSON = "attribute_json"  # the full URL sits in a JSON attribute (Bing)
STRATEGY_PREVIEW = "preview"  # click a thumbnail, read the preview's src (Google)


@dataclass(frozen=True)
class Engine:
    name: str
    label: str
    base_url: str
    search_path: str  # appended to base_url; {query} is the url-encoded query
    strategy: str
    # Result thumbnails/links; the first selector that matches anything is used.
    result_selectors: tuple[str, ...]
    # attribute_json strategy: attribute holding JSON and the key with the full-size URL.
    json_attribute: str = ""
    json_url_key: str = ""
    # preview strategy: the preview panel's image, once it shows the original.
    preview_selectors: tuple[str, ...] = ()
    # Links carrying the full URL as a query parameter (fallback for both strategies).
    link_selectors: tuple[str, ...] = ()
    link_url_params: tuple[str, ...] = ()
    # "Show more results" buttons, clicked when scrolling stops producing results.
    more_selectors: tuple[str, ...] = ()
    # A consent wall: detected by URL part or element; dismissed with one of the buttons.
    consent_url_markers: tuple[str, ...] = ()
    consent_selectors: tuple[str, ...] = ()
    consent_buttons: tuple[str, ...] = ()
    consent_button_texts: tuple[str, ...] = ()
    # Cookie banners that do not block the results: clicked away if present.
    banner_buttons: tuple[str, ...] = ()
    # A captcha: cannot be passed by a script; detected and reported.
    captcha_url_markers: tuple[str, ...] = ()
    captcha_selectors: tuple[str, ...] = ()
    captcha_texts: tuple[str, ...] = ()
    # Last resort when no selector works: regexes over the page source whose group 1 is a
    # JSON-escaped full-size URL (Google keeps [url, height, width] arrays in inline scripts).
    source_url_patterns: tuple[str, ...] = ()
    # URLs that are thumbnails, never the original photo.
    thumbnail_markers: tuple[str, ...] = field(default=("data:",))

    def search_url(self, query: str, base_url: str | None = None) -> str:
        base = (base_url or self.base_url).rstrip("/")
        return base + self.search_path.format(query=quote_plus(query))

    def with_base_url(self, base_url: str | None) -> "Engine":
        return replace(self, base_url=base_url.rstrip("/")) if base_url else self

    def is_full_size_url(self, url: str | None) -> bool:
        """An http(s) URL that is not one of the engine's thumbnails."""
        if not url:
            return False
        low = url.strip().lower()
        if not low.startswith(("http://", "https://")):
            return False
        return not any(marker in low for marker in self.thumbnail_markers)


GOOGLE = Engine(
    name="google",
    label="Google Images",
    base_url="https://www.google.com",
    search_path="/search?q={query}&tbm=isch&hl=en",
    strategy=STRATEGY_PREVIEW,
    result_selectors=(
        "div[jsname='dTDiAc'] img",  # 2024- grid
        "div.eA0Zlc img",
        "img.YQ4gaf",
        "div[data-ri] img",  # older grid
        "div.isv-r img",
        "img.rg_i",
    ),
    preview_selectors=(
        "img.sFlh5c.FyHeAf",  # 2024- side panel
        "img.sFlh5c",
        "img.iPVvYb",
        "img[jsname='kn3ccd']",
        "img.r48jcc",
        "img.n3VNCb",  # older side panel
        "img[jsname='HiaYvf']",
    ),
    link_selectors=("a[href*='imgurl=']",),
    link_url_params=("imgurl",),
    more_selectors=(
        "input.mye4qd",
        "input[value='Show more results']",
        "div.YstHxe input",
        "a.T7sFge",
        "div.GNJvt",
    ),
    consent_url_markers=("consent.google.", "/consent"),
    consent_selectors=("form[action*='consent']", "div#CXQnmb", "div.HTjtHe"),
    consent_buttons=("#L2AGLb", "form[action*='consent'] button", "button[aria-label='Accept all']"),
    consent_button_texts=("Accept all", "I agree", "Reject all"),
    captcha_url_markers=("/sorry/", "google.com/sorry"),
    captcha_selectors=("#captcha-form", "form#captcha-form", "div.g-recaptcha", "iframe[src*='recaptcha']"),
    captcha_texts=("unusual traffic from your computer network", "not a robot"),
    source_url_patterns=(r'\["(https?://(?:[^"\\]|\\.)+)",\d+,\d+\]',),
    thumbnail_markers=("data:", "encrypted-tbn", "gstatic.com/images?"),
)

BING = Engine(
    name="bing",
    label="Bing Images",
    base_url="https://www.bing.com",
    search_path="/images/search?q={query}&form=HDRSC2&first=1",
    strategy=STRATEGY_ATTRIBUTE_JSON,
    result_selectors=("a.iusc", "div.imgpt a[m]", "[m*='murl']"),
    json_attribute="m",
    json_url_key="murl",
    link_selectors=("a[href*='mediaurl=']",),
    link_url_params=("mediaurl",),
    more_selectors=("a.btn_seemore", "a.mm_seemore", "input.btn_seemore", "div.mm_seemore a"),
    consent_selectors=("#bnp_cookie_banner_wall", "div#consent-banner-wall"),
    consent_buttons=("#bnp_btn_accept", "button#bnp_btn_accept", "#bnp_btn_reject"),
    consent_button_texts=("Accept", "Reject"),
    banner_buttons=("#bnp_btn_accept", "#bnp_btn_reject"),
    captcha_url_markers=("/captcha", "bing.com/ck/captcha"),
    captcha_selectors=("#b_captcha", "iframe[src*='captcha']", "div#turnstile-widget"),
    captcha_texts=("solve the challenge", "verify you are human"),
    thumbnail_markers=("data:", "bing.net/th?", "bing.com/th?", "tse1.mm.bing.net"),
)

ENGINES: dict[str, Engine] = {GOOGLE.name: GOOGLE, BING.name: BING}


def get_engine(name: str) -> Engine:
    try:
        return ENGINES[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; known: {', '.join(ENGINES)}") from None
