"""ddpm-tui: a terminal studio for a from-scratch DDPM that learns to draw dogs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ddpm-tui")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+src"
