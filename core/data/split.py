"""The held-out split (``--eval-holdout``): which images a run never trains on, so its
evaluation can score against images the model has not seen ("FID against held-out").

The rule, stated once: a file is held out when the first 8 bytes of sha256(its path
relative to the dataset folder, e.g. ``beagle/001.jpg``) read as a big-endian integer,
divided by 2**64, fall below the fraction. It depends on the path alone, so the split is
the same whatever the listing order, and adding or removing other files never moves a
file across it. Torch-free.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

HOLDOUT_RULE = "sha256(relative path)[:8] / 2**64 < fraction"
MAX_HOLDOUT = 0.5  # more would leave the model less to learn from than it is judged on


def holdout_position(rel: str) -> float:
    """Where a file's relative path falls in [0, 1): uniform, fixed by the path."""
    digest = hashlib.sha256(rel.replace("\\", "/").encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def is_held_out(rel: str, fraction: float) -> bool:
    return fraction > 0 and holdout_position(rel) < fraction


def holdout_mask(rels: Iterable[str], fraction: float) -> list[bool]:
    """True for each relative path that is held out at this fraction."""
    return [is_held_out(rel, fraction) for rel in rels]


def parse_fraction(text: str) -> float:
    """'10%' -> 0.1, '0.1' -> 0.1 (ValueError for anything else)."""
    text = str(text).strip()
    if text.endswith("%"):
        return float(text[:-1]) / 100.0
    return float(text)
