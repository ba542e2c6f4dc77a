"""FID, KID and precision/recall against answers known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.quality import metrics


def _random_spd(rng, d, low=0.5, high=3.0):
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return q, rng.uniform(low, high, d)


# ---------------------------------------------------------------------------- Fréchet


def test_fid_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(200, 16))
    assert metrics.fid(x, x) == pytest.approx(0.0, abs=1e-9)


def test_fid_of_a_rank_deficient_set_with_itself_is_zero():
    # 10 points in 32 dimensions: a singular covariance (a small eval's usual case).
    x = np.random.default_rng(1).normal(size=(10, 32))
    assert metrics.fid(x, x) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_diagonal_closed_form():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    a, b = rng.uniform(0.1, 4, 6), rng.uniform(0.1, 4, 6)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_full_2x2_closed_form():
    # For 2x2 matrices tr sqrt(S1 S2) = sqrt(tr(S1 S2) + 2 sqrt(det(S1 S2))).
    s1 = np.array([[2.0, 0.8], [0.8, 1.0]])
    s2 = np.array([[1.5, -0.6], [-0.6, 0.7]])
    mu1, mu2 = np.array([0.3, -1.0]), np.array([1.0, 0.5])
    p = s1 @ s2
    tr_sqrt = math.sqrt(np.trace(p) + 2 * math.sqrt(np.linalg.det(p)))
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_full_commuting_closed_form():
    # S1 = Q A Q^T, S2 = Q B Q^T share eigenvectors: the distance is sum (sqrt a - sqrt b)^2.
    rng = np.random.default_rng(3)
    q, a = _random_spd(rng, 8)
    _, b = _random_spd(rng, 8)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    mu = rng.normal(size=8)
    expected = ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert metrics.frechet_distance(mu, s1, mu, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_near_singular_covariances():
    # Eigenvalues down to 1e-14 (and an exact 0): still real, finite and the closed form.
    rng = np.random.default_rng(4)
    q, _ = _random_spd(rng, 5)
    a = np.array([3.0, 1.0, 1e-6, 1e-14, 0.0])
    b = np.array([2.0, 1e-10, 1.0, 0.0, 1e-12])
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    expected = ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    value = metrics.frechet_distance(np.zeros(5), s1, np.ones(5), s2)
    assert math.isfinite(value)
    assert value == pytest.approx(expected + 5.0, abs=1e-6)
    diag = metrics.frechet_distance(np.zeros(5), np.diag(a), np.zeros(5), np.diag(b))
    assert diag == pytest.approx(expected, abs=1e-6)


def test_fid_from_samples_approaches_the_closed_form():
    rng = np.random.default_rng(5)
    x = rng.normal(0.0, 1.0, size=(20000, 3))
    y = rng.normal(1.0, 2.0, size=(20000, 3))
    expected = 3 * 1.0 + 3 * (1 - 2) ** 2  # |dmu|^2 + sum (sqrt a - sqrt b)^2
    assert metrics.fid(x, y) == pytest.approx(expected, rel=0.05)


def test_fid_refuses_bad_shapes():
    with pytest.raises(ValueError, match="widths differ"):
        metrics.fid(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="at least 2 rows"):
        metrics.fid(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        metrics.fid(np.full((5, 3), np.nan), np.zeros((5, 3)))


# ---------------------------------------------------------------------------- KID


def test_kid_of_one_distribution_averages_zero():
    rng = np.random.default_rng(6)
    values = [metrics.mmd2_unbiased(rng.normal(size=(40, 8)), rng.normal(size=(40, 8))) for _ in range(300)]
    mean, sem = np.mean(values), np.std(values) / math.sqrt(len(values))
    assert abs(mean) < 3 * sem  # unbiased: no offset beyond noise
    assert min(values) < 0 < max(values)


def test_kid_is_positive_for_shifted_sets_and_reports_a_std():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(300, 8)), rng.normal(0.5, 1.0, size=(300, 8))
    mean, std = metrics.kid(x, y, subsets=20, subset_size=100)
    same_mean, _ = metrics.kid(x, rng.normal(size=(300, 8)), subsets=20, subset_size=100)
    assert mean > 0 and std > 0
    assert mean > 5 * std
    assert abs(same_mean) < mean / 10


# ---------------------------------------------------------------------------- precision / recall


def test_precision_recall_identical_sets():
    x = np.random.default_rng(8).normal(size=(100, 4))
    assert metrics.precision_recall(x, x.copy()) == (1.0, 1.0)


def test_precision_recall_disjoint_sets():
    rng = np.random.default_rng(9)
    real, fake = rng.normal(size=(100, 4)), rng.normal(100.0, 1.0, size=(100, 4))
    assert metrics.precision_recall(real, fake) == (0.0, 0.0)


def test_precision_recall_fake_covers_one_of_two_real_modes():
    rng = np.random.default_rng(10)
    mode_a, mode_b = rng.normal(size=(100, 4)), rng.normal(50.0, 1.0, size=(100, 4))
    real = np.concatenate([mode_a, mode_b])
    fake = mode_a[:60]  # a subset of the real points, all from one mode
    precision, recall = metrics.precision_recall(real, fake)
    assert precision == 1.0
    assert 0.25 <= recall <= 0.5  # mode b uncovered; mode a's outskirts may be too


def test_class_helpers():
    assert metrics.class_accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    uniform = np.full((10, 4), 0.25)
    assert metrics.class_entropy(uniform) == pytest.approx(math.log(4))
    assert metrics.class_entropy(np.eye(4)[[1] * 10]) == pytest.approx(0.0)
