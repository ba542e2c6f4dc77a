"""Every training option, declared once (torch-free).

``OPTIONS`` holds each option's name, type, default, choices, bounds, help, group and
whether a resume may change it. From it come ``TrainOptions`` (the dataclass TrainConfig
extends), the `ddpm-tui train` flags (``add_train_arguments``), the studio's new-run form
(ddpm_tui/screens/newrun.py) and the keys of config.json. Adding an option is one entry
here plus its use.

Recipes are named bundles of defaults for some options (``RECIPES``): ``classic`` is the
training of dogs-image-generator-DDPM (the original project), exactly; ``fast`` a modern
recipe; ``edm`` Karras et al. 2022's process (option ``formulation``) with fast's optimiser. Former names (``seed`` for classic, :data:`core.diffusion.registry.FORMER_NAMES`) are
still read wherever a recipe or preset is given: flags, the form, config.json. Explicit values override the
recipe, and config.json stores the resolved values, so a run never depends on what a
recipe meant when it was started.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import MISSING, asdict, dataclass, field, fields, make_dataclass
from typing import Any, Iterable

from core.data.split import MAX_HOLDOUT, parse_fraction
from core.diffusion.registry import (AMP_MODES, DEFAULT_SAMPLER, DEVICE_SUGGESTIONS, EMA_KINDS,  # noqa: F401
                                     FORMULATION_NAMES, LOSS_WEIGHTING_NAMES, MAX_SEED, MAX_SIGMA_REL, default_steps,
                                     PREDICTION_NAMES, PRESET_IMAGE_SIZE, PRESET_NAMES, SAMPLER_NAMES,
                                     SCHEDULE_NAMES, WEIGHT_NAMES, FORMER_NAMES,
                                     current_name)

RESIZE_MODES = ("squash", "crop")
RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RUN_NAME_RULE = "use letters, digits, '.', '_' or '-' (at most 64, not starting with . _ -)"
GROUPS = ("run and data", "model and diffusion", "optimisation", "saving and samples", "hardware")


@dataclass(frozen=True)
class Option:
    name: str
    type: type  # int | float | str | bool
    default: Any
    help: str
    group: str
    label: str  # the new-run form's label (short)
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    resumable: bool = True  # may a resumed run change it?
    flags: tuple[str, ...] = ()  # extra command-line spellings (the original's come first)
    metavar: str | None = None
    duration: bool = False  # the command line also takes 30m, 1.5h, 2d
    internal: bool = False  # set by the program (not a flag, not in the form), kept in config.json
    basic: bool = False  # shown in the form's first section
    percent: bool = False  # the command line also takes 10% for 0.1

    @property
    def cli_flags(self) -> tuple[str, ...]:
        if self.type is bool and self.default is True:
            return (f"--no-{self.name.replace('_', '-')}",)
        names = [*self.flags, f"--{self.name.replace('_', '-')}", f"--{self.name}"]
        return tuple(dict.fromkeys(names))  # ordered, no repeats

    def check(self, value: Any) -> Any:
        """``value`` as this option's type, or ValueError naming the option and the value."""
        if self.type is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{self.name} must be true or false, got {value!r}")
            return value
        if self.type is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{self.name} must be an integer, got {value!r}")
        elif self.type is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{self.name} must be a finite number, got {value!r}")
            value = float(value)
        elif not isinstance(value, str):
            raise ValueError(f"{self.name} must be text, got {value!r}")
        else:
            value = self.current(value)
        if self.choices and value not in self.choices:
            raise ValueError(f"unknown {self.name} {value!r}; use one of {', '.join(self.choices)}")
        if self.type in (int, float) and not self.in_bounds(value):
            raise ValueError(f"{self.name} must be {self.bounds_text()}, got {value!r}")
        return value

    def current(self, value: Any) -> Any:
        """A choice given by its former name (``seed``) as its current one (``classic``)."""
        renamed = current_name(value)
        return renamed if self.choices and renamed in self.choices else value

    def in_bounds(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def bounds_text(self) -> str:
        low, high = self.low, self.high
        if self.type is int:  # exact, not 9.22337e+18
            low, high = (None if v is None else int(v) for v in (low, high))
            fmt = str
        else:
            fmt = "{:g}".format
        if low is not None and high is not None:
            return f"in {'(' if self.low_open else '['}{fmt(low)}, {fmt(high)}{')' if self.high_open else ']'}"
        if low is not None:
            return f"{'>' if self.low_open else '>='} {fmt(low)}"
        return f"{'<' if self.high_open else '<='} {fmt(high)}" if high is not None else "a number"

    def parse(self, text: str) -> Any:
        """Text from the command line or the form -> the value (ValueError naming it)."""
        text = str(text).strip()
        if self.type is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{self.name}: {text!r} is not true or false")
        if self.type is str:
            return self.check(text)
        try:
            value = (parse_duration(text) if self.duration else parse_fraction(text) if self.percent
                     else self.type(text))
        except ValueError:
            kind = "an integer" if self.type is int else "a number"
            raise ValueError(f"{self.name}: {text!r} is not {kind}") from None
        return self.check(value)

    def show(self, value: Any) -> str:
        """A value as the form and --help write it (parse(show(v)) == v)."""
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, float):
            short = f"{value:g}"
            return short if float(short) == value else repr(value)
        return str(value)


def _opt(name, type_, default, group, label, help, **kw) -> Option:
    return Option(name, type_, default, help, group, label, **kw)


_DATA, _MODEL, _OPT, _SAVE, _HW = GROUPS
OPTIONS: tuple[Option, ...] = (
    # -- run and data
    _opt("data", str, "", _DATA, "Dataset folder", "folder of breed folders (default: WORKSPACE/data/dogs)",
         metavar="DIR", basic=True),
    _opt("run", str, "", _DATA, "Run name", "the run's name (the run folder's name)", internal=True),
    _opt("image_size", int, 64, _DATA, "Image size px", "image side in pixels", low=1, metavar="PX",
         resumable=False, basic=True),
    _opt("resize", str, "squash", _DATA, "Resize", "squash to a square (the original) or crop the centre square",
         choices=RESIZE_MODES),
    _opt("flip", bool, True, _DATA, "Random flips", "random left-right flips of the training images (--no-flip trains without them)"),
    _opt("workers", int, 0, _DATA, "Workers", "image-decoding workers (0 = one per CPU)", low=0, metavar="N"),
    _opt("cache_dir", str, "", _DATA, "Cache folder", "decoded-image cache (set by the workspace)",
         internal=True),
    _opt("init_from", str, "", _DATA, "Init from run/file",
         "start this NEW run from another run's weights: a run name, a run folder or a checkpoint file "
         "(same network; a conditional run's breeds are matched by name, new ones start fresh)",
         metavar="RUN_OR_FILE", resumable=False),
    _opt("init_from_raw", bool, False, _DATA, "Init: raw weights",
         "with --init-from: take the raw weights instead of the EMA ones", resumable=False),
    # -- model and diffusion
    _opt("recipe", str, "classic", _MODEL, "Recipe",
         "a named set of values for the options below: classic (formerly seed: the training of "
         "dogs-image-generator-DDPM, the original project, exactly), fast (v prediction, cosine schedule, min-SNR, AdamW with warm-up, "
         "grad clip, power EMA, batch 32) or edm (Karras et al. 2022's preconditioning, noise levels, loss "
         "and samplers, with fast's optimiser settings); explicit options override it",
         choices=("classic", "fast", "edm"), basic=True),
    _opt("preset", str, "classic", _MODEL, "Preset",
         "the network's size and design: classic (formerly seed: the original project's 93M UNet, "
         "slow on a CPU), small, tiny (its design, "
         "smaller); res-small, res-tiny (ResNet blocks, attention at 16 px and below: more quality per CPU "
         "minute)", choices=PRESET_NAMES, resumable=False, basic=True),
    _opt("formulation", str, "vp", _MODEL, "Formulation",
         "the diffusion process: vp (the original's: T noise steps on a schedule; the options T to "
         "zero_terminal_snr below belong to it) or edm (Karras et al. 2022: continuous noise levels and the network "
         "wrapped in EDM's preconditioning; T, schedule, prediction, loss weighting, min-SNR gamma and zero "
         "terminal SNR do not apply and are refused; sample with heun, ddim or dpmpp2m)",
         choices=FORMULATION_NAMES, resumable=False),
    _opt("T", int, 1000, _MODEL, "Noise steps T", "diffusion steps: how many small noise steps take an image to pure noise (x_T); the DDPM sampler takes all T, the others fewer", low=1,
         metavar="STEPS", resumable=False),
    _opt("schedule", str, "linear", _MODEL, "Schedule", "noise schedule (beta): how fast noise grows over the T steps; linear (the original), cosine (slower at first, kinder to small images) or sigmoid", choices=SCHEDULE_NAMES, resumable=False),
    _opt("prediction", str, "eps", _MODEL, "Prediction", "what the network predicts: eps (the added noise, the original), x0 (the clean image) or v (a mix of both that trains evenly at every noise level)",
         choices=PREDICTION_NAMES, resumable=False),
    _opt("loss_weighting", str, "uniform", _MODEL, "Loss weighting", "how much each noise level counts in the loss: uniform (the original) or min_snr (min-SNR: nearly clean steps, with a high signal-to-noise ratio, count less; trains faster)",
         choices=LOSS_WEIGHTING_NAMES, resumable=False),
    _opt("min_snr_gamma", float, 5.0, _MODEL, "Min-SNR gamma", "min-SNR weighting's cap gamma: a step weighs min(SNR, gamma) (5 is the paper's)", low=0.0,
         low_open=True, metavar="G", resumable=False),
    _opt("zero_terminal_snr", bool, False, _MODEL, "Zero terminal SNR",
         "zero terminal SNR: rescale the schedule so the last step x_T is pure noise, as sampling starts from (no trace of the image left)", resumable=False),
    _opt("conditional", bool, False, _MODEL, "Breed labels",
         "breed labels: the network learns which breed (folder) each image is, so sampling can ask for one (--breed) and use --guidance", resumable=False, basic=True),
    _opt("label_dropout", float, 0.1, _MODEL, "Label dropout",
         "label dropout: the share of training images shown without their breed, so the network also learns to draw any dog; classifier-free guidance needs it", low=0.0, high=1.0, high_open=True, metavar="P"),
    # -- optimisation
    _opt("batch_size", int, 16, _OPT, "Batch size", "training batch size per process", low=1, metavar="N",
         flags=("--batch_size",), basic=True),
    _opt("grad_accum", int, 1, _OPT, "Grad accumulation",
         "split each step's batch into N micro-batches whose gradients add up (the step, its learning rate "
         "and images/s stay those of the whole --batch_size; memory is that of batch_size/N)",
         low=1, metavar="N"),
    _opt("lr", float, 3e-4, _OPT, "Learning rate", "learning rate", low=0.0, low_open=True, basic=True),
    _opt("optimizer", str, "adam", _OPT, "Optimizer", "adam (the original) or adamw", choices=("adam", "adamw")),
    _opt("weight_decay", float, 0.0, _OPT, "Weight decay", "AdamW weight decay", low=0.0, metavar="WD"),
    _opt("lr_warmup", int, 0, _OPT, "LR warm-up steps", "steps of linear learning-rate warm-up", low=0,
         metavar="STEPS"),
    _opt("lr_schedule", str, "constant", _OPT, "LR schedule",
         "constant, or cosine decay to 0 over the run's steps", choices=("constant", "cosine")),
    _opt("grad_clip", float, 0.0, _OPT, "Grad clip", "clip the gradient norm at this value: one bad batch cannot throw the weights far (0 = off, as in the original)",
         low=0.0, metavar="NORM"),
    _opt("ema_decay", float, 0.995, _OPT, "EMA decay", "EMA: an exponential moving average of the weights, what sampling uses by default (smoother than the raw weights); decay closer to 1 = smoother, slower to follow", low=0.0, high=1.0, metavar="D"),
    _opt("ema_warmup", int, 0, _OPT, "EMA warm-up", "EMA warm-up W: the decay starts low and grows, min(D, (1+n)/(W+n)) at step n, so early weights are not averaged in for long; 0 = off",
         low=0, metavar="W"),
    _opt("ema_kind", str, "exp", _OPT, "EMA kind",
         "which average of the weights sampling uses: exp (exponential, --ema-decay and --ema-warmup; the original) "
         "or power (EDM2's power-function EMA: tracks two averages, sigma_rel 0.05 and 0.10, saves them at every "
         "checkpoint, and can rebuild any --ema-length after training; see docs/training.md). Fixed when a run starts",
         choices=EMA_KINDS, resumable=False),
    _opt("ema_length", float, 0.10, _OPT, "EMA length",
         "with --ema-kind power: the width of the average that grids, evaluations, sample and export use, as "
         "a share of the run so far (EDM2's sigma_rel; 0.05 and 0.10 are kept exactly, others rebuilt); "
         "sample/eval/export take --ema-length to try others", low=0.0, low_open=True, high=MAX_SIGMA_REL, metavar="SIGMA_REL"),
    _opt("ema_snapshots", int, 16, _OPT, "EMA snapshots",
         "with --ema-kind power: keep at most N of the snapshot files each save writes to checkpoints/ema/ "
         "(0.75 GB each on the classic network); past N the trainer deletes the ones that leave the rest most "
         "evenly spread over the run (never the first or the newest). More = rebuilt --ema-length widths closer "
         "to exact, more disk; 0.05 and 0.10 stay exact", low=2, metavar="N"),
    _opt("epochs", int, 500, _OPT, "Epochs", "epochs to run", low=1, basic=True),
    _opt("seed", int, 0, _OPT, "Seed", "random seed", low=0, high=MAX_SEED),
    _opt("max_steps", int, 0, _OPT, "Max steps", "finish at this global step (0 = no limit)", low=0,
         metavar="N"),
    _opt("max_time", float, 0.0, _OPT, "Max time s",
         "stop after this long, e.g. 90m or 8h; the run can be continued (0 = no limit)", low=0.0,
         metavar="DUR", duration=True, basic=True),
    _opt("max_nonfinite", int, 5, _OPT, "Max NaN steps", "NaN/inf losses in a row before the run fails", low=1,
         metavar="N"),
    # -- saving and samples
    _opt("samples", int, 10, _SAVE, "Samples/save", "images per sample grid", low=0, metavar="N", basic=True),
    _opt("save_frequency", int, 10, _SAVE, "Save every N ep", "epochs between checkpoints and sample grids (the first grid comes after this many epochs)",
         low=1, metavar="EPOCHS", flags=("--save_frequency",), basic=True),
    _opt("save_every_steps", int, 0, _SAVE, "Save every N steps", "also checkpoint every N steps (0 = off)",
         low=0, metavar="N"),
    _opt("keep_milestones", int, 0, _SAVE, "Keep milestones",
         "keep N epoch_NNNN.pt checkpoints besides last.pt (-1 all)", low=-1, metavar="N"),
    # Declared as runs before this option drew (DDIM); every recipe draws with the project's
    # default sampler (RECIPES below), so only config.json files older than the option read "ddim".
    _opt("sample_sampler", str, "ddim", _SAVE, "Sample sampler",
         "the sampler of the grids written at each save and of --eval-every's evaluations", choices=SAMPLER_NAMES),
    _opt("sample_steps", int, 25, _SAVE, "Sample steps",
         "sampler steps for the grids written at each save and for --eval-every's evaluations", low=1, metavar="N"),
    _opt("sample_guidance", float, 3.0, _SAVE, "Sample guidance", "classifier-free guidance for the grids of conditional runs: how strongly images follow their breed (1 = plain conditional; higher = more typical, less varied)",
         low=0.0, metavar="W"),
    _opt("log_every", int, 10, _SAVE, "Log every N steps", "steps per metrics line", low=1, metavar="N"),
    _opt("eval_every", int, 0, _SAVE, "Eval every N steps",
         "evaluate the EMA weights (FID, KID, precision/recall into eval.jsonl) every N steps (0 = off)",
         low=0, metavar="N"),
    _opt("tensorboard", bool, False, _SAVE, "TensorBoard",
         "also write loss, learning rate, gradient norm, images/s, evaluations and sample grids to "
         "RUN/tb/ (needs: pip install 'ddpm-tui[tensorboard]')"),
    _opt("eval_holdout", float, 0.0, _SAVE, "Eval held-out",
         "hold this share of the images out of training (0.1, or 10 with a percent sign; 0 = off) and evaluate against them: "
         "FID against images never trained on; the split is fixed by each file's path (see docs/evaluation.md)",
         low=0.0, high=MAX_HOLDOUT, percent=True, resumable=False, metavar="FRACTION"),
    _opt("eval_n", int, 1000, _SAVE, "Eval images",
         "images generated per evaluation (with --sample-steps DDIM steps); small n is quick but noisy",
         low=2, metavar="N"),
    _opt("stop_when_flat", int, 0, _SAVE, "Stop when flat",
         "with --eval-every: finish after K evaluations without a significant KID improvement (2x the "
         "combined std; see docs/evaluation.md); keeps checkpoints/best.pt (0 = off)", low=0, metavar="K"),
    _opt("stop_at_kid", float, 0.0, _SAVE, "Stop at KID",
         "with --eval-every: finish once an evaluation's KID is at or below X; keeps checkpoints/best.pt "
         "(0 = off)", low=0.0, metavar="X"),
    _opt("stop_at_fid", float, 0.0, _SAVE, "Stop at FID",
         "with --eval-every: finish once an evaluation's FID is at or below X; keeps checkpoints/best.pt "
         "(by FID when this is the only stop rule; 0 = off)", low=0.0, metavar="X"),
    # -- hardware
    _opt("device", str, "auto", _HW, "Device", "auto (CUDA, then MPS, then CPU), cuda, cuda:1, mps or cpu",
         basic=True),
    _opt("amp", str, "auto", _HW, "Autocast", "autocast (mixed precision: much of the maths in 16-bit floats, faster on GPUs): "
         "auto = bf16 where the device does it fast, off = 32-bit; fp16 is refused until a gradient scaler exists", choices=AMP_MODES),
    _opt("channels_last", bool, False, _HW, "channels_last", "channels_last: a memory layout of the images and weights (channels innermost), often faster on GPUs"),
    _opt("compile", bool, False, _HW, "torch.compile",
         "torch.compile the network (opt-in; the first step compiles, minutes on a GPU, cached in the "
         "workspace's cache/ for later runs)"),
    _opt("deterministic", bool, False, _HW, "Deterministic",
         "deterministic kernels (cuDNN, cuBLAS workspace, torch.use_deterministic_algorithms): "
         "bit-exact resume on CUDA; slower"),
)
BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
# The options that end a run on its evaluations (core/training/stop_rules.py); they need eval_every.
STOP_RULES = ("stop_when_flat", "stop_at_kid", "stop_at_fid")
# The options with a choice that has a former name (recipe, preset): derived, not listed.
_RENAMABLE = tuple(o for o in OPTIONS if set(o.choices) & set(FORMER_NAMES.values()))

# Named bundles of defaults. "classic" is the declared defaults (the original project's
# training) but for how grids are drawn; others change only what they list.
# How every recipe's grids and evaluations draw: the project's default sampler at its own steps
# (not training; the original drew no grids this way).
_DRAWS = {"sample_sampler": DEFAULT_SAMPLER, "sample_steps": default_steps(DEFAULT_SAMPLER)}
RECIPES: dict[str, dict[str, Any]] = {
    "classic": {**_DRAWS},
    "fast": {**_DRAWS,
        "prediction": "v", "schedule": "cosine", "loss_weighting": "min_snr", "min_snr_gamma": 5.0,
        "optimizer": "adamw", "weight_decay": 0.0, "lr_warmup": 200, "lr_schedule": "constant", "lr": 2e-4,
        "grad_clip": 1.0, "ema_decay": 0.999, "ema_warmup": 10, "ema_kind": "power", "ema_length": 0.05,
        "batch_size": 32, "amp": "auto",
    },
}
# EDM (Karras et al. 2022) with the fast recipe's optimiser settings; the VP-only options
# (T, schedule, prediction, loss weighting, ...) keep their declared values, which EDM ignores.
# ema_length: 0.05 won for fast on both dev sets (bench/RESULTS.md, 2026-12-06); for edm the
# two sets disagreed, so it keeps EDM2's 0.10.
RECIPES["edm"] = {"formulation": "edm", **{k: v for k, v in RECIPES["fast"].items()
                                            if k not in ("prediction", "schedule", "loss_weighting", "min_snr_gamma")},
                  "ema_length": 0.10}
# The options only the VP process reads: refused with formulation edm unless at their declared values.
VP_ONLY_OPTIONS = ("T", "schedule", "prediction", "loss_weighting", "min_snr_gamma", "zero_terminal_snr")
# Keys config.json carries besides the options (written by the trainer).
CONFIG_META_KEYS = ("model", "diffusion", "classes", "created_at", "num_images", "world_size", "imported_from",
                    "initialized_from", "holdout")


# The recipe a new run gets when none is named (the CLI and the studio's form): the best one
# measured by `python -m bench.quality` (README). The declared defaults above stay the classic
# recipe's, so a config.json older than an option reads as the original's training.
NEW_RUN_RECIPE = "fast"

# What a new run starts from without a CUDA GPU (the studio's form; the CLI without --preset): the
# original's 93M network at 64 px takes hours an epoch there, so a network whose samples show
# something within minutes, stopped (resumable) after half an hour. res-small is the network
# `python -m bench.quality` measured for the fast recipe on a CPU; lr 1e-3 beat the recipe's 2e-4
# by 2.7x (demo) and 3.7x (strokes) in FID at equal CPU minutes (bench/RESULTS.md, 2026-12-06):
# a short CPU run spends much of itself in the lr warm-up. GPU runs keep the recipe's 2e-4.
CPU_NEW_RUN: dict[str, Any] = {"preset": "res-small", "image_size": PRESET_IMAGE_SIZE["res-small"],
                               "max_time": 1800.0}
CPU_LR: dict[str, float] = {"fast": 1e-3}  # per recipe: only where measured


def cpu_new_run(recipe: str = NEW_RUN_RECIPE) -> dict[str, Any]:
    """CPU_NEW_RUN, plus the learning rate measured for ``recipe`` on a CPU (if any)."""
    recipe = current_name(recipe)
    return {**CPU_NEW_RUN, **({"lr": CPU_LR[recipe]} if recipe in CPU_LR else {})}


def new_run_defaults(gpu: bool) -> dict[str, Any]:
    """A new run's starting values: the new-run recipe (the original's network) on a CUDA GPU,
    CPU_NEW_RUN on top of it otherwise."""
    values = recipe_defaults(NEW_RUN_RECIPE)
    return values if gpu else {**values, **cpu_new_run(NEW_RUN_RECIPE)}


def cpu_start_text(recipe: str = NEW_RUN_RECIPE) -> str:
    """cpu_new_run(recipe) in words, for --help and the CLI's notice."""
    return ", ".join(f"{name} {BY_NAME[name].show(value)}{' s' if BY_NAME[name].duration else ''}"
                     for name, value in cpu_new_run(recipe).items())


def recipe_defaults(recipe: str) -> dict[str, Any]:
    """Every option's value under ``recipe`` (declared defaults, then the recipe's)."""
    recipe = current_name(recipe)
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; use one of {', '.join(RECIPES)}")
    return {**{o.name: o.default for o in OPTIONS}, **RECIPES[recipe], "recipe": recipe}


class RecipeChange(ValueError):
    """Another recipe named for an existing run: a recipe's values are resolved when a run starts."""


def resolve(given: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Option values: ``base`` (a saved run's; default the recipe's), then ``given``. Explicit
    values always win. A recipe other than ``base``'s is RecipeChange, naming what it would change."""
    if base is None:
        return {**recipe_defaults(given.get("recipe", NEW_RUN_RECIPE)), **given}
    before = current_name(base.get("recipe", BY_NAME["recipe"].default))
    after = current_name(given.get("recipe", before))
    changes = [f"{name} {BY_NAME[name].show(base.get(name))} -> {BY_NAME[name].show(value)}"
               for name, value in recipe_defaults(after).items()
               if name in RECIPES.get(before, {}).keys() | RECIPES.get(after, {}).keys()
               and name not in given and value != base.get(name)] if after != before else []
    if changes:
        raise RecipeChange(f"started with recipe {before}; recipe {after} would change "
                           f"{', '.join(changes)}, but a recipe applies only when a run starts: start a "
                           "new --run, or give those options themselves")
    return {**base, **given}


# -- the dataclass ---------------------------------------------------------------------------


class _Methods:
    def __post_init__(self) -> None:
        # A recipe or preset given by its former name (config.json, the command line) is
        # held by its current one, so the run's model and defaults are the same either way.
        for option in _RENAMABLE:
            setattr(self, option.name, option.current(getattr(self, option.name)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Build from a dict (e.g. config.json). Missing keys take the declared (classic) defaults,
        so config.json files older than an option still load; trainer metadata keys are
        ignored; any other unknown key is an error naming it."""
        if not isinstance(data, dict):
            raise ValueError(f"train config must be a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in data if k not in known and k not in CONFIG_META_KEYS)
        if unknown:
            raise ValueError(f"unknown train option(s) {', '.join(unknown)}")
        values = {k: v for k, v in data.items() if k in known}
        for name, value in values.items():  # JSON writes 1.0 as 1 in some writers
            if BY_NAME[name].type is float and isinstance(value, int) and not isinstance(value, bool):
                values[name] = float(value)
        return cls(**values)

    def check_options(self) -> None:
        """ValueError naming the first option whose value is not allowed by its declaration."""
        for option in OPTIONS:
            option.check(getattr(self, option.name))
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}")
        if self.formulation == "edm":
            given = [f"{name} {BY_NAME[name].show(getattr(self, name))}" for name in VP_ONLY_OPTIONS
                     if getattr(self, name) != BY_NAME[name].default]
            if given:
                raise ValueError(f"{', '.join(given)} do{'es' if len(given) == 1 else ''} not apply to formulation edm "
                                 "(continuous noise levels, its own preconditioning and loss): leave "
                                 f"{'it' if len(given) == 1 else 'them'} out, or use --formulation vp")
        stop_rules = [o.cli_flags[0] for o in OPTIONS if o.name in STOP_RULES and getattr(self, o.name)]
        if stop_rules and not self.eval_every:
            raise ValueError(f"{', '.join(stop_rules)} judge{'s' if len(stop_rules) == 1 else ''} the evaluations "
                             "of --eval-every N: give --eval-every too")
        if self.grad_accum > self.batch_size:
            raise ValueError(f"grad_accum {self.grad_accum} is more than batch_size {self.batch_size}: "
                             "each micro-batch needs at least one image")

    def refused_changes(self, saved: dict[str, Any]) -> list[str]:
        """'name: run has X, asked for Y' for each option a resume may not change."""
        out = []
        for option in OPTIONS:
            before = option.current(saved.get(option.name, option.default))  # older runs: the classic value
            if not option.resumable and before != getattr(self, option.name):
                out.append(f"{option.name}: run has {before!r}, asked for {getattr(self, option.name)!r}")
        return out


TrainOptions = make_dataclass(
    "TrainOptions",
    [(o.name, o.type, field(default=o.default)) for o in OPTIONS],
    bases=(_Methods,),
    namespace={"__doc__": "Every training option, with the classic recipe's values as defaults."},
)


# -- the command line ------------------------------------------------------------------------

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([smhd]?)\s*$", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """'90', '90s', '30m', '1.5h', '2d' -> seconds."""
    match = _DURATION_RE.match(str(text))
    if not match:
        raise ValueError(f"bad duration {text!r}: use seconds or e.g. 30m, 1.5h, 2d")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2).lower()]


def _argparse_type(option: Option):
    def parse(text: str):
        try:
            return option.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{option.name}: ")) from None

    parse.__name__ = option.type.__name__  # argparse names the type in its messages
    return parse


def help_text(option: Option) -> str:
    """An option's --help line: its default, or its value under each recipe where they differ."""
    if option.default == "":
        return option.help  # the help says what the default is
    if option.name == "recipe":
        return f"{option.help} (default for a new run: {NEW_RUN_RECIPE})"
    cpu = (f"; without a CUDA GPU, a new run given no --preset starts from {cpu_start_text()}"
           if option.name in cpu_new_run(NEW_RUN_RECIPE) else "")
    per_recipe = {name: values.get(option.name, option.default) for name, values in RECIPES.items()}
    if len({repr(v) for v in per_recipe.values()}) == 1:
        return f"{option.help} (default: {option.show(option.default)}{' with a CUDA GPU' if cpu else ''}{cpu})"
    parts = [f"{name} recipe{' (default)' if name == NEW_RUN_RECIPE else ''}: {option.show(value)}"
             for name, value in sorted(per_recipe.items(), key=lambda kv: kv[0] != NEW_RUN_RECIPE)]
    return f"{option.help} ({'; '.join(parts)}{cpu})"


def add_train_arguments(parser: argparse.ArgumentParser, groups: dict[str, Any] | None = None) -> None:
    """One flag per option. Unset flags stay unset (argparse.SUPPRESS) so a resumed run
    keeps its own values and a recipe can fill them."""
    groups = groups if groups is not None else {}
    for option in OPTIONS:
        if option.internal:
            continue
        group = groups.get(option.group)
        if group is None:
            group = groups[option.group] = parser.add_argument_group(option.group)
        kw: dict[str, Any] = {"dest": option.name, "default": argparse.SUPPRESS, "help": help_text(option)}
        if option.type is bool:
            kw["action"] = "store_false" if option.default is True else "store_true"
        else:
            kw["type"] = _argparse_type(option)
            if option.choices:
                kw["choices"] = option.choices
            if option.metavar:
                kw["metavar"] = option.metavar
        group.add_argument(*option.cli_flags, **kw)


def to_argv(values: dict[str, Any]) -> list[str]:
    """Flags that give ``values`` ({option name: value}) to `ddpm-tui train`."""
    args: list[str] = []
    for name, value in values.items():
        option = BY_NAME[name]
        flag = option.cli_flags[0] if option.type is bool else f"--{name.replace('_', '-')}"
        if option.type is bool:
            if value != option.default:
                args.append(flag)
        elif value is not None and value != "":
            args += [flag, option.show(value)]
    return args


def form_options() -> Iterable[Option]:
    """The options the new-run form shows, basic ones first, in declaration order."""
    shown = [o for o in OPTIONS if not o.internal]
    return [o for o in shown if o.basic] + [o for o in shown if not o.basic]
