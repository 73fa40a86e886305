"""Clamped batches for DC-IGN (Kulkarni et al. 2015, sec. 3.2; survey Tschannen et al. 2018, sec. 3.4).

Kulkarni et al. train on mini-batches in which *one* generative factor changes while every
other factor keeps one value shared by the whole batch (a face under changing azimuth,
same identity, elevation and light). :class:`ClampedBatches` builds such batches from any
:class:`~metaprior.data.base.GroundTruthData` (``sample_factors`` /
``observations_from_factors``; dSprites here):

* the factors named in ``assignment`` are the *extrinsic* factors, each designated to one
  latent unit (default: the k-th factor that takes more than one value -> unit k); the
  remaining factors are *intrinsic* and share the remaining units;
* batch ``step`` varies the factor ``cycle[step % len(cycle)]``, ``cycle`` being the
  assigned factors in order, followed by one "intrinsic" slot when ``intrinsic=True``
  (batches where every assigned factor is clamped and the unassigned ones vary, the
  paper's batches for "intrinsic properties" such as face identity);
* in a batch all non-varying factors take one value drawn uniformly from the grid, shared
  by the whole batch; the varying factor takes ``batch_size`` values that run through
  random permutations of its grid values (each value equally often, so the factor does
  vary whenever ``batch_size >= 2``); intrinsic factors of an intrinsic batch are drawn
  i.i.d. per example.

``batch(step, batch_size, seed)`` is a pure function of ``(seed, step)`` and returns
``(x [B, ...] float32, which [B] int64)`` with ``which`` filled with the index (into
``factor_names``) of the varying factor, or -1 in intrinsic batches. :meth:`batch_factors`
returns the factor rows behind the batch. Everything else (``factor_names``,
``sample_factors``, ``test_observations``, ``num_examples``, ...) is passed through to the
wrapped data set, so the disentanglement metrics and plots see the ordinary data.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from .base import DataError, GroundTruthData

INTRINSIC = -1  # ``which`` of a batch in which only the intrinsic (unassigned) factors vary


def parse_assignment(spec: str | Mapping[str, int] | None) -> dict[str, int] | None:
    """``"shape:0,scale:1"`` (or a mapping) -> ``{"shape": 0, "scale": 1}``; ``""``/None -> None (the default)."""
    if spec is None:
        return None
    if isinstance(spec, Mapping):
        return {str(k): int(v) for k, v in spec.items()}
    spec = str(spec).strip()
    if not spec:
        return None
    out: dict[str, int] = {}
    for item in spec.split(","):
        name, sep, unit = item.partition(":")
        name, unit = name.strip(), unit.strip()
        if not sep or not name or not unit.lstrip("-").isdigit():
            raise DataError(f"assignment entries are FACTOR:UNIT (e.g. 'shape:0,scale:1'); cannot read {item.strip()!r}")
        if name in out:
            raise DataError(f"factor {name!r} is assigned twice in {spec!r}")
        out[name] = int(unit)
    return out


class ClampedBatches:
    """Batches in which one factor varies and all others are clamped (see the module docstring)."""

    def __init__(self, data, assignment: Mapping[str, int] | str | None = None, intrinsic: bool = False,
                 latent_dim: int | None = None):
        if not isinstance(data, GroundTruthData):
            raise DataError(f"clamped batches need a data set with ground-truth factors and a generator "
                            f"(sample_factors / observations_from_factors, e.g. dsprites); "
                            f"{getattr(data, 'name', type(data).__name__)!r} has none")
        self.data = data
        names = list(data.factor_names)
        sizes = [int(s) for s in data.factor_sizes]
        varying = [n for n, s in zip(names, sizes) if s > 1]
        assignment = parse_assignment(assignment)
        if assignment is None:
            assignment = {n: k for k, n in enumerate(varying)}
        unknown = [n for n in assignment if n not in names]
        if unknown:
            raise DataError(f"unknown factor(s) {', '.join(map(repr, unknown))} in the assignment; "
                            f"{getattr(data, 'name', 'the data set')!r} has factors: {', '.join(names)}")
        constant = [n for n in assignment if sizes[names.index(n)] < 2]
        if constant:
            raise DataError(f"factor(s) {', '.join(constant)} take a single value and cannot vary in a batch; "
                            f"assign only factors among: {', '.join(varying)}")
        if not assignment:
            raise DataError(f"the assignment is empty; name at least one factor among: {', '.join(varying)}")
        units = list(assignment.values())
        if len(set(units)) != len(units):
            raise DataError(f"two factors share a latent unit in {assignment}; give each factor its own unit")
        if min(units) < 0 or (latent_dim is not None and max(units) >= latent_dim):
            raise DataError(f"latent units must lie in 0..{'latent_dim - 1' if latent_dim is None else latent_dim - 1}; "
                            f"the assignment {assignment} does not (raise latent_dim or change the assignment)")
        self.assignment = dict(assignment)
        self.latent_dim = latent_dim
        self.factor_index = [names.index(n) for n in assignment]  # the extrinsic factors, in cycle order
        self.intrinsic_factors = [k for k, n in enumerate(names) if n not in assignment and sizes[k] > 1]
        self.intrinsic = bool(intrinsic)
        if self.intrinsic and not self.intrinsic_factors:
            raise DataError("intrinsic batches need at least one unassigned factor that varies, but every varying "
                            f"factor ({', '.join(varying)}) is assigned; drop one from the assignment or set "
                            "intrinsic=false")
        self.cycle = [*self.factor_index, *([INTRINSIC] if self.intrinsic else [])]
        #: unit of each factor (-1: intrinsic), with a final -1 so that ``factor_unit[which]`` works for which = -1
        self.factor_unit = np.array([assignment.get(n, -1) for n in names] + [-1], dtype=np.int64)
        self.name = f"{getattr(data, 'name', 'data')}[clamped]"

    # -- the batches ---------------------------------------------------------------------------
    def varying_factor(self, step: int) -> int:
        """Index of the factor that varies at ``step`` (``INTRINSIC`` = -1: the unassigned factors vary)."""
        return self.cycle[int(step) % len(self.cycle)]

    def batch_factors(self, step: int, batch_size: int, seed: int) -> tuple[np.ndarray, int]:
        """The factor rows [B, K] of the batch at ``step`` and the index of its varying factor."""
        if int(batch_size) != batch_size or batch_size < 1:
            raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
        d, b = self.data, int(batch_size)
        rng = np.random.default_rng([int(seed), int(step)])
        which = self.varying_factor(step)
        f = np.repeat(d.sample_factors(1, rng), b, axis=0)  # every factor clamped to one shared value
        if which == INTRINSIC:
            for k in self.intrinsic_factors:
                f[:, k] = rng.integers(0, d.factor_sizes[k], size=b)
        else:
            size = int(d.factor_sizes[which])
            reps = -(-b // size)
            f[:, which] = np.concatenate([rng.permutation(size) for _ in range(reps)])[:b]
        return f, which

    def batch(self, step: int, batch_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        f, which = self.batch_factors(step, batch_size, seed)
        x = self.data.observations_from_factors(f).astype(np.float32, copy=False)
        return x, np.full(len(f), which, dtype=np.int64)

    # -- pass-through -----------------------------------------------------------------------------
    def __getattr__(self, name):
        if name == "data":  # not yet set (during unpickling)
            raise AttributeError(name)
        return getattr(self.data, name)
