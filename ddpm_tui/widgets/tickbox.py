"""A checkbox whose state shows in its glyph and word, not only in colour: Textual's draws
`▐X▌` both ways and tells them apart by colour, which 256- and 16-colour terminals lose."""

from __future__ import annotations

from textual.widgets import Checkbox

ON, OFF = "✓", " "


class TickBox(Checkbox):
    """`▐✓▌ yes` when checked, `▐ ▌ no` when not (the words are Option.show's)."""

    def __init__(self, value: bool = False, **kw) -> None:
        super().__init__(_word(value), value, **kw)
        self.BUTTON_INNER = ON if value else OFF

    def watch_value(self) -> None:
        self.BUTTON_INNER = ON if self.value else OFF
        self.label = _word(self.value)
        super().watch_value()


def _word(value: bool) -> str:
    return "yes" if value else "no"
