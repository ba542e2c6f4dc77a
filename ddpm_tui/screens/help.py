"""F1 / ? : what every key does, on one scrollable page."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP_TEXT = """\
# ddpm-tui studio

Train a diffusion model on dog photos, in the terminal. Every long job runs in the
background: training and scraping are separate processes that keep running when the
studio quits; reopen the studio and it re-attaches.

## Moving around
| key | what |
|---|---|
| `1` `2` `3` `4` | Dataset, Scrape, Train, Sample screen (also `d` `s` `t` `g`), when no field or drop-down has focus |
| `Tab` / `Shift+Tab` | next / previous control (the focused one is highlighted) |
| `Esc` | leave a field (then the number keys switch screens again) |
| `Ctrl+P` | command palette: screens, actions, themes, image colours (remembered) |
| `F1` or `?` | this help |
| `q` / `Ctrl+Q` | quit (asks about running jobs) |

The mouse works too: click tabs, rows, buttons and checkboxes.

## Dataset
`r` rescan counts, `c` check for bad images (scan), `x` quarantine flagged (asks first),
`u` restore everything quarantined, `m` make the demo dataset, `o` open another dataset folder.
Select a breed row to see its pictures; `[` and `]` page through them, `z` shows the page
larger on the whole terminal (`+`/`-` zoom, arrows move, `0` fit, `Esc` back).

## Scrape
Pick breeds (Space toggles), the engine and the number per breed; `Enter` on Start
(or `Ctrl+R`) starts, `Ctrl+X` stops. Progress and the log follow the job, even when
you switch screens or reopen the studio.

## Train
Fill the form and press **Start** (`Ctrl+R`). The trainer is `ddpm-tui train ... --quiet`
in its own session. Select a run to watch it: loss (raw and smoothed), `l` toggles the log
scale, images/s and ETA (medians of the last 20 logged windows), GPU or CPU/RAM, the latest
sample grid (`z`: full screen). `x` stops the selected run (the trainer saves first), `e`
resumes it.

## Sample
Choose a run and its checkpoint, EMA or raw weights, DDPM or DDIM, steps, eta, count, seed,
and for class-conditional runs a breed and the guidance scale. `Ctrl+R` (or Generate) starts;
the preview shows the images forming (`Ctrl+T` switches x_t / x0). `Ctrl+S` (or `w` outside
a field) writes the PNGs, `Ctrl+U` adds x4 enlarged copies; the path is shown.

## Colours
Images are drawn with half blocks (one cell = two pixels). Truecolor is used when the
terminal has it, otherwise the 256-colour palette; force one with `DDPM_TUI_COLORS=256`
or from the command palette (`Image colours: truecolor` works in tmux/SSH without
COLORTERM, and is remembered for the workspace).
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,f1,question_mark,q", "dismiss", "Close help"),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-body"):
            yield Markdown(HELP_TEXT)

    def action_dismiss(self, result: None = None) -> None:
        self.dismiss(None)
