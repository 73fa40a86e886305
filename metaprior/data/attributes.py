"""Batches that carry one attribute beside the observations: ``(x, y)``.

Label-aware methods (VFAE's sensitive variable s, FaderNetworks' attributes y, the
two-step method's labels; survey section 3.4) condition on an attribute that the data
set already holds: a ground-truth factor of a :class:`~metaprior.data.base.GroundTruthData`
(by name: ``shape``, ``scale``, ... for dSprites) or the class label of a labelled
:class:`~metaprior.data.base.ArrayData` (attribute ``label``; digits, mnist).

:class:`WithAttribute` wraps such a data set. Its ``batch(step, batch_size, seed)`` returns
``(x [B, ...] float32, y [B, K] float32)`` with ``y`` encoded as

* ``"onehot"`` -- the attribute's K categories as one-hot rows (K = number of values);
* ``"continuous"`` -- one column, the value index rescaled to [0, 1]
  (``index / (K - 1)``; for dSprites' scale 0.5..1 in 6 steps this is (scale - 0.5) / 0.5).

The observations of a batch are exactly the wrapped data set's batch for the same
``(step, batch_size, seed)``, so a method trained on ``WithAttribute(data, ...)`` sees the
same images as one trained on ``data``. Everything else (``sample_factors``,
``observations_from_factors``, ``test_observations``, labels, names) is passed through,
so the disentanglement metrics and plots work on the wrapped set unchanged.
"""
from __future__ import annotations

import numpy as np

from .base import DataError, GroundTruthData

ENCODINGS = ("onehot", "continuous")


class WithAttribute:
    def __init__(self, data, attribute: str, encoding: str = "onehot"):
        if encoding not in ENCODINGS:
            raise DataError(f"unknown attribute encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
        names = attribute_names(data)
        if attribute not in names:
            have = ", ".join(names) if names else "none (it has neither ground-truth factors nor labels)"
            raise DataError(f"{getattr(data, 'name', 'the data set')!r} has no attribute {attribute!r}; "
                            f"its attributes are: {have}")
        self.data, self.attribute, self.encoding = data, attribute, encoding
        if isinstance(data, GroundTruthData):
            self._column = list(data.factor_names).index(attribute)
            self.num_values = int(data.factor_sizes[self._column])
        else:
            labels = np.asarray(data.labels)
            if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
                raise DataError(f"{getattr(data, 'name', 'the data set')!r}: labels must be a vector of non-negative "
                                f"integer class indices to serve as an attribute, got dtype {labels.dtype} shape {labels.shape}")
            self._column = None
            self.num_values = int(labels.max()) + 1
        if self.num_values < 2:
            raise DataError(f"attribute {attribute!r} takes a single value; it cannot be conditioned on")
        self.name = f"{getattr(data, 'name', 'data')}[{attribute}:{encoding}]"

    # -- the attribute ------------------------------------------------------------------------
    @property
    def attribute_dim(self) -> int:
        """Width of ``y``: K for one-hot, 1 for continuous."""
        return self.num_values if self.encoding == "onehot" else 1

    def encode(self, values) -> np.ndarray:
        """Integer attribute values [B] -> the float32 rows ``y`` [B, attribute_dim]."""
        v = np.asarray(values)
        if v.ndim != 1 or not np.issubdtype(v.dtype, np.integer):
            raise DataError(f"attribute values must be a vector of integers, got dtype {v.dtype} shape {v.shape}")
        if (v < 0).any() or (v >= self.num_values).any():
            raise DataError(f"attribute {self.attribute!r} takes values 0..{self.num_values - 1}; got {v.min()}..{v.max()}")
        if self.encoding == "onehot":
            return np.eye(self.num_values, dtype=np.float32)[v]
        return (v.astype(np.float32) / (self.num_values - 1))[:, None]

    def values_of(self, step: int, batch_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """The observations and integer attribute values of the training batch ``step``."""
        d = self.data
        if self._column is not None:  # the same draw as GroundTruthData.batch
            rng = np.random.default_rng([seed, step])
            f = d.sample_factors(batch_size, rng)
            return d.observations_from_factors(f).astype(np.float32, copy=False), f[:, self._column]
        idx = d.batch_indices(step, batch_size, seed)
        return d.x[idx], np.asarray(d.labels)[idx].astype(np.int64)

    def batch(self, step: int, batch_size: int, seed: int):
        x, v = self.values_of(step, batch_size, seed)
        return x, self.encode(v)

    def test_batch(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` held-out observations with their integer attribute values (not encoded)."""
        d = self.data
        if self._column is not None:
            rng = np.random.default_rng([seed, 2**31 - 1, 7])  # GroundTruthData.test_observations' stream
            f = d.sample_factors(n, rng)
            return d.observations_from_factors(f).astype(np.float32, copy=False), f[:, self._column]
        idx = np.asarray(d.test_indices if len(d.test_indices) else d.train_indices)[:n]
        return d.x[idx], np.asarray(d.labels)[idx].astype(np.int64)

    # -- pass-through -------------------------------------------------------------------------
    def __getattr__(self, name):
        if name == "data":  # not yet set (during unpickling)
            raise AttributeError(name)
        return getattr(self.data, name)


def attribute_names(data) -> list[str]:
    """The attributes a data set offers: its ground-truth factor names, or ``label`` when it has labels."""
    if isinstance(data, GroundTruthData):
        return list(data.factor_names)
    if getattr(data, "labels", None) is not None:
        return ["label"]
    return []
