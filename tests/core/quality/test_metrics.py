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
    # Mode b is uncovered; the 40 mode-a points not in the fake set all lie inside the fake
    # points' 3-NN balls (brute force, _reference_pr, says so too), so exactly half.
    assert recall == 0.5 == _reference_pr(real, fake)[1]


def _reference_pr(real, fake, k=3):
    """Kynkäänniemi et al. written out plainly: Euclidean (not squared) distances, each
    point's radius the distance to its k-th nearest other point of its own set; precision
    measures fake points against the real balls, recall real points against the fake balls."""
    def dist(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    def radii(x):
        return np.array([sorted(np.delete(row, i))[k - 1] for i, row in enumerate(dist(x, x))])

    def covered(points, centres, r):
        return float(np.mean([(row <= r).any() for row in dist(points, centres)]))

    return covered(fake, real, radii(real)), covered(real, fake, radii(fake))


def _pr_points():
    """12 real points spread wide (k-NN radii mostly above 1, so squaring matters) and 12
    fake points, tighter and shifted (their radii differ from the real ones)."""
    rng = np.random.default_rng(36)
    real = rng.normal(size=(12, 2)) * 2  # no rounding: no distance ties at a ball's surface
    fake = rng.normal(0.8, 1.0, size=(12, 2))
    return real, fake


def test_precision_recall_hand_computed_where_k_radius_and_distance_matter():
    real, fake = _pr_points()
    # The right answer: 9 of 12 fake points inside the real 3-NN balls, 6 of 12 real points
    # inside the fake 3-NN balls.
    assert _reference_pr(real, fake) == (9 / 12, 6 / 12)
    assert metrics.precision_recall(real, fake) == (9 / 12, 6 / 12)
    # The points are chosen so that every wrong variant gives another answer: another k,
    # recall measured with the real set's radii, or squared distances against plain radii.
    for k in (1, 2, 5, 10):
        assert _reference_pr(real, fake, k) != (9 / 12, 6 / 12), k
        assert metrics.precision_recall(real, fake, k=k) == _reference_pr(real, fake, k)
    real_radii = np.array([sorted(np.delete(np.linalg.norm(real - p, axis=1), i))[2] for i, p in enumerate(real)])
    assert np.mean([(np.linalg.norm(fake - p, axis=1) <= real_radii).any() for p in real]) != 6 / 12
    assert np.mean([(np.linalg.norm(real - p, axis=1) ** 2 <= real_radii).any() for p in fake]) != 9 / 12


def test_precision_recall_swapping_the_sets_swaps_the_answers():
    real, fake = _pr_points()
    assert metrics.precision_recall(fake, real) == (6 / 12, 9 / 12)


# ---------------------------------------------------------------------------- KID by hand


def test_mmd2_hand_computed_cubic_kernel():
    # 1-D, k(a, b) = (a b + 1)^3: k(0, 1) = 1, k(2, 3) = 343, k(x, y) = 1, 1, 27, 64.
    # MMD^2 = 1 + 343 - 2 (93 / 4) = 297.5 (degree 2 would give 36.5, linear 3.5).
    x, y = np.array([[0.0], [1.0]]), np.array([[2.0], [3.0]])
    assert metrics.mmd2_unbiased(x, y) == pytest.approx(297.5, rel=1e-12)
    assert metrics.mmd2_unbiased(y, x) == pytest.approx(297.5, rel=1e-12)
    # 2-D, the dot product divided by d = 2: k(x, x') = 1, k(y, y') = 1, k(x, y) = 1, 1, 8, 8.
    # MMD^2 = 1 + 1 - 2 (18 / 4) = -7 (unbiased: may be negative; without / d: -26).
    x, y = np.array([[0.0, 0.0], [1.0, 1.0]]), np.array([[2.0, 0.0], [0.0, 2.0]])
    assert metrics.mmd2_unbiased(x, y) == pytest.approx(-7.0, rel=1e-12)


def test_kid_averages_mmd2_over_subsets():
    rng = np.random.default_rng(11)
    x, y = rng.normal(size=(6, 3)), rng.normal(0.3, 1.0, size=(5, 3))
    # Subsets as large as the smaller set, drawn without replacement: with 5 of 6 points
    # the 6 possible x subsets give different values; all of y each time.
    mean, std = metrics.kid(x, y, subsets=1, subset_size=100, seed=3)
    pick = np.random.default_rng(3)
    ix, iy = pick.choice(6, 5, replace=False), pick.choice(5, 5, replace=False)
    assert mean == pytest.approx(metrics.mmd2_unbiased(x[ix], y[iy]), rel=1e-12) and std == 0.0
    whole, whole_std = metrics.kid(x[:5], y, subsets=4, subset_size=5)
    assert whole == pytest.approx(metrics.mmd2_unbiased(x[:5], y), rel=1e-12)
    assert whole_std == pytest.approx(0.0, abs=1e-12)


def test_class_helpers():
    assert metrics.class_accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    uniform = np.full((10, 4), 0.25)
    assert metrics.class_entropy(uniform) == pytest.approx(math.log(4))
    assert metrics.class_entropy(np.eye(4)[[1] * 10]) == pytest.approx(0.0)
