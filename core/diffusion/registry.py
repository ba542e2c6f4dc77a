"""The diffusion vocabulary, torch-free: the names of presets, schedules, targets, loss
weightings, samplers, weights and autocast modes, so that `--help`, the studio's forms and
config.json validation never import torch. The modules that implement each name check at
import that they implement exactly these."""

from __future__ import annotations

PRESET_NAMES = ("seed", "small", "tiny", "res-small", "res-tiny")
PRESET_IMAGE_SIZE = {"seed": 64, "small": 64, "tiny": 32, "res-small": 32, "res-tiny": 32}  # the size a preset is made for
SCHEDULE_NAMES = ("linear", "cosine", "sigmoid")
PREDICTION_NAMES = ("eps", "x0", "v")
LOSS_WEIGHTING_NAMES = ("uniform", "min_snr")
AMP_MODES = ("auto", "bf16", "fp16", "off")
DEVICE_SUGGESTIONS = ("auto", "cpu", "cuda", "mps")
MAX_SEED = 2**63 - 1
SAMPLER_NAMES = ("ddpm", "ddim", "dpmpp2m", "heun")
WEIGHT_NAMES = ("ema", "raw")
