"""Data-set interfaces shared by every data source.

Two kinds of data set exist:

* :class:`ArrayData` -- a finite array of observations (optionally with integer
  labels or ground-truth factors), split deterministically into train and test.
* :class:`GroundTruthData` -- a data set generated from discrete ground-truth
  factors (procedural dSprites), with the interface of disentanglement_lib:
  ``factor_names``, ``factor_sizes``, ``sample_factors(n, rng)``,
  ``observations_from_factors(factors)`` and the index <-> factors bijection.

Both expose what the trainer needs: ``observation_shape``, ``num_examples``
(the training-set size N used for per-example losses and aggregate-posterior
estimators), ``is_binary`` and ``batch(step, batch_size, seed)``, a *stateless*
batch function: the batch at a step depends only on (seed, step), so a resumed
run sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


class DataError(ValueError):
    """Bad data: NaNs, wrong shapes, unknown names, unreadable files."""


def check_finite(x: np.ndarray, what: str = "data") -> None:
    """Raise :class:`DataError` if ``x`` holds NaN or infinite values."""
    bad = ~np.isfinite(x)
    if bad.any():
        raise DataError(
            f"{what} holds {int(bad.sum())} NaN or infinite values (first at flat index "
            f"{int(np.flatnonzero(bad.ravel())[0])}); clean or impute them before training"
        )


class Dataset:
    """What every data set offers the trainer (see the module docstring)."""

    name: str = "dataset"
    observation_shape: tuple[int, ...]

    @property
    def num_examples(self) -> int:  # training-set size N
        raise NotImplementedError

    @property
    def is_binary(self) -> bool:
        raise NotImplementedError

    def batch(self, step: int, batch_size: int, seed: int) -> np.ndarray:
        """The float32 training batch of shape [batch_size, *observation_shape] at ``step``."""
        raise NotImplementedError

    def test_observations(self, n: int, seed: int) -> np.ndarray:
        """Up to ``n`` held-out float32 observations (deterministic given seed)."""
        raise NotImplementedError


@dataclass
class ArrayData(Dataset):
    """A finite array data set ``x`` [N, ...] with optional labels [N] or factors [N, k].

    ``test_fraction`` of the examples (a fixed random subset, chosen by ``split_seed``)
    are held out; with ``test_start`` set, the examples from that index on are the test
    set instead (an official split, e.g. Fashion-MNIST's 60,000 + 10,000). ``validation_fraction``
    of the other examples (random, by ``split_seed``), or the last ``validation_last`` of them in file
    order, form a validation split, disjoint from train and test (:func:`metaprior.data.splits.make_split`
    documents the rules; ``split_description()`` gives the sizes and rule of a data set's split). Batches are drawn
    by shuffled epochs: epoch e uses the permutation ``default_rng([seed, e])`` of the
    training indices, so ``batch`` is stateless.
    """

    x: np.ndarray
    labels: np.ndarray | None = None
    factors: np.ndarray | None = None
    factor_names: Sequence[str] | None = None
    name: str = "array"
    test_fraction: float = 0.1
    split_seed: int = 0
    test_start: int | None = None
    validation_fraction: float = 0.0
    validation_last: int | None = None
    _train: np.ndarray = field(init=False, repr=False)
    _test: np.ndarray = field(init=False, repr=False)
    _validation: np.ndarray = field(init=False, repr=False)
    _perm: np.ndarray | None = field(init=False, repr=False, default=None)
    _perm_key: tuple | None = field(init=False, repr=False, default=None)

    def __post_init__(self):
        x = np.asarray(self.x)
        if x.ndim < 2:
            raise DataError(f"{self.name}: observations need shape [N, ...] with N examples; got shape {x.shape}")
        if x.shape[0] < 2:
            raise DataError(f"{self.name}: need at least 2 examples, got {x.shape[0]}")
        x = x.astype(np.float32, copy=False)
        check_finite(x, f"{self.name} observations")
        self.x = x
        n = x.shape[0]
        for attr in ("labels", "factors"):
            v = getattr(self, attr)
            if v is not None:
                v = np.asarray(v)
                if v.shape[0] != n:
                    raise DataError(f"{self.name}: {attr} has {v.shape[0]} rows but there are {n} observations")
                setattr(self, attr, v)
        from .splits import SplitError, make_split

        try:
            split = make_split(n, self.test_fraction, self.validation_fraction, self.split_seed, self.test_start,
                               self.validation_last)
        except SplitError as e:
            raise DataError(f"{self.name}: {e}") from None
        self._train, self._validation, self._test = split.train, split.validation, split.test
        self._split = split
        self.observation_shape = tuple(x.shape[1:])

    @property
    def num_examples(self) -> int:
        return len(self._train)

    @property
    def is_binary(self) -> bool:
        return bool(np.all((self.x == 0) | (self.x == 1)))

    @property
    def train_indices(self) -> np.ndarray:
        return self._train

    @property
    def test_indices(self) -> np.ndarray:
        return self._test

    @property
    def validation_indices(self) -> np.ndarray:
        return self._validation

    def split_description(self) -> dict:
        """Sizes and rules of the train / validation / test split (:meth:`metaprior.data.splits.Split.describe`)."""
        return self._split.describe()

    def batch_indices(self, step: int, batch_size: int, seed: int) -> np.ndarray:
        n = len(self._train)
        if batch_size > n:
            raise DataError(f"{self.name}: batch size {batch_size} exceeds the {n} training examples; lower batch_size")
        per_epoch = n // batch_size
        epoch, pos = divmod(step, per_epoch)
        if self._perm_key != (seed, epoch):  # one permutation per epoch, cached
            self._perm = np.random.default_rng([seed, epoch]).permutation(n)
            self._perm_key = (seed, epoch)
        return self._train[self._perm[pos * batch_size:(pos + 1) * batch_size]]

    def batch(self, step: int, batch_size: int, seed: int) -> np.ndarray:
        return self.x[self.batch_indices(step, batch_size, seed)]

    def test_observations(self, n: int, seed: int) -> np.ndarray:
        idx = self._test if len(self._test) else self._train
        return self.x[idx[:n]]


class GroundTruthData(Dataset):
    """A data set generated by discrete ground-truth factors (disentanglement_lib's interface).

    Subclasses set ``factor_names`` and ``factor_sizes`` and implement
    ``observations_from_factors``. Indices enumerate the factor grid in row-major
    (C) order, the first factor varying slowest, as in the official dSprites file.
    Training batches are i.i.d. uniform draws from the grid, like disentanglement_lib.
    """

    factor_names: tuple[str, ...]
    factor_sizes: tuple[int, ...]

    @property
    def num_factors(self) -> int:
        return len(self.factor_sizes)

    @property
    def num_examples(self) -> int:
        return int(np.prod(self.factor_sizes))

    def sample_factors(self, n: int, rng) -> np.ndarray:
        """``n`` factor rows drawn uniformly from the grid; ``rng`` is a numpy Generator or RandomState."""
        if isinstance(rng, np.random.RandomState):  # disentanglement_lib's draw, value for value
            cols = [rng.randint(s, size=n) for s in self.factor_sizes]
        else:
            rng = as_generator(rng)
            cols = [rng.integers(0, s, size=n) for s in self.factor_sizes]
        return np.stack(cols, axis=1).astype(np.int64)

    def observations_from_factors(self, factors: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def sample_observations(self, n: int, rng) -> np.ndarray:
        return self.observations_from_factors(self.sample_factors(n, rng))

    def check_factors(self, factors) -> np.ndarray:
        f = np.asarray(factors)
        if f.ndim != 2 or f.shape[1] != self.num_factors:
            raise DataError(f"factors need shape [n, {self.num_factors}] ({', '.join(self.factor_names)}); got {f.shape}")
        if not np.issubdtype(f.dtype, np.integer):
            raise DataError(f"factors must be integer class indices, got dtype {f.dtype}")
        sizes = np.asarray(self.factor_sizes)
        if (f < 0).any() or (f >= sizes).any():
            raise DataError(f"factor values out of range; sizes are {dict(zip(self.factor_names, self.factor_sizes))}")
        return f.astype(np.int64)

    def factors_to_index(self, factors) -> np.ndarray:
        f = self.check_factors(factors)
        return np.ravel_multi_index(tuple(f.T), self.factor_sizes).astype(np.int64)

    def index_to_factors(self, index) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64)
        if (index < 0).any() or (index >= self.num_examples).any():
            raise DataError(f"index out of range [0, {self.num_examples})")
        return np.stack(np.unravel_index(index, self.factor_sizes), axis=-1).astype(np.int64)

    def batch(self, step: int, batch_size: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng([seed, step])
        return self.sample_observations(batch_size, rng).astype(np.float32, copy=False)

    def test_observations(self, n: int, seed: int) -> np.ndarray:
        # A fixed sample from the grid, on a stream disjoint from training batches.
        rng = np.random.default_rng([seed, 2**31 - 1, 7])
        return self.sample_observations(n, rng).astype(np.float32, copy=False)


def grid_rows(classes: np.ndarray, sizes: Sequence[int], what: str) -> np.ndarray | None:
    """For factor classes [N, k] listing a grid of ``sizes`` once each: the row of each grid index
    (None when the rows already are in row-major order); :class:`DataError` otherwise."""
    n = len(classes)
    expected = int(np.prod(sizes))
    flat = np.ravel_multi_index(tuple(np.asarray(classes).T), tuple(sizes))
    if n != expected or np.bincount(flat, minlength=n).max() != 1:
        raise DataError(f"{what} must list every factor combination of sizes {tuple(sizes)} exactly once "
                        f"({expected} rows), found {n} rows" + ("" if n != expected else " with repeats"))
    if (flat == np.arange(n)).all():
        return None
    rows = np.empty(n, dtype=np.int64)
    rows[flat] = np.arange(n)
    return rows


def classes_of(values: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Integer classes [N, k] (each column's sorted distinct values -> 0, 1, ...) and those values."""
    uniq = [np.unique(col) for col in values.T]
    return np.stack([np.searchsorted(u, col) for u, col in zip(uniq, values.T)], 1).astype(np.int64), uniq


def as_generator(rng) -> np.random.Generator:
    """Accept a numpy Generator, a legacy RandomState (as disentanglement_lib passes) or an int seed."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, np.random.RandomState):
        return np.random.default_rng(rng.randint(0, 2**31 - 1))
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy Generator, RandomState or int seed, got {type(rng).__name__}")
