"""Sample-quality metrics on feature arrays (one row per image), computed in float64.

- Fréchet distance (FID when the features are Inception's): the distance between two
  Gaussians fitted to the sets, |mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrt(S1 S2)).
- KID (Bińkowski et al. 2018): the unbiased MMD^2 with the cubic polynomial kernel
  k(x, y) = (x.y / d + 1)^3, averaged over random subsets, with its standard deviation.
- Precision and recall (Kynkäänniemi et al. 2019): each set's manifold is the union of
  balls reaching each point's k-th nearest neighbour; precision is the share of generated
  points inside the real manifold, recall the share of real points inside the generated one.

NumPy only. Every function takes array-likes of shape (n, d) and returns plain floats.
"""

from __future__ import annotations

import numpy as np

PR_NEIGHBOURS = 3  # k of the k-NN manifolds (the paper's default)


def _features(x, name: str, min_rows: int = 2) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (images x features), got shape {a.shape}")
    if a.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {a.shape[0]}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return a


def _same_width(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature widths differ: {a.shape[1]} vs {b.shape[1]}")


# ---------------------------------------------------------------------------- Fréchet


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of the rows, float64; the covariance uses n - 1."""
    a = _features(features, "features")
    return a.mean(axis=0), np.atleast_2d(np.cov(a, rowvar=False))


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """The symmetric square root of a positive semi-definite matrix; the tiny negative
    eigenvalues rounding leaves are clipped to 0."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    tr(sqrt(S1 S2)) is computed as the sum of the square roots of the eigenvalues of the
    symmetric PSD matrix sqrt(S1) S2 sqrt(S1) (same eigenvalues as S1 S2), so singular or
    near-singular covariances give a real, finite answer without scipy's sqrtm.
    """
    mu1, mu2 = np.asarray(mu1, np.float64).ravel(), np.asarray(mu2, np.float64).ravel()
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shapes do not match: mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape}")
    r1 = _psd_sqrt(s1)
    m = r1 @ s2 @ r1
    w = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(w, 0.0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff) + float(np.trace(s1)) + float(np.trace(s2)) - 2.0 * tr_covmean
    return max(value, 0.0)  # rounding can leave -1e-12 for identical sets


def fid(features1, features2) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets."""
    a, b = _features(features1, "features1"), _features(features2, "features2")
    _same_width(a, b)
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))


# ---------------------------------------------------------------------------- KID


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x, y) -> float:
    """Unbiased MMD^2 of two samples under the cubic polynomial kernel (diagonals excluded)."""
    x, y = _features(x, "x"), _features(y, "y")
    _same_width(x, y)
    m, n = x.shape[0], y.shape[0]
    kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                 + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.mean())


def kid(features1, features2, *, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD^2 over ``subsets`` random subsets of each set
    (without replacement; the subset size is capped by the smaller set)."""
    a, b = _features(features1, "features1"), _features(features2, "features2")
    _same_width(a, b)
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    size = min(subset_size, a.shape[0], b.shape[0])
    rng = np.random.default_rng(seed)
    values = np.array([
        mmd2_unbiased(a[rng.choice(a.shape[0], size, replace=False)], b[rng.choice(b.shape[0], size, replace=False)])
        for _ in range(subsets)
    ])
    return float(values.mean()), float(values.std(ddof=1)) if subsets > 1 else 0.0


# ---------------------------------------------------------------------------- precision / recall


def _pairwise_sq(x: np.ndarray, y: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Squared Euclidean distances (len(x), len(y)), in row chunks to bound memory."""
    yy = (y * y).sum(axis=1)
    out = np.empty((x.shape[0], y.shape[0]))
    for lo in range(0, x.shape[0], chunk):
        xs = x[lo:lo + chunk]
        d = (xs * xs).sum(axis=1)[:, None] + yy[None, :] - 2.0 * xs @ y.T
        out[lo:lo + chunk] = np.maximum(d, 0.0)
    return out


def _knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Squared distance from each point to its k-th nearest other point."""
    d = _pairwise_sq(x, x)
    np.fill_diagonal(d, np.inf)
    return np.partition(d, k - 1, axis=1)[:, k - 1]


def _coverage(points: np.ndarray, manifold: np.ndarray, radii: np.ndarray) -> float:
    """Share of ``points`` inside at least one ball (manifold[i], radius_i)."""
    d = _pairwise_sq(points, manifold)
    # A point exactly on a ball's surface counts as inside (a copy of a real point is covered).
    inside = (d <= radii[None, :] * (1 + 1e-9) + 1e-12).any(axis=1)
    return float(inside.mean())


def precision_recall(real, fake, *, k: int = PR_NEIGHBOURS) -> tuple[float, float]:
    """(precision, recall) of ``fake`` against ``real`` with k-NN manifolds."""
    r, f = _features(real, "real", k + 1), _features(fake, "fake", k + 1)
    _same_width(r, f)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    precision = _coverage(f, r, _knn_radii(r, k))
    recall = _coverage(r, f, _knn_radii(f, k))
    return precision, recall


# ---------------------------------------------------------------------------- classes


def class_entropy(probabilities) -> float:
    """Entropy (nats) of the mean predicted class distribution: high when unconditional
    samples spread over all classes, 0 when they all look like one class."""
    p = np.asarray(probabilities, np.float64)
    if p.ndim != 2 or p.shape[0] < 1:
        raise ValueError(f"probabilities must be (n, classes), got shape {p.shape}")
    mean = p.mean(axis=0)
    mean = mean[mean > 0]
    return float(-(mean * np.log(mean)).sum()) + 0.0


def class_accuracy(predicted, wanted) -> float:
    """Share of samples whose predicted class is the one they were asked for."""
    p, w = np.asarray(predicted).ravel(), np.asarray(wanted).ravel()
    if p.shape != w.shape or p.size == 0:
        raise ValueError(f"predicted and wanted labels must be the same non-empty length, got {p.size} and {w.size}")
    return float((p == w).mean())
