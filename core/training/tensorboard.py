"""train --tensorboard: the run's figures as TensorBoard event files in RUN/tb/
(core.training.runs.TENSORBOARD_DIR), beside metrics.jsonl and eval.jsonl, which stay the
record the studio reads. The package is optional (the `tensorboard` extra) and imported only
here, only when a run asks for it: `ddpm-tui --help` and runs without the flag never load it."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any, Mapping

from core.training import runs

INSTALL = "pip install 'ddpm-tui[tensorboard]'"
MISSING = f"--tensorboard needs the tensorboard package, which is not installed: {INSTALL}"

# TensorBoard tag -> the metrics line's key.
TRAINING_SCALARS = {"train/loss": "loss", "train/lr": "lr", "train/images_per_s": "images_per_s"}
GRAD_NORM_TAG = "train/grad_norm"


def available() -> bool:
    """Whether the tensorboard package is installed (found, not imported)."""
    return importlib.util.find_spec("tensorboard") is not None


def logdir_command(runs_dir: str | Path) -> str:
    """The line that shows every run of a workspace in TensorBoard (it finds each RUN/tb/)."""
    import shlex

    return f"tensorboard --logdir {shlex.quote(str(runs_dir))}"


class TensorBoardLog:
    """Rank 0's SummaryWriter for one session. A write that fails is logged once and never
    stops training."""

    def __init__(self, run_dir: Path, log: logging.Logger) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.log = log
        self.failed = False
        self.writer = SummaryWriter(log_dir=str(runs.tensorboard_dir(run_dir)))

    def training(self, step: int, record: Mapping[str, Any], grad_norm: float | None) -> None:
        """A metrics line: loss, learning rate, images/s, and the mean gradient norm."""
        values = {tag: record.get(key) for tag, key in TRAINING_SCALARS.items()}
        values[GRAD_NORM_TAG] = grad_norm
        self._scalars(step, values)

    def evaluation(self, step: int, values: Mapping[str, float]) -> None:
        """Every figure of an evaluation (FID, KID, precision, recall...)."""
        self._scalars(step, {f"eval/{name}": value for name, value in values.items()})

    def grid(self, step: int, tag: str, path: Path) -> None:
        """A sample grid, read back from the PNG the run wrote."""
        import numpy as np
        from PIL import Image

        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            self.writer.add_image(f"samples/{tag}", pixels, step, dataformats="HWC")
        except (OSError, ValueError, RuntimeError) as exc:
            self._failed(exc)

    def _scalars(self, step: int, values: Mapping[str, Any]) -> None:
        try:
            for tag, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(tag, float(value), step)
        except (OSError, ValueError, RuntimeError) as exc:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        if not self.failed:
            self.failed = True
            self.log.warning("could not write TensorBoard events: %s", exc)

    def close(self) -> None:
        try:
            self.writer.close()
        except (OSError, RuntimeError) as exc:
            self._failed(exc)
