"""F1 / ? : what every key does, on one scrollable page."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

from ddpm_tui.modes import SCREENS

_HEAD = """\
# ddpm-tui studio

Train a diffusion model on dog photos, in the terminal. Every long job runs in the
background: training and scraping are separate processes that keep running when the
studio quits; reopen the studio and it re-attaches.

## Moving around
| key | what |
|---|---|
{switch_row}
| `Tab` / `Shift+Tab` | next / previous control (the focused one is highlighted) |
| `Esc` | leave a field (then the number keys switch screens again) |
| `Ctrl+P` | command palette: screens, actions, themes, image colours (remembered) |
| `F1` or `?` | this help |
| `q` / `Ctrl+Q` | quit (asks about running jobs) |

The mouse works too: click tabs, rows, buttons and checkboxes.
"""

_COLOURS = """\
## Colours
Images are drawn with half blocks (one cell = two pixels). Truecolor is used when the
terminal has it, otherwise the 256-colour palette; force one with `DDPM_TUI_COLORS=256`
or from the command palette (`Image colours: truecolor` works in tmux/SSH without
COLORTERM, and is remembered for the workspace).
"""


def _help_text() -> str:
    keys = " ".join(f"`{m.key}`" for m in SCREENS)
    titles = ", ".join(m.title for m in SCREENS)
    letters = " ".join(f"`{m.letter}`" for m in SCREENS)
    row = f"| {keys} | {titles} screen (also {letters}), when no field or drop-down has focus |"
    sections = "".join(f"## {m.title}\n{m.help}\n\n" for m in SCREENS)
    return _HEAD.format(switch_row=row) + "\n" + sections + _COLOURS


HELP_TEXT = _help_text()


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,f1,question_mark,q", "dismiss", "Close help"),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-body"):
            yield Markdown(HELP_TEXT)

    def action_dismiss(self, result: None = None) -> None:
        self.dismiss(None)
