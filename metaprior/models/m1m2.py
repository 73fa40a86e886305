"""The stacked semi-supervised model M1+M2 (Kingma et al. 2014, sec. 2.3): M2 on the codes of a trained M1.

    M1:  p(z1) = N(0, I),  p(x | z1),  q(z1 | x)                 (a Gaussian VAE trained on x alone)
    M2:  p(y) p(z2) p(z1 | y, z2),  q(z2 | y, z1) q(y | z1)       (the M2 program of :mod:`.m2`, with x -> z1)

M1 is trained first and then frozen; M2 is trained on M1's latent codes instead of on x
("we first learn a new latent representation z1 using the generative model from M1, and
subsequently learn a generative semi-supervised model M2, using embeddings from z1 instead
of the raw data x"). Because M1 is frozen, the stack needs no new Pyro program: the M2
program runs unchanged on a data set whose observations are M1's codes,
:class:`M1Codes`, and its decoder's likelihood is a Gaussian over z1.

:class:`M1Codes` encodes every example once with the frozen encoder and keeps the
posterior ``q(z1 | x) = N(loc, diag scale^2)``. Its batches are those of
:class:`~metaprior.data.semi_supervised.SemiSupervised` (the same labelled / unlabelled
examples and label draw as M2 on x), with x replaced by

* ``feature="sample"``: a fresh draw ``z1 = loc + scale * eps`` per example and step, ``eps``
  a pure function of ``(seed, step)`` (Kingma et al.'s code resamples z1 from q(z1|x): a
  data augmentation that also keeps M2's Gaussian likelihood away from degenerate, constant
  coordinates of inactive units); or
* ``feature="mean"``: the posterior mean ``loc``.

Held-out and labelled sets (accuracy, the supervised baseline) always use the posterior mean.
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.semi_supervised import SemiSupervised

FEATURES = ("sample", "mean")


@torch.no_grad()
def encode_all(encoder, x: np.ndarray, batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """``(loc, scale)`` of the Gaussian ``encoder`` (``x -> (loc, scale)``) over ``x``, in chunks, on the CPU."""
    locs, scales = [], []
    for i in range(0, len(x), batch_size):
        loc, scale = encoder(torch.as_tensor(np.ascontiguousarray(x[i:i + batch_size])))
        locs.append(loc.cpu().numpy())
        scales.append(scale.cpu().numpy())
    return np.concatenate(locs).astype(np.float32), np.concatenate(scales).astype(np.float32)


class _EncodedArray:
    """The attributes :class:`SemiSupervised` reads, for the array ``[loc, scale]`` of every example of ``data``."""

    def __init__(self, data, loc: np.ndarray, scale: np.ndarray):
        self.x = np.concatenate([loc, scale], axis=1).astype(np.float32)
        self.labels = data.labels
        self.name = f"M1({data.name})"
        self.observation_shape = (loc.shape[1],)
        self.train_indices, self.test_indices = data.train_indices, data.test_indices
        self.is_binary = False

    def test_observations(self, n: int, seed: int) -> np.ndarray:
        idx = self.test_indices if len(self.test_indices) else self.train_indices
        return self.x[idx[:n]]


class M1Codes(SemiSupervised):
    """Semi-supervised batches ``(z1 [B, D1], y [B], labelled [B])`` of M1 codes (see the module docstring).

    ``data`` is the labelled data set M1 was trained on; ``loc``/``scale`` [N, D1] its
    encodings (:func:`encode_all`); the other arguments as in :class:`SemiSupervised`.
    """

    def __init__(self, data, loc: np.ndarray, scale: np.ndarray, labels_per_class: int,
                 labelled_fraction: float = 0.5, seed: int = 0, feature: str = "sample"):
        if feature not in FEATURES:
            raise ValueError(f"unknown feature {feature!r}; valid: {', '.join(FEATURES)}")
        loc, scale = np.asarray(loc, np.float32), np.asarray(scale, np.float32)
        if loc.ndim != 2 or loc.shape != scale.shape or len(loc) != len(data.x):
            raise ValueError(f"M1 codes must be loc and scale arrays of shape [{len(data.x)}, D1]; "
                             f"got {loc.shape} and {scale.shape}")
        super().__init__(_EncodedArray(data, loc, scale), labels_per_class, labelled_fraction, seed)
        self.source, self.feature, self.code_dim = data, feature, int(loc.shape[1])
        self.observation_shape = (self.code_dim,)

    @classmethod
    def from_encoder(cls, encoder, data, labels_per_class: int, labelled_fraction: float = 0.5, seed: int = 0,
                     feature: str = "sample") -> "M1Codes":
        loc, scale = encode_all(encoder, data.x)
        return cls(data, loc, scale, labels_per_class, labelled_fraction, seed, feature)

    @property
    def is_binary(self) -> bool:
        return False

    def _loc(self, codes: np.ndarray) -> np.ndarray:
        return codes[:, :self.code_dim]

    def batch(self, step: int, batch_size: int, seed: int):
        codes, y, labelled = super().batch(step, batch_size, seed)
        loc = self._loc(codes)
        if self.feature == "mean":
            return loc, y, labelled
        eps = np.random.default_rng([seed, step, 2]).standard_normal(loc.shape).astype(np.float32)
        return loc + codes[:, self.code_dim:] * eps, y, labelled

    def test_observations(self, n: int, seed: int) -> np.ndarray:
        return self._loc(super().test_observations(n, seed))

    def test_set(self) -> tuple[np.ndarray, np.ndarray]:
        codes, y = super().test_set()
        return self._loc(codes), y

    def labelled_set(self) -> tuple[np.ndarray, np.ndarray]:
        codes, y = super().labelled_set()
        return self._loc(codes), y
