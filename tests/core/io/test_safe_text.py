"""core.io.safe_text.shown: nothing from disk can reach the terminal as a control sequence."""

from __future__ import annotations

import os
from pathlib import Path

from core.io.safe_text import shown, shown_markup


def test_control_characters_are_escaped():
    assert shown("\x1b]0;pwned\x07x.jpg") == "\\e]0;pwned\\x07x.jpg"
    assert shown("a\x1b[2Jb") == "a\\e[2Jb"
    assert shown("two\nlines\r.jpg") == "two\\nlines\\r.jpg"
    assert shown("del\x7f c1\x9b[2J nul\x00 tab\t") == "del\\x7f c1\\x9b[2J nul\\x00 tab\\t"
    assert shown("evil\u202egpj.exe") == "evil\\u202egpj.exe"  # bidi override
    assert shown("line\u2028sep") == "line\\u2028sep"


def test_plain_and_unicode_names_are_unchanged():
    for name in ("beagle/001.jpg", "Hündchen – süß.png", "柴犬.jpg", "a b [c].jpg", "🐶.webp"):
        assert shown(name) == name
    assert shown(Path("/x/y.jpg")) == "/x/y.jpg"


def test_undecodable_bytes_become_visible_and_printable():
    name = os.fsdecode(b"bad\xff\x1b.jpg")
    out = shown(name)
    assert out == "bad\\xff\\e.jpg"
    out.encode("utf-8")  # a lone surrogate would raise here


def test_markup_is_escaped_for_rich():
    assert shown_markup("[bold]x\x1b") == "\\[bold]x\\e"
