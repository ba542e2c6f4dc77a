"""bench.quality's arm list and its tables: parsing ``RECIPE@PRESET~LR/BATCH``, the peer's
learning-rate sweep, repeats, and the per-set summary (medians, ratios to the best peer and
to the classic recipe). Torch-free."""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Any

from core.diffusion.registry import current_name

CLASSIC_PRESET = "small"
FAST_PRESET = "res-small"
MAX_BATCH = 4096


class BenchError(Exception):
    """Something the user can fix; one line."""


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str  # as given on the command line
    recipe: str  # a recipe of core.training.options.RECIPES, or "peer"
    preset: str | None  # our network (None for the peer)
    lr: float | None = None  # "~LR": the arm's learning rate instead of its recipe's
    batch: int | None = None  # "/BATCH": the arm's batch size instead of its recipe's
    options: tuple[tuple[str, Any], ...] = ()  # "+OPTION=VALUE" after the arm: any training option

    @property
    def slug(self) -> str:
        return slug(self.name)


def slug(name: str) -> str:
    """An arm's name (or a row's label, ``fast@ema0.1``) as a run and file name."""
    return name.replace("@", "-").replace("~", "-lr").replace("/", "-b").replace("+", "_").replace("=", "")


def recipes() -> tuple[str, ...]:
    from core.training.options import RECIPES

    return tuple(RECIPES)


def _lr(spec: str, text: str) -> float:
    try:
        lr = float(text)
    except ValueError:
        lr = -1.0
    if not 0 < lr < 1:
        raise BenchError(f"arm {spec!r}: the learning rate after '~' must be a number in (0, 1)")
    return lr


def _batch(spec: str, text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_BATCH:
        raise BenchError(f"arm {spec!r}: the batch size after '/' must be an integer in 1..{MAX_BATCH}")
    return int(text)


def _options(spec: str, parts: list[str]) -> tuple[tuple[str, Any], ...]:
    """``+OPTION=VALUE`` pieces as (name, value), parsed as `ddpm-tui train` parses them
    (e.g. ``fast+ema_kind=exp+ema_decay=0.999``: the fast recipe as it was before power EMA)."""
    from core.training.options import BY_NAME

    pairs = []
    for part in parts:
        name, eq, text = part.partition("=")
        name = name.strip().replace("-", "_")
        if not eq or name not in BY_NAME or BY_NAME[name].internal:
            raise BenchError(f"arm {spec!r}: {part!r} is not OPTION=VALUE with a training option (e.g. +ema_kind=exp)")
        try:
            pairs.append((name, BY_NAME[name].parse(text)))
        except ValueError as exc:
            raise BenchError(f"arm {spec!r}: {exc}") from None
    return tuple(pairs)


def parse_arm(spec: str, defaults: dict[str, str]) -> Arm:
    """One ``RECIPE@PRESET~LR/BATCH+OPTION=VALUE...`` (each of @, ~, / and + optional)."""
    head_text, *option_parts = spec.split("+")
    options = _options(spec, option_parts)
    rest, slash, batch_text = head_text.partition("/")
    head, tilde, lr_text = rest.partition("~")
    lr = _lr(spec, lr_text) if tilde else None
    batch = _batch(spec, batch_text) if slash else None
    recipe, _, preset = head.partition("@")
    if current_name(recipe) != recipe:  # a former name ("seed"): the arm is named as today
        spec = current_name(recipe) + spec[len(recipe):]
        recipe = current_name(recipe)
    if recipe == "peer":
        if preset:
            raise BenchError(f"arm {spec!r}: the peer's network is fixed (Unet(dim=32, dim_mults=(1, 2, 4)))")
        if options:
            raise BenchError(f"arm {spec!r}: +OPTION=VALUE is for our recipes; the peer's settings are fixed")
        return Arm(spec, "peer", None, lr, batch)
    if recipe not in recipes():
        raise BenchError(f"unknown arm {spec!r}; use peer or a recipe ({', '.join(recipes())}), "
                         "each as RECIPE@PRESET~LR/BATCH with @, ~ and / optional")
    from core.diffusion.registry import PRESET_NAMES

    preset = preset or defaults.get(recipe, defaults["*"])
    if preset not in PRESET_NAMES:
        raise BenchError(f"arm {spec!r}: unknown preset {preset!r}; known: {', '.join(PRESET_NAMES)}")
    return Arm(spec, recipe, preset, lr, batch, options)


def parse_arms(text: str, *, smoke: bool = False, peer_lrs: str = "") -> list[Arm]:
    """``smoke``: the tiny presets by default (plumbing checks, not figures). ``peer_lrs``
    ("8e-5,3e-4"): each peer arm without its own ~LR becomes one arm per rate (a peer arm
    is added when the list has none)."""
    defaults = {"classic": "tiny", "*": "res-tiny"} if smoke else {"classic": CLASSIC_PRESET, "*": FAST_PRESET}
    specs = [s.strip() for s in text.split(",") if s.strip()]
    arms = [parse_arm(spec, defaults) for spec in specs]
    rates = [r.strip() for r in peer_lrs.split(",") if r.strip()]
    if rates:
        for r in rates:
            _lr(f"peer~{r}", r)
        expanded: list[Arm] = []
        for arm in arms:
            if arm.recipe == "peer" and arm.lr is None:
                base, slash, batch = arm.name.partition("/")
                expanded += [parse_arm(f"{base}~{r}{slash}{batch}", defaults) for r in rates]
            else:
                expanded.append(arm)
        if not any(a.recipe == "peer" for a in arms):
            expanded += [parse_arm(f"peer~{r}", defaults) for r in rates]
        arms = expanded
    if not arms:
        raise BenchError("no arms given")
    if len({a.name for a in arms}) != len(arms):
        raise BenchError(f"an arm is listed twice in {text!r}" + (f" with --peer-lrs {peer_lrs}" if rates else ""))
    return arms


def parse_lengths(text: str) -> tuple[float, ...]:
    """--ema-lengths: sigma_rel values in (0, 1)."""
    try:
        lengths = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        lengths = (-1.0,)
    if any(not 0 < x < 1 for x in lengths):
        raise BenchError(f"--ema-lengths {text!r}: a comma-separated list of numbers in (0, 1), e.g. 0.05,0.1")
    return lengths


def schedule(arms: list[Arm], repeat: int) -> list[tuple[int, Arm]]:
    """The order arms train in: the whole list ``repeat`` times, interleaved (a, b, a, b)."""
    return [(k, arm) for k in range(repeat) for arm in arms]


# ---------------------------------------------------------------------------- tables

METRICS = ("steps", "batch", "images_per_s", "seconds", "fid", "kid", "precision", "recall")


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per label (an arm, or an arm at an EMA length), in first-seen order: the median
    of each metric over the repeats, and the individual FIDs."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["arm"], []).append(r)
    out = []
    for label, group in groups.items():
        row = {k: group[0][k] for k in ("arm", "recipe", "network", "parameters") if k in group[0]}
        for key in METRICS:
            values = [r[key] for r in group if isinstance(r.get(key), (int, float))]
            if values:
                row[key] = statistics.median(values)
        row["repeats"] = len(group)
        if "fid" in group[0]:
            row["fids"] = " ".join(f"{r['fid']:.4g}" for r in group)
        out.append(row)
    add_ratios(out)
    return out


def references(rows: list[dict[str, Any]]) -> dict[str, str]:
    """The rows the ratios divide by: the peer arm with the best FID (the peer at its best
    swept lr) and the classic arm (named ``classic`` if listed, else the first classic one)."""
    refs = {}
    peers = [r for r in rows if r.get("recipe") == "peer" and not math.isnan(r.get("fid", math.nan))]
    if peers:
        refs["peer"] = min(peers, key=lambda r: r["fid"])["arm"]
    classics = [r for r in rows if r.get("recipe") == "classic" and "@ema" not in r["arm"]]
    if classics:
        refs["classic"] = next((r["arm"] for r in classics if r["arm"] == "classic"), classics[0]["arm"])
    return refs


def add_ratios(rows: list[dict[str, Any]]) -> dict[str, str]:
    """``fid/peer`` and ``fid/classic`` on every row that has a FID; returns the references."""
    if not rows or "fid" not in rows[0]:
        return {}
    refs = references(rows)
    by_name = {r["arm"]: r for r in rows}
    for ref, label in refs.items():
        base = by_name[label]["fid"]
        for r in rows:
            r[f"fid/{ref}"] = r["fid"] / base if base > 0 else math.nan
    return refs


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(_fmt(r.get(c, "")).rjust(w) for c, w in zip(columns, widths)))


def print_summary(name: str, summary: list[dict[str, Any]], *, scored: bool, repeat: int) -> None:
    refs = references(summary) if scored else {}
    print(f"\n== {name}" + "".join(f"; fid/{k}: against {v}" + (" (the peer at its best swept lr)" if k == "peer" else "")
                                   for k, v in refs.items()))
    columns = ["arm", "network", "parameters", "steps", "batch", "images_per_s"]
    if scored:
        columns += ["fid"] + (["fids"] if repeat > 1 else []) + ["kid", "precision", "recall"]
        columns += [f"fid/{k}" for k in refs]
    print_table(summary, columns)
