"""The Fréchet distance between two Gaussians, and the feature statistics it compares (numpy + scipy).

``d^2 = |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))``, the formula of FID (Heusel
et al., 2017) and of its reference implementation (``pytorch-fid``): the same function gives the
Inception FID with Inception features and a "classifier FID" with another network's features; a
distance is only comparable to distances computed in the same feature space.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from scipy import linalg

from ..errors import MASCError

logger = logging.getLogger(__name__)

__all__ = ["FrechetError", "feature_statistics", "frechet_distance"]


class FrechetError(MASCError):
    """Statistics that cannot be compared (shapes, too few samples, non-finite values)."""


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[d]`` and covariance ``[d, d]`` (unbiased, ``n - 1``) of ``features`` ``[n, d]``, float64.

    Accepts numpy arrays or torch tensors. Needs ``n >= 2``.
    """
    if hasattr(features, "detach"):  # a torch tensor; torch is not imported here
        features = features.detach().cpu().numpy()
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 2:
        raise FrechetError(f"features must be [n, d] with n >= 2, got shape {list(array.shape)}")
    if not np.isfinite(array).all():
        raise FrechetError("features contain NaN or inf; check the images and the feature extractor")
    return array.mean(axis=0), np.cov(array, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance (squared, as FID reports it) between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    Args:
        mu1, mu2: means ``[d]``.
        sigma1, sigma2: covariances ``[d, d]`` (symmetric positive semi-definite).
        eps: when ``sigma1 @ sigma2`` is singular (fewer samples than dimensions, or features that
            never vary, e.g. dead ReLUs), ``eps * I`` is added to both covariances before the square
            root, as ``pytorch-fid`` does.

    Returns:
        ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))`` as a float (``>= 0``
        up to rounding).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, dtype=np.float64)), np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64)), np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    dim = mu1.shape[0]
    if mu1.shape != (dim,) or mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise FrechetError(
            f"statistics do not match: mu1 {list(mu1.shape)}, sigma1 {list(sigma1.shape)}, mu2 {list(mu2.shape)}, "
            f"sigma2 {list(sigma2.shape)}; both sets need features of the same dimension from the same extractor"
        )
    for name, value in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.isfinite(value).all():
            raise FrechetError(f"{name} contains NaN or inf")
    diff = mu1 - mu2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)  # no `disp`: deprecated in scipy 1.16
    singular = any(issubclass(w.category, linalg.LinAlgWarning) for w in caught)
    if singular or not np.isfinite(covmean).all():
        logger.info("sigma1 @ sigma2 is singular (constant features, or fewer samples than dimensions); adding %g to the diagonals", eps)
        offset = np.eye(dim) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        # rounding gives tiny imaginary parts; large ones mean the matrices are not covariances
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise FrechetError(
                f"sqrtm(sigma1 @ sigma2) has a large imaginary part ({np.abs(covmean.imag).max():.3g}); "
                "are sigma1 and sigma2 covariance matrices (symmetric, positive semi-definite)?"
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))
