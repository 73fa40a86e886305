"""Semi-supervised batches: a labelled data set with only a few labels kept per class.

:class:`SemiSupervised` wraps an :class:`~metaprior.data.base.ArrayData` with labels. From
its training split it keeps ``labels_per_class`` labels of each class (chosen by ``seed``)
and hides the rest; the test split is untouched (for accuracy). Each batch is the tuple

    (x [B, ...] float32,  y [B] int64,  labelled [B] bool)

with ``round(labelled_fraction * B)`` labelled examples first (drawn at random, with
replacement when the labelled pool is smaller than that) and unlabelled examples after them
(shuffled epochs over the unlabelled pool); ``y`` is 0 wherever ``labelled`` is False, so no
hidden label reaches the model. Like every data set here, ``batch`` is a pure function of
``(seed, step)``. Oversampling the few labelled points in every batch is the usual practice
for M2 (Kingma et al. 2014 alternate labelled and unlabelled minibatches); the fraction sets
how much the labelled part of the objective weighs per step.
"""
from __future__ import annotations

import numpy as np

from .base import DataError


class SemiSupervised:
    def __init__(self, data, labels_per_class: int, labelled_fraction: float = 0.5, seed: int = 0):
        labels = getattr(data, "labels", None)
        if labels is None:
            raise DataError(f"semi-supervised training needs a data set with labels (e.g. digits, mnist); "
                            f"{getattr(data, 'name', 'this data set')!r} has none")
        if int(labels_per_class) != labels_per_class or labels_per_class < 1:
            raise DataError(f"labels_per_class must be a positive integer, got {labels_per_class!r}")
        if not 0.0 <= float(labelled_fraction) <= 1.0:
            raise DataError(f"labelled_fraction must be in [0, 1], got {labelled_fraction}")
        labels = np.asarray(labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
            raise DataError("labels must be a vector of non-negative integer class indices")
        self.data, self.labels = data, labels.astype(np.int64)
        self.num_classes = int(self.labels.max()) + 1
        self.labels_per_class, self.labelled_fraction = int(labels_per_class), float(labelled_fraction)
        self.name, self.observation_shape = f"{data.name}[{self.labels_per_class}/class]", data.observation_shape
        train = np.asarray(data.train_indices)
        rng = np.random.default_rng(seed)
        chosen = []
        for c in range(self.num_classes):
            pool = train[self.labels[train] == c]
            if len(pool) < self.labels_per_class:
                raise DataError(f"{data.name}: class {c} has {len(pool)} training examples, fewer than "
                                f"labels_per_class={self.labels_per_class}; lower labels_per_class")
            chosen.append(rng.choice(pool, self.labels_per_class, replace=False))
        self.labelled = np.sort(np.concatenate(chosen))
        self.unlabelled = np.setdiff1d(train, self.labelled)
        if len(self.unlabelled) == 0 and self.labelled_fraction < 1.0:
            raise DataError("every training example is labelled; set labelled_fraction=1 or use fewer labels per class")

    @property
    def num_examples(self) -> int:
        return len(self.labelled) + len(self.unlabelled)

    @property
    def is_binary(self) -> bool:
        return self.data.is_binary

    def split(self, batch_size: int) -> tuple[int, int]:
        """(labelled, unlabelled) counts of a batch of ``batch_size``."""
        n_l = int(round(self.labelled_fraction * batch_size))
        if self.labelled_fraction > 0:
            n_l = max(n_l, 1)
        if len(self.unlabelled) == 0:
            n_l = batch_size
        return n_l, batch_size - n_l

    def batch(self, step: int, batch_size: int, seed: int):
        n_l, n_u = self.split(batch_size)
        rng = np.random.default_rng([seed, step, 1])
        lab = self.labelled[rng.choice(len(self.labelled), n_l, replace=len(self.labelled) < n_l)]
        unl = self.unlabelled[:0]
        if n_u:
            if n_u > len(self.unlabelled):
                raise DataError(f"{self.name}: {n_u} unlabelled examples per batch exceed the {len(self.unlabelled)} available")
            per_epoch = len(self.unlabelled) // n_u
            epoch, pos = divmod(step, per_epoch)
            perm = np.random.default_rng([seed, epoch]).permutation(len(self.unlabelled))
            unl = self.unlabelled[perm[pos * n_u:(pos + 1) * n_u]]
        idx = np.concatenate([lab, unl])
        mask = np.zeros(len(idx), dtype=bool)
        mask[:n_l] = True
        y = np.where(mask, self.labels[idx], 0).astype(np.int64)
        return self.data.x[idx], y, mask

    def test_observations(self, n: int, seed: int) -> np.ndarray:
        return self.data.test_observations(n, seed)

    def test_set(self) -> tuple[np.ndarray, np.ndarray]:
        """All held-out observations and their labels (for classification accuracy)."""
        idx = self.data.test_indices
        return self.data.x[idx], self.labels[idx]

    def labelled_set(self) -> tuple[np.ndarray, np.ndarray]:
        """The kept labelled training examples (for a supervised-only baseline)."""
        return self.data.x[self.labelled], self.labels[self.labelled]
