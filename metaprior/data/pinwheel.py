"""Pinwheel clusters of the structured VAE paper (Johnson et al. 2016, "Composing graphical
models with neural networks for structured representations and fast inference", NeurIPS).

K curved arms in the plane, the synthetic data of the SVAE's Gaussian-mixture experiment.
Each point starts as ``f = (1 + e_r, e_t)`` with ``e_r ~ N(0, radial_std^2)`` and
``e_t ~ N(0, tangential_std^2)`` (an elongated blob at unit radius on the x axis) and is
rotated about the origin, counter-clockwise, by

    angle = 2 pi k / K + rate * exp(f_0),

so arm k sits at angle 2 pi k / K and bends more the further out a point lies (exp(f_0)
grows with the radius): that twist is what makes each arm non-Gaussian.

The SVAE experiment script rotates the other way (a mirror image), multiplies the points by
10 and shuffles them; here the arms keep unit radius and stay in class order (``ArrayData``
shuffles its batches), so multiply by 10 if you need the paper's scale.
"""
from __future__ import annotations

import numpy as np

from metaprior.data.base import ArrayData, DataError


def pinwheel(num_classes: int = 5, num_per_class: int = 100, radial_std: float = 0.3,
             tangential_std: float = 0.05, rate: float = 0.25, seed: int = 0,
             test_fraction: float = 0.1) -> ArrayData:
    """Pinwheel data (Johnson et al. 2016): float32 points [K * n, 2], labels = arm index.

    ``test_fraction`` of the points (a fixed random subset) are held out by ``ArrayData``.
    """
    if num_classes < 1 or num_per_class < 1:
        raise DataError(f"pinwheel needs num_classes >= 1 and num_per_class >= 1, got {num_classes}, {num_per_class}")
    if radial_std < 0 or tangential_std < 0:
        raise DataError(f"pinwheel standard deviations must be >= 0, got {radial_std}, {tangential_std}")
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), num_per_class)
    f = rng.standard_normal((len(labels), 2)) * np.array([radial_std, tangential_std])
    f[:, 0] += 1.0
    angle = 2.0 * np.pi * labels / num_classes + rate * np.exp(f[:, 0])
    cos, sin = np.cos(angle), np.sin(angle)
    x = np.stack([cos * f[:, 0] - sin * f[:, 1], sin * f[:, 0] + cos * f[:, 1]], axis=1)
    return ArrayData(x.astype(np.float32), labels=labels, name="pinwheel",
                     test_fraction=test_fraction, split_seed=seed)
