"""The diffusion vocabulary, torch-free: the names of presets, schedules, targets, loss
weightings, samplers, weights and autocast modes, so that `--help`, the studio's forms and
config.json validation never import torch. The modules that implement each name check at
import that they implement exactly these."""

from __future__ import annotations

# The original project's (dogs-image-generator-DDPM's) training recipe, network preset and
# block design are called "classic"; before that rename they were "seed", and configs,
# checkpoints and command lines that say so still mean the same thing. Declared once here:
# recipes, presets and block designs all read former names through current_name.
FORMER_NAMES = {"seed": "classic"}
PRESET_NAMES = ("classic", "small", "tiny", "res-small", "res-tiny")
PRESET_IMAGE_SIZE = {"classic": 64, "small": 64, "tiny": 32, "res-small": 32, "res-tiny": 32}  # the size a preset is made for
BLOCK_NAMES = ("classic", "resnet")  # UNet block designs
SCHEDULE_NAMES = ("linear", "cosine", "sigmoid")
PREDICTION_NAMES = ("eps", "x0", "v")
LOSS_WEIGHTING_NAMES = ("uniform", "min_snr")
AMP_MODES = ("auto", "bf16", "fp16", "off")
DEVICE_SUGGESTIONS = ("auto", "cpu", "cuda", "mps")
MAX_SEED = 2**63 - 1
SAMPLER_NAMES = ("ddpm", "ddim", "dpmpp2m", "heun")
WEIGHT_NAMES = ("ema", "raw")


def current_name(name):
    """A recipe, preset or block name as spelled today: a former name (``seed``) gives its
    current one (``classic``); anything else (including a non-string) is returned as is."""
    return FORMER_NAMES.get(name, name) if isinstance(name, str) else name
