"""`n` on the Sample screen: each drawn image next to its nearest training image, in pixels.

The comparison is the memorisation check's (core.quality.memorisation) pixel space: images
area-downscaled to PIXEL_SIZE px, Euclidean distance, and a sample is a *copy* when that
distance is at most the threshold its rule sets from the training images' own
nearest-neighbour distances. The training side is the run's: its dataset folder
(config.json's ``data``, else the studio's dataset), its image size and resize, its classes,
and without the images its ``--eval-holdout`` kept out (ImageFolderDataset, part="train").
Loading the dataset and the search run in a thread worker; the view says so meanwhile.
Left/right step through the samples, Esc goes back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from core.io.safe_text import shown
from ddpm_tui.widgets.halfblock import HalfBlockImage, tile_images

SEARCHING = "finding nearest training images…"


@dataclass
class NearestMatch:
    """The pixel-space copy check of a batch of samples against a run's training images."""

    rows: np.ndarray  # per sample: the row of its nearest training image
    distance: np.ndarray
    copies: np.ndarray  # per sample: bool
    threshold: float
    images: list[np.ndarray]  # per sample: its nearest training image (H, W, 3) uint8
    names: list[str]  # per sample: that image's path relative to the dataset folder


def find_nearest(samples: np.ndarray, run_dir: Path, fallback_data: Path | None = None,
                 cache_dir: Path | None = None) -> NearestMatch:
    """Samples (B, H, W, 3) uint8 against the training side of ``run_dir``'s dataset.
    Raises ValueError (with a message for the user) when there is nothing to compare with."""
    import torch

    from core.data.dataset import DataOptions, DatasetError, ImageFolderDataset
    from core.quality import memorisation
    from core.training.runs import read_config

    config = read_config(run_dir) or {}
    root = Path(str(config.get("data") or fallback_data or "")).expanduser()
    if not str(root) or not root.is_dir():
        raise ValueError(f"the run's dataset folder {root} is not there: nothing to compare with")
    classes = list(config.get("classes") or []) if config.get("conditional") else None
    try:
        data = ImageFolderDataset(root, DataOptions(image_size=int(samples.shape[1]),
                                                    resize=str(config.get("resize") or "squash"), flip=False),
                                  cache_dir=cache_dir, classes=classes or None,
                                  holdout=float(config.get("eval_holdout") or 0.0), part="train")
    except (DatasetError, ValueError, OSError) as exc:
        raise ValueError(f"{root}: {exc}") from None
    if len(data.images) < 2:
        raise ValueError(f"{root}: the copy check needs at least 2 training images, found {len(data.images)}")
    train = memorisation.pixel_vectors(data.images)
    queries = memorisation.pixel_vectors(torch.from_numpy(np.ascontiguousarray(samples)).permute(0, 3, 1, 2))
    check = memorisation.check_space(queries, train)
    names = []
    for row in check.nearest:
        path = Path(data.samples[int(row)][0])
        names.append(str(path.relative_to(root)) if path.is_relative_to(root) else path.name)
    images = [data.images[int(row)].permute(1, 2, 0).numpy() for row in check.nearest]
    return NearestMatch(check.nearest, check.distance, check.copies, check.threshold, images, names)


def describe(match: NearestMatch, i: int) -> str:
    """One sample's line: its nearest training image, the distance and the verdict."""
    verdict = "copy" if match.copies[i] else "not a copy"
    return (f"sample {i + 1}/{len(match.rows)} · nearest training image #{int(match.rows[i])} "
            f"{match.names[i]} · distance {match.distance[i]:.3f} (copy at ≤ {match.threshold:.3f}) · {verdict}")


class NearestScreen(ModalScreen[None]):
    """Sample i beside its nearest training image; left/right step, Esc (or n, q) back."""

    BINDINGS = [
        Binding("escape,n,q", "close", "Back"),
        Binding("left", "step(-1)", "Previous"),
        Binding("right", "step(1)", "Next"),
    ]

    def __init__(self, samples: np.ndarray, run_dir: Path, *, fallback_data: Path | None = None,
                 cache_dir: Path | None = None, title: str = "samples") -> None:
        super().__init__()
        self.samples = np.asarray(samples)
        self.run_dir, self.fallback_data, self.cache_dir = Path(run_dir), fallback_data, cache_dir
        self.title_text = title
        self.index = 0
        self.match: NearestMatch | None = None

    def compose(self) -> ComposeResult:
        yield Label("", id="nearest-title")
        yield Static(SEARCHING, id="nearest-info")
        yield HalfBlockImage(id="nearest-image")

    def on_mount(self) -> None:
        self._show()
        self.run_worker(self._search, thread=True, group="nearest", name="nearest training images",
                        exit_on_error=False)

    def _search(self) -> None:
        try:
            match = find_nearest(self.samples, self.run_dir, self.fallback_data, self.cache_dir)
        except ValueError as exc:
            self.app.call_from_thread(self._failed, str(exc))
            return
        self.app.call_from_thread(self._found, match)

    def _found(self, match: NearestMatch) -> None:
        self.match = match
        self._show()

    def _failed(self, message: str) -> None:
        self.query_one("#nearest-info", Static).update(Text(f"no comparison: {message}", style="red"))

    def _show(self) -> None:
        sample = self.samples[self.index]
        title = Text(shown(self.title_text), style="bold")  # a run name: never markup
        title.append(" · left: the sample, right: its nearest training image (pixels) · ←/→ step, Esc back")
        self.query_one("#nearest-title", Label).update(title)
        pair = [sample] if self.match is None else [sample, self.match.images[self.index]]
        self.query_one("#nearest-image", HalfBlockImage).set_image(
            tile_images(pair, cols=2, gap=max(1, sample.shape[0] // 8)))
        if self.match is not None:
            self.query_one("#nearest-info", Static).update(Text(shown(describe(self.match, self.index))))

    def action_step(self, delta: int) -> None:
        self.index = (self.index + delta) % len(self.samples)
        self._show()

    def action_close(self) -> None:
        self.dismiss(None)
