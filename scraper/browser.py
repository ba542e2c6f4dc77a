"""A headless Chromium/Chrome driven by the system's chromedriver.

Selenium Manager would try to download a driver from the internet; it never runs here
because the driver path is always passed to ``Service(executable_path=...)`` and the
browser binary to ``options.binary_location``. A missing browser or driver is one
``BrowserNotFound`` line that says what to install.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path

BROWSER_CANDIDATES: tuple[str, ...] = (
    "/usr/bin/chromium",
    "/usr/bin/chromium-browser",
    "/usr/bin/google-chrome",
    "/usr/bin/google-chrome-stable",
    "/snap/bin/chromium",
    "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
    "/Applications/Chromium.app/Contents/MacOS/Chromium",
)
BROWSER_NAMES: tuple[str, ...] = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
DRIVER_CANDIDATES: tuple[str, ...] = (
    "/usr/bin/chromedriver",
    "/usr/lib/chromium/chromedriver",
    "/usr/lib/chromium-browser/chromedriver",
)
INSTALL_HINT = "install it with `apt-get install chromium chromium-driver` (Debian/Ubuntu)"

CHROME_ARGS: tuple[str, ...] = (
    "--headless=new",
    "--no-sandbox",  # root in containers/CI has no usable sandbox
    "--disable-dev-shm-usage",  # small /dev/shm in containers crashes tabs
    "--disable-background-networking",
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--mute-audio",
    "--lang=en-US",
    "--window-size=1366,900",
)
# Used by the downloader and as a fallback; the browser reports its own real version.
DEFAULT_USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)


class BrowserNotFound(RuntimeError):
    """No usable browser or chromedriver; the message is one line with what to install."""


def _is_executable(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_file() and os.access(p, os.X_OK)


def _find(what: str, flag: str, explicit, candidates: tuple[str, ...], names: tuple[str, ...]) -> str:
    """``explicit`` if given (it must exist), else the first well-known path, else PATH."""
    if explicit:
        if _is_executable(explicit):
            return str(explicit)
        raise BrowserNotFound(f"{what} {explicit} not found or not executable; {INSTALL_HINT} or pass {flag} PATH")
    for cand in candidates:
        if _is_executable(cand):
            return cand
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise BrowserNotFound(f"no {what} found (looked in /usr/bin and PATH); {INSTALL_HINT}")


def find_browser(explicit: str | os.PathLike | None = None) -> str:
    """Path of a Chromium/Chrome binary: ``explicit``, then well-known paths, then PATH."""
    return _find("browser", "--chrome", explicit, BROWSER_CANDIDATES, BROWSER_NAMES)


def find_chromedriver(explicit: str | os.PathLike | None = None) -> str:
    """Path of chromedriver: ``explicit``, then well-known paths, then PATH."""
    return _find("chromedriver", "--chromedriver", explicit, DRIVER_CANDIDATES, ("chromedriver",))


# The throwaway profile folder names the owning process: "<tmp>/ddpm-tui-chrome-<pid>-<random>".
PROFILE_PREFIX = "ddpm-tui-chrome-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped by its parent) is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _owner(name: str) -> int | None:
    owner = name[len(PROFILE_PREFIX):].split("-", 1)[0] if name.startswith(PROFILE_PREFIX) else ""
    return int(owner) if owner.isdigit() else None


def reap_stale_browsers(tmp_dir: str | None = None) -> int:
    """Stop browsers and drivers left behind by a scrape killed with SIGKILL, and remove their
    profiles. ``kill -9`` ends only the Python process; chromedriver and Chromium live on.
    They are recognised by our profile folder (in their command line) whose owner pid is
    gone, so nothing else is ever touched. Linux only (reads /proc); returns processes stopped."""
    root = os.path.join(tmp_dir or tempfile.gettempdir(), PROFILE_PREFIX)
    markers = ("--user-data-dir=" + root, "--log-path=" + root)
    stopped = 0
    proc = Path("/proc")
    if proc.is_dir():
        for entry in proc.iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            owners = [_owner(part) for arg in args if arg.startswith(markers)
                      for part in Path(arg.split("=", 1)[1]).parts]
            owner = next((o for o in owners if o is not None), None)
            if owner is not None and not _pid_alive(owner):
                try:
                    os.kill(int(entry.name), signal.SIGKILL)
                    stopped += 1
                except OSError:
                    pass
    for folder in Path(os.path.dirname(root)).glob(PROFILE_PREFIX + "*"):
        owner = _owner(folder.name)
        if owner is not None and not _pid_alive(owner):
            shutil.rmtree(folder, ignore_errors=True)
    return stopped


@dataclass
class BrowserOptions:
    chrome: str | None = None  # browser binary; None = search
    chromedriver: str | None = None  # driver binary; None = search
    headless: bool = True
    page_load_timeout: float = 30.0
    user_agent: str | None = None  # None = the browser's own, minus "Headless"


class Browser:
    """One WebDriver session with its own throwaway profile. Use as a context manager."""

    def __init__(self, options: BrowserOptions | None = None) -> None:
        self.options = options or BrowserOptions()
        self.driver = None
        self.user_agent = ""
        self._profile: tempfile.TemporaryDirectory | None = None

    def start(self) -> "Browser":
        # Resolve binaries before importing selenium: the common failure gets a clear line fast.
        chrome = find_browser(self.options.chrome)
        driver_path = find_chromedriver(self.options.chromedriver)
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service

        reap_stale_browsers()
        self._profile = tempfile.TemporaryDirectory(prefix=f"{PROFILE_PREFIX}{os.getpid()}-",
                                                    ignore_cleanup_errors=True)
        opts = webdriver.ChromeOptions()
        opts.binary_location = chrome
        for arg in CHROME_ARGS:
            if arg == "--headless=new" and not self.options.headless:
                continue
            opts.add_argument(arg)
        opts.add_argument(f"--user-data-dir={self._profile.name}")
        opts.add_experimental_option("excludeSwitches", ["enable-automation"])
        if self.options.user_agent:
            opts.add_argument(f"--user-agent={self.options.user_agent}")
        try:
            # The log path puts the profile folder into chromedriver's command line too, so a
            # driver orphaned by kill -9 is found by reap_stale_browsers; OFF keeps it empty.
            service = Service(executable_path=driver_path, service_args=["--log-level=OFF"],
                              log_output=os.path.join(self._profile.name, "chromedriver.log"))
            self.driver = webdriver.Chrome(service=service, options=opts)
        except WebDriverException as exc:
            self._cleanup_profile()
            lines = (exc.msg or str(exc)).strip().splitlines()
            first = lines[0] if lines else type(exc).__name__
            raise BrowserNotFound(f"could not start {chrome} with {driver_path}: {first}") from None
        except OSError as exc:
            self._cleanup_profile()
            raise BrowserNotFound(f"could not start {driver_path}: {exc.strerror or exc}") from None
        self.driver.set_page_load_timeout(self.options.page_load_timeout)
        self.user_agent = self._fix_user_agent()
        return self

    def _fix_user_agent(self) -> str:
        """Headless Chrome announces itself as "HeadlessChrome"; search engines then serve a
        different page or a captcha. Report the same browser as a normal Chrome."""
        if self.options.user_agent:
            return self.options.user_agent
        try:
            ua = str(self.driver.execute_script("return navigator.userAgent"))
            real = ua.replace("HeadlessChrome", "Chrome")
            if real != ua:
                self.driver.execute_cdp_cmd("Network.setUserAgentOverride", {"userAgent": real})
            return real
        except Exception:  # noqa: BLE001 - CDP is optional; keep the browser's own UA
            return DEFAULT_USER_AGENT

    def quit(self) -> None:
        if self.driver is not None:
            try:
                self.driver.quit()
            except Exception:  # noqa: BLE001 - a dead browser is already gone
                pass
            self.driver = None
        self._cleanup_profile()

    def _cleanup_profile(self) -> None:
        if self._profile is not None:
            self._profile.cleanup()
            self._profile = None

    def __enter__(self) -> "Browser":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.quit()


def check_browser(options: BrowserOptions | None = None) -> tuple[str, str]:
    """(browser path, driver path) or BrowserNotFound; no browser is started."""
    options = options or BrowserOptions()
    return find_browser(options.chrome), find_chromedriver(options.chromedriver)
