"""Reference statistics for FID in the pytorch-fid / clean-fid ``.npz`` format: ``mu`` (d,)
and ``sigma`` (d, d), the mean and covariance of Inception pool3 features.

- :func:`write_stats` writes them (float64, atomically), with two extra keys those tools
  ignore: ``n`` (images) and ``feature_key`` (which Inception weights file made them);
- :func:`read_stats` reads any such file (extra keys ignored), refusing in one line a file
  that is not an ``.npz``, lacks ``mu``/``sigma``, has the wrong shapes or non-finite values;
- :func:`dataset_stats` computes them for an image folder with the evaluator's Inception path
  (the same images, resizing and feature cache as ``ddpm-tui eval``);
- :class:`StatsEvaluator` is an :class:`Evaluator` whose real side is such a file: FID only
  (KID and precision/recall need the real images' features, not their mean and covariance).

Our Inception is torchvision's ImageNet network (see core.quality.features): published
statistics made with pytorch-fid's TensorFlow-ported network are in the same format but
not the same features, so a FID against them is close to, not equal to, the published one.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.io.atomic import atomic_write
from core.quality import metrics
from core.quality.evaluate import EvalError, EvalSettings, Evaluator, Progress
from core.quality.features import FeatureError, load_inception  # noqa: F401

POOL3_WIDTH = 2048  # InceptionV3's pool3 features


class StatsError(Exception):
    """A statistics file that cannot be read or written; one line, without the file name."""


@dataclass(frozen=True)
class ReferenceStats:
    mu: np.ndarray  # (d,) float64
    sigma: np.ndarray  # (d, d) float64
    n: int | None = None  # images behind them, when the file says
    feature_key: str | None = None  # our Inception weights' key, when we wrote the file
    key: str = ""  # hash of mu and sigma: names these statistics in a settings record


def write_stats(path: str | os.PathLike, mu, sigma, *, n: int | None = None, feature_key: str | None = None,
                overwrite: bool = False) -> None:
    """Write ``mu``/``sigma`` as float64 to an ``.npz`` atomically; an existing file only with ``overwrite``."""
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise StatsError("already exists; use --force to replace it (nothing written)")
    arrays = {"mu": np.asarray(mu, np.float64), "sigma": np.asarray(sigma, np.float64)}
    _check(arrays["mu"], arrays["sigma"])
    if n is not None:
        arrays["n"] = np.asarray(int(n), np.int64)
    if feature_key:
        arrays["feature_key"] = np.asarray(str(feature_key))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    try:
        atomic_write(path, lambda fh: fh.write(buf.getvalue()))
    except OSError as exc:
        raise StatsError(f"cannot be written ({exc.strerror or exc})") from None


def _check(mu: np.ndarray, sigma: np.ndarray) -> None:
    if mu.ndim != 1 or mu.shape[0] < 1:
        raise StatsError(f"'mu' must be a vector, got shape {mu.shape}")
    d = mu.shape[0]
    if sigma.shape != (d, d):
        raise StatsError(f"'sigma' must be {d}x{d} to match 'mu', got shape {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise StatsError("'mu' or 'sigma' holds NaN or infinite values")


def read_stats(path: str | os.PathLike) -> ReferenceStats:
    """pytorch-fid / clean-fid statistics from ``path`` (read without pickle), validated."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise StatsError("no such file" if not path.exists() else "is not a file")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise StatsError("a single .npy array, not an .npz with 'mu' and 'sigma'")
        with data:
            missing = [k for k in ("mu", "sigma") if k not in data.files]
            if missing:
                raise StatsError(f"not FID statistics: no {missing[0]!r} array (has: {', '.join(data.files) or 'none'})")
            mu, sigma = data["mu"], data["sigma"]
            n = int(data["n"]) if "n" in data.files and data["n"].shape == () else None
            fkey = str(data["feature_key"]) if "feature_key" in data.files and data["feature_key"].shape == () else None
    except StatsError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, TypeError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise StatsError(f"not a readable .npz file ({first})") from None
    if not (np.issubdtype(mu.dtype, np.number) and np.issubdtype(sigma.dtype, np.number)):
        raise StatsError("'mu' and 'sigma' must be numeric arrays")
    mu, sigma = mu.astype(np.float64), np.atleast_2d(sigma.astype(np.float64))
    _check(mu, sigma)
    key = hashlib.sha256(mu.tobytes() + sigma.tobytes()).hexdigest()[:16]
    return ReferenceStats(mu, sigma, n, fkey, key)


def dataset_stats(data_dir: str | os.PathLike, *, image_size: int, resize: str = "squash",
                  fid_weights: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                  device: torch.device | str = "cpu", progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray, int, str]:
    """(mu, sigma, n, feature_key) of the Inception pool3 features of a folder's images, read
    at ``image_size`` like a run's training images (the in-memory evaluation's real side)."""
    evaluator = Evaluator(data_dir, image_size=image_size, resize=resize, features="inception",
                          fid_weights=fid_weights, cache_dir=cache_dir, device=device, progress=progress)
    mu, sigma = metrics.gaussian_stats(evaluator.real_features)
    return mu, sigma, evaluator.real_count, evaluator.net.key


class StatsEvaluator(Evaluator):
    """Generated images' Inception features against reference statistics from a file: FID only."""

    def __init__(self, stats_path: str | os.PathLike, *, fid_weights: str | os.PathLike | None = None,
                 device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.cache_dir = None
        self.features = "inception"
        try:
            self.reference = read_stats(stats_path)
        except StatsError as exc:
            raise EvalError(f"--ref-stats {stats_path}: {exc}") from None
        width = self.reference.mu.shape[0]
        if width != POOL3_WIDTH:
            raise EvalError(f"--ref-stats {stats_path}: statistics of {width}-d features; "
                            f"Inception pool3 gives {POOL3_WIDTH}")
        try:
            self.net = load_inception(fid_weights, self.device)
        except FeatureError as exc:
            raise EvalError(str(exc)) from None
        if self.reference.feature_key and self.reference.feature_key != self.net.key:
            raise EvalError(f"--ref-stats {stats_path}: made with other Inception weights "
                            f"(key {self.reference.feature_key}, these are {self.net.key}); the FID would mean nothing")
        self.classes = []
        self.real_labels = None
        self.real_features = None
        self.real_count = self.reference.n or 0

    def settings_record(self, settings: EvalSettings) -> dict:
        return {**super().settings_record(settings), "reference": self.reference.key}

    def score_features(self, fake, probs=None, labels=None) -> dict[str, float]:
        """FID of the generated images' features against the file's statistics (the one score
        a mean and covariance allow); Evaluator.score and .evaluate both come through here."""
        try:
            mu, sigma = metrics.gaussian_stats(fake)
            return {"fid": metrics.frechet_distance(self.reference.mu, self.reference.sigma, mu, sigma)}
        except ValueError as exc:
            raise EvalError(f"cannot compute the FID: {exc}") from None
