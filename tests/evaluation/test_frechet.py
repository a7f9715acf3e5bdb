"""Fréchet distance: against closed forms and an independent eigen-decomposition computation."""

import numpy as np
import pytest

from masc_hf.evaluation.frechet import FrechetError, feature_statistics, frechet_distance


def test_distance_of_a_set_with_itself_is_zero():
    features = np.random.default_rng(0).normal(size=(500, 16)) @ np.random.default_rng(1).normal(size=(16, 16))
    mu, sigma = feature_statistics(features)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_diagonal_gaussians_match_the_closed_form():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    var1, var2 = rng.uniform(0.1, 3.0, size=8), rng.uniform(0.1, 3.0, size=8)
    # for commuting (diagonal) covariances: |mu1 - mu2|^2 + sum (sqrt(v1) - sqrt(v2))^2
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-9)


def test_full_covariances_match_an_eigendecomposition():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    sigma1, sigma2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    # tr((S1 S2)^1/2) = tr((S1^1/2 S2 S1^1/2)^1/2), the latter symmetric: eigenvalues suffice
    w, v = np.linalg.eigh(sigma1)
    root1 = v @ np.diag(np.sqrt(w)) @ v.T
    trace_root = np.sum(np.sqrt(np.linalg.eigvalsh(root1 @ sigma2 @ root1)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_root
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-8)


def test_shifted_set_gives_the_squared_shift():
    features = np.random.default_rng(4).normal(size=(300, 5))
    mu1, sigma1 = feature_statistics(features)
    mu2, sigma2 = feature_statistics(features + np.array([3.0, 0, 0, 4.0, 0]))
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(25.0, abs=1e-6)


def test_fewer_samples_than_dimensions_still_gives_a_finite_distance():
    rng = np.random.default_rng(5)
    mu1, sigma1 = feature_statistics(rng.normal(size=(4, 10)))
    mu2, sigma2 = feature_statistics(rng.normal(size=(4, 10)))
    assert np.isfinite(frechet_distance(mu1, sigma1, mu2, sigma2))


def test_bad_statistics_are_refused():
    with pytest.raises(FrechetError, match="do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(FrechetError, match="NaN"):
        frechet_distance(np.array([np.nan, 0.0]), np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(FrechetError, match="n >= 2"):
        feature_statistics(np.zeros((1, 3)))


def test_importing_the_frechet_distance_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, masc_hf.evaluation, masc_hf.evaluation.frechet; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
