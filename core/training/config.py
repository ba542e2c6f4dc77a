"""TrainConfig: the trainer's options (declared in core/training/options.py) plus the checks
that need torch (preset, schedule, the network and diffusion they build), and TrainError."""

from __future__ import annotations

from dataclasses import fields

from core.diffusion.edm import EDMConfig
from core.diffusion.process import DiffusionConfig, ProcessConfig
from core.diffusion.schedules import SCHEDULES
from core.diffusion.unet import PRESETS, UNetConfig, get_preset
from core.training import options

LOGGER_NAME = "core.training.train"  # train.log and the CLI's display listen to this logger

# The options DiffusionConfig carries (the rest of config.json is the trainer's).
DIFFUSION_OPTIONS = options.VP_ONLY_OPTIONS


class TrainError(Exception):
    """A problem the user can fix (bad option, missing dataset, run mismatch); one line."""


# train() raises a TrainError for its caller to report, and also logs it into train.log; that
# record carries this attribute so the caller's console handler can leave it out (said once).
REPORTED_BY_CALLER = "reported_by_caller"


def not_reported_by_caller(record) -> bool:
    """A logging filter for a console handler of train()'s caller (see REPORTED_BY_CALLER)."""
    return not getattr(record, REPORTED_BY_CALLER, False)


class TrainConfig(options.TrainOptions):
    """Every trainer option (declared in core/training/options.py), plus what needs torch to check."""

    def validate(self) -> None:
        """Raise ValueError naming the first bad option."""
        self.check_options()
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; known presets: {', '.join(PRESETS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; known schedules: {', '.join(SCHEDULES)}")
        if not self.data:
            raise ValueError("no dataset folder given (data)")
        from core.data.dataset import DataOptions

        DataOptions(image_size=self.image_size, resize=self.resize, flip=self.flip)  # its size limits
        self.model_config(0)  # image size vs. the preset's levels, etc.
        self.diffusion_config()

    def model_config(self, num_classes: int) -> UNetConfig:
        return get_preset(self.preset, image_size=self.image_size,
                          num_classes=num_classes if self.conditional else 0)

    def diffusion_config(self) -> ProcessConfig:
        """EDM's config for formulation edm (its options are checked in check_options);
        else the diffusion fields this DiffusionConfig has. Options it does not know yet must
        keep their classic values (they would silently change nothing otherwise)."""
        if self.formulation == "edm":
            return EDMConfig()
        known = {f.name for f in fields(DiffusionConfig)}
        values = {name: getattr(self, name) for name in DIFFUSION_OPTIONS}
        unknown = {k: v for k, v in values.items() if k not in known and v != options.BY_NAME[k].default}
        if unknown:
            name, value = next(iter(unknown.items()))
            raise ValueError(f"{name} {value!r} is not supported by this diffusion model yet")
        return DiffusionConfig(**{k: v for k, v in values.items() if k in known})

