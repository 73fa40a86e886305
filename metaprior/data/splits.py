"""Train / validation / test splits that say what they are: sizes, rule and seed, disjoint by construction.

:func:`make_split` partitions ``range(n)`` into three index sets:

* **test**: the examples from ``test_start`` on (a file's official order, e.g. "the last 2,000"),
  or else a random ``test_fraction`` of all examples: the first ``round(test_fraction * n)`` of
  ``default_rng(seed).permutation(n)`` (the rule :class:`~metaprior.data.base.ArrayData` has
  always used, so existing runs keep their test sets);
* **validation**: a random ``validation_fraction`` of the remaining (non-test) examples, the first
  ``round(validation_fraction * n_rest)`` of ``default_rng([seed, 1]).permutation(n_rest)`` (a
  stream independent of the test draw), or the last ``validation_size`` non-test examples in file
  order when ``validation_last`` is set;
* **train**: everything else.

Each set is sorted; their union is ``range(n)`` and they are pairwise disjoint (checked). The same
arguments give the same split on any machine (numpy's ``default_rng`` is PCG64, stable across
versions). :meth:`Split.describe` is the record a run or an evaluation stores beside its numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import DataError

SPLITS = ("train", "validation", "test")


class SplitError(DataError):
    """A split that cannot be made (the message names the setting)."""


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    rule: dict

    def indices(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise SplitError(f"unknown split {name!r}; valid: {', '.join(SPLITS)}")
        return getattr(self, name)

    def describe(self) -> dict:
        """Sizes and the rule (fractions / start, seed) of the split: what a run records."""
        return {"train": int(len(self.train)), "validation": int(len(self.validation)), "test": int(len(self.test)),
                **self.rule}


def make_split(n: int, test_fraction: float = 0.1, validation_fraction: float = 0.0, seed: int = 0,
               test_start: int | None = None, validation_last: int | None = None) -> Split:
    """The split of ``range(n)`` described in the module docstring."""
    n = int(n)
    if n < 2:
        raise SplitError(f"need at least 2 examples to split, got {n}")
    if not 0.0 <= test_fraction < 1.0:
        raise SplitError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if not 0.0 <= validation_fraction < 1.0:
        raise SplitError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    if validation_last is not None and validation_fraction:
        raise SplitError("give validation_fraction or validation_last, not both")
    if test_start is not None:
        if not 0 < int(test_start) <= n:
            raise SplitError(f"test_start={test_start} must lie in [1, {n}] (the examples from it on are the test set)")
        test = np.arange(int(test_start), n)
        rest = np.arange(int(test_start))
        rule = {"test_rule": f"examples {int(test_start)}..{n - 1} in file order"}
    else:
        perm = np.random.default_rng(seed).permutation(n)
        n_test = int(round(test_fraction * n))
        if n - n_test < 1:
            n_test = n - 1
        test, rest = np.sort(perm[:n_test]), np.sort(perm[n_test:])
        rule = {"test_rule": f"random {test_fraction:g} of all examples (seed {seed})"}
    if validation_last is not None:
        k = int(validation_last)
        if not 0 <= k < len(rest):
            raise SplitError(f"validation_last={k} must be in [0, {len(rest) - 1}] (the non-test examples number {len(rest)})")
        val, train = rest[len(rest) - k:], rest[:len(rest) - k]
        rule["validation_rule"] = f"last {k} non-test examples in file order"
    elif validation_fraction:
        k = int(round(validation_fraction * len(rest)))
        if len(rest) - k < 1:
            raise SplitError(f"validation_fraction={validation_fraction} leaves no training example")
        p = np.random.default_rng([seed, 1]).permutation(len(rest))
        val, train = np.sort(rest[p[:k]]), np.sort(rest[p[k:]])
        rule["validation_rule"] = f"random {validation_fraction:g} of the non-test examples (seed [{seed}, 1])"
    else:
        val, train = rest[:0], rest
        rule["validation_rule"] = "none"
    split = Split(train, val, test, {**rule, "seed": int(seed)})
    _check_partition(split, n)
    return split


def _check_partition(split: Split, n: int) -> None:
    allidx = np.concatenate([split.train, split.validation, split.test])
    if len(allidx) != n or len(np.unique(allidx)) != n:
        raise SplitError("internal error: the splits overlap or miss examples")  # pragma: no cover


def validation_observations(data) -> np.ndarray:
    """The observations of ``data``'s validation split, with an error naming the fix when it has none."""
    if hasattr(data, "validation_observations"):
        x = data.validation_observations()
        if x is not None and len(x):
            return np.asarray(x)
    idx = getattr(data, "validation_indices", None)
    if idx is not None and len(idx):
        return np.asarray(data.x[idx])
    name = getattr(data, "name", type(data).__name__)
    raise SplitError(
        f"data set {name!r} has no validation split, so val_every cannot validate; give it one with "
        "--data-option validation_fraction=0.1 (a random tenth of the non-test examples) or turn "
        "validation off (val_every=0)")


def same_examples(a: np.ndarray, b: np.ndarray) -> bool:
    """True when the two arrays hold the same examples (same rows, in any order)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    ka = np.sort([hash(r.tobytes()) for r in a.reshape(len(a), -1)])
    kb = np.sort([hash(r.tobytes()) for r in b.reshape(len(b), -1)])
    return bool(np.array_equal(ka, kb))


#: data options that choose a split, dropped when a separate test file is loaded with a run's options
SPLIT_OPTIONS = ("test_fraction", "test_start", "validation_fraction", "validation_last", "limit")


def _row_keys(x: np.ndarray) -> list[bytes]:
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    return [r.tobytes() for r in x.reshape(len(x), -1)]


class HeldOut:
    """``data`` with its held-out observations (``test_observations``) taken from the named split or from a
    separate array: what ``metaprior evaluate --split/--test-data`` scores. Everything else is ``data``'s.

    ``heldout_settings`` (written beside each held-out number in ``eval.json``) names the split, its
    source, its size and ``train_overlap``, the number of its examples that are also training examples.
    """

    def __init__(self, data, split: str, x: np.ndarray, source: str):
        self._data, self._x = data, np.asarray(x)
        train_idx = getattr(data, "train_indices", None)
        overlap = None
        if train_idx is not None and hasattr(data, "x"):
            train = set(_row_keys(data.x[train_idx]))
            overlap = sum(k in train for k in _row_keys(self._x))
        self.train_size = None if train_idx is None else int(len(train_idx))
        self.heldout_settings = {"split": split, "source": source, "split_size": int(len(self._x))}
        if overlap is not None:
            self.heldout_settings["train_overlap"] = int(overlap)

    def __getattr__(self, name):
        return getattr(self._data, name)

    def test_observations(self, n: int, seed: int) -> np.ndarray:
        return self._x[:n]


def heldout_view(data, split: str = "test", test_data=None, options: dict | None = None, allow_train_overlap=False):
    """The data set evaluation scores: ``data``'s ``validation`` or ``test`` split, or with ``test_data`` (a
    path or a data set name) every example of that file, read with ``options`` minus the split options.

    Refuses, naming the fix, when the "test" examples are the training examples: a data set without a
    test split (``test_fraction=0``, whose ``test_observations`` fall back to the training set), or a
    ``test_data`` file whose examples all appear in the training split. A partial overlap is allowed
    but counted (``train_overlap``) and warned about by the caller.
    """
    if split not in ("validation", "test"):
        raise SplitError(f"--split must be validation or test, got {split!r}")
    if test_data is not None:
        if split != "test":
            raise SplitError("--test-data replaces the test split; it cannot be combined with --split validation")
        from . import load

        opts = {k: v for k, v in dict(options or {}).items() if k not in SPLIT_OPTIONS}
        name = str(test_data)
        try:
            other = load(name, **{**opts, "test_fraction": 0.0})
        except TypeError:
            other = load(name, **opts)
        if not hasattr(other, "x"):
            raise SplitError(f"--test-data {name}: a finite data file is needed (got {type(other).__name__})")
        view = HeldOut(data, "test", other.x, f"file {name} (all {len(other.x)} examples)")
    elif not (hasattr(data, "test_indices") and hasattr(data, "x")):  # a generator (dSprites): a seeded test draw
        if split == "validation":
            raise SplitError(f"data set {getattr(data, 'name', '')!r} has no validation split; use --split test "
                             "(for a generator, a seeded sample on a stream apart from the training batches)")
        return data
    else:
        idx = getattr(data, "validation_indices", [])[:] if split == "validation" else data.test_indices
        if split == "test" and len(idx):
            return data  # the data set's own test split, disjoint from training by construction
        if len(idx) == 0:
            opt = "validation_fraction=0.1" if split == "validation" else "test_fraction=0.1 (or test_start=N)"
            raise SplitError(
                f"data set {getattr(data, 'name', '')!r} has no {split} split, so a '{split}' evaluation would score "
                f"the training examples; give a separate file with --test-data PATH, or train with "
                f"--data-option {opt}")
        view = HeldOut(data, split, data.x[idx], f"{split} split ({getattr(data, 'split_description', dict)()})")
    k = view.heldout_settings.get("train_overlap", 0)
    if k and (k == len(view._x) or k == view.train_size) and not allow_train_overlap:
        what = (f"every one of the {k} '{split}' examples is also a training example" if k == len(view._x) else
                f"the '{split}' data hold all {k} training examples")
        raise SplitError(
            f"{what}: the number would measure fit, not generalization; give held-out data with --test-data PATH "
            "(a file the run did not train on)")
    return view
