"""Text from disk or the network, made safe to show in a terminal.

A file name may hold any byte but "/" and NUL: ``ESC]0;title BEL`` retitles the terminal,
``ESC[2J`` clears it, a newline forges a line of output, and an undecodable byte (a lone
surrogate after ``os.fsdecode``) makes ``print`` raise. ``shown`` replaces every such
character with a visible escape, so what is printed is exactly one line of plain text.
Rich's ``markup.escape`` only protects Rich's own ``[tags]``; use both for Rich output
(``shown_markup``).
"""

from __future__ import annotations

import unicodedata

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\e"}
# Unicode categories escaped: Cc (C0 controls, DEL and C1 controls: 0x9b is a one-byte
# CSI), Cf (bidi overrides and zero-width characters that make a name look like
# another), Cs (lone surrogates), Zl/Zp (line and paragraph separators).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for an undecodable byte
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def shown(text: object) -> str:
    """``text`` (a str, or anything ``str()`` takes, e.g. a Path) with every control,
    format and undecodable character replaced by a visible escape (ESC -> ``\\e``,
    newline -> ``\\n``, BEL -> ``\\x07``, U+202E -> ``\\u202e``)."""
    s = str(text)
    if s.isprintable():  # the common case: nothing to do (isprintable is False for all of the above)
        return s
    return "".join(_escape(ch) if unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch for ch in s)


def shown_markup(text: object) -> str:
    """``shown`` plus Rich markup escaping, for text passed to a Rich console or table."""
    from rich.markup import escape

    return escape(shown(text))
