"""The studio's screens, declared once: each one's Textual mode, its number key and letter
key, its title, its screen class and its section of the help screen. The app's key
bindings and modes, the nav bar, the command palette and the help screen are built from
``SCREENS``.

The screen class is named as "module:Class" and imported by :meth:`Mode.screen_class`
(the app does, when it is defined), so the nav bar, which every screen shows, can read
this table without importing the screens that import it."""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    name: str  # the Textual mode
    key: str  # switches to it from anywhere (priority binding)
    letter: str  # also switches, when no list or field takes the letter
    title: str
    screen: str  # "module:Class"
    help: str  # its section of the help screen (Markdown)

    def screen_class(self) -> type:
        module, _, attr = self.screen.partition(":")
        return getattr(importlib.import_module(module), attr)


SCREENS: tuple[Mode, ...] = (
    Mode("dataset", "1", "d", "Dataset", "ddpm_tui.screens.dataset:DatasetScreen", """\
`r` rescan counts, `c` check for bad images (scan), `x` quarantine flagged (asks first),
`u` restore everything quarantined, `m` make the demo dataset, `o` open another dataset folder.
Select a breed row to see its pictures; `[` and `]` page through them, `z` shows the page
larger on the whole terminal (`+`/`-` zoom, arrows move, `0` fit, `Esc` back)."""),
    Mode("scrape", "2", "s", "Scrape", "ddpm_tui.screens.scrape:ScrapeScreen", """\
Pick breeds (Space toggles), the engine and the number per breed; `Enter` on Start
(or `Ctrl+R`) starts, `Ctrl+X` stops. Progress and the log follow the job, even when
you switch screens or reopen the studio."""),
    Mode("train", "3", "t", "Train", "ddpm_tui.screens.train:TrainScreen", """\
Fill the form and press **Start** (`Ctrl+R`). The trainer is `ddpm-tui train ... --quiet`
in its own session. Select a run to watch it: loss (raw and smoothed), `l` toggles the log
scale, images/s and ETA (medians of the last 20 logged windows), GPU or CPU/RAM, the latest
sample grid (`z`: full screen). `x` stops the selected run (the trainer saves first), `e`
resumes it."""),
    Mode("sample", "4", "g", "Sample", "ddpm_tui.screens.sample:SampleScreen", """\
Choose a run and its checkpoint, EMA or raw weights, a sampler (steps and eta where it takes
them), count, seed, and for class-conditional runs a breed and the guidance scale. `Ctrl+R`
(or Generate) starts; the preview shows the images forming (`Ctrl+T` switches x_t / x0).
`Ctrl+S` (or `w` outside a field) writes the PNGs, `Ctrl+U` adds x4 enlarged copies; the
path is shown. `z` (outside a field) shows the images on the whole terminal; `n` shows each
image beside its nearest training image (pixels), the distance and whether it counts as a
copy (`←`/`→` step, `Esc` back)."""),
)
