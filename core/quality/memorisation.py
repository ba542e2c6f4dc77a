"""Is the model copying its training images? The memorisation check of an evaluation.

For each sample: its nearest training image (Euclidean) in the evaluation's feature space
and in pixels (the images area-downscaled to ``PIXEL_SIZE`` px, values in [0, 1]).

The rule, stated once: a sample is a *copy* when its nearest-training-image distance is at
most the ``COPY_PERCENTILE``-th percentile of the training images' own nearest-neighbour
distances (each training image to its nearest *other* training image). The copy rate is the
share of samples that are copies, in each space. Calibration (tests/core/quality/
test_memorisation.py): training images themselves score 1 (distance 0), unseen real images
of the same kind about ``COPY_PERCENTILE`` % (their distances are distributed like the
training images' own), noise 0. A model that learnt the distribution scores like unseen
images; one that memorised scores well above.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

COPY_PERCENTILE = 5.0
PIXEL_SIZE = 16
THRESHOLD_QUERIES = 4000  # training images whose own nearest neighbour sets the threshold (a seeded subset)
_CHUNK = 512


def nearest(queries: np.ndarray, refs: np.ndarray, *, exclude: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """For each query row its nearest row of ``refs``: (indices, Euclidean distances).
    ``exclude[i]``: a row of refs query i may not pick (itself), or -1 for none."""
    queries = np.asarray(queries, dtype=np.float64)
    refs = np.asarray(refs, dtype=np.float64)
    ref_sq = (refs * refs).sum(1)
    idx = np.empty(len(queries), dtype=np.int64)
    dist = np.empty(len(queries), dtype=np.float64)
    for start in range(0, len(queries), _CHUNK):
        q = queries[start:start + _CHUNK]
        d2 = (q * q).sum(1)[:, None] + ref_sq[None, :] - 2.0 * q @ refs.T
        if exclude is not None:
            rows = np.arange(len(q))
            own = exclude[start:start + len(q)]
            d2[rows[own >= 0], own[own >= 0]] = np.inf
        best = d2.argmin(1)
        idx[start:start + len(q)] = best
        dist[start:start + len(q)] = np.sqrt(np.maximum(d2[np.arange(len(q)), best], 0.0))
    return idx, dist


def copy_threshold(train: np.ndarray, percentile: float = COPY_PERCENTILE) -> float:
    """The ``percentile``-th percentile of training images' distances to their nearest other
    training image (over a seeded subset of at most THRESHOLD_QUERIES of them)."""
    train = np.asarray(train, dtype=np.float64)
    if len(train) < 2:
        raise ValueError("the copy check needs at least 2 training images")
    rows = np.arange(len(train))
    if len(train) > THRESHOLD_QUERIES:
        rows = np.sort(np.random.default_rng(0).choice(len(train), THRESHOLD_QUERIES, replace=False))
    _, dist = nearest(train[rows], train, exclude=rows)
    return float(np.percentile(dist, percentile))


@dataclass
class SpaceCheck:
    """The copy check in one space."""

    threshold: float
    nearest: np.ndarray  # per sample: the row of its nearest training image
    distance: np.ndarray
    copies: np.ndarray  # per sample: bool

    @property
    def rate(self) -> float:
        return float(self.copies.mean()) if len(self.copies) else 0.0


def check_space(samples: np.ndarray, train: np.ndarray, threshold: float | None = None) -> SpaceCheck:
    threshold = copy_threshold(train) if threshold is None else threshold
    idx, dist = nearest(samples, train)
    return SpaceCheck(threshold, idx, dist, dist <= threshold)


@dataclass
class CopyCheck:
    features: SpaceCheck
    pixels: SpaceCheck | None
    per_class: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.features.rate

    def record_fields(self) -> dict:
        """The extra fields of eval.jsonl's ``copy_rate`` record (its value is ``rate``)."""
        out = {"rule": f"nearest training image within the {COPY_PERCENTILE:g}th percentile of "
                       "training-to-training nearest-neighbour distances",
               "threshold": self.features.threshold}
        if self.pixels is not None:
            out.update(pixel_rate=self.pixels.rate, pixel_threshold=self.pixels.threshold, pixel_size=PIXEL_SIZE)
        if self.per_class:
            out["per_class"] = dict(self.per_class)
        return out


def per_class_rates(copies: np.ndarray, labels: Sequence[int], classes: Sequence[str]) -> dict[str, float]:
    labels = np.asarray(labels)
    return {name: float(copies[labels == k].mean()) for k, name in enumerate(classes) if (labels == k).any()}


def pixel_vectors(images, size: int = PIXEL_SIZE) -> np.ndarray:
    """uint8 (N, C, H, W) images (a tensor) as rows of their ``size`` px area-average, in [0, 1]."""
    import torch
    import torch.nn.functional as F

    x = images.to(torch.float32) / 255.0
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.adaptive_avg_pool2d(x, size)
    return x.reshape(len(x), -1).numpy().astype(np.float64)
