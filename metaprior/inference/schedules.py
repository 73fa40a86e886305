"""Weight schedules for the KL weight beta and for regularizer weights.

A schedule is a function of the (0-based) optimisation step. Three kinds:

* ``Constant(value)``.
* ``LinearWarmup(value, steps, start=0.0)``: from ``start`` to ``value`` linearly over
  ``steps`` steps, then constant (KL warm-up, Bowman et al. 2016; Sonderby et al. 2016).
* ``Cyclic(value, period, ratio=0.5, start=0.0)``: the cyclical schedule of Fu et al. 2019:
  in each period, rise linearly from ``start`` to ``value`` over ``ratio * period``
  steps, then stay at ``value``.

``parse_schedule`` reads the command-line form: ``"4"``, ``"linear:4:1000"``
(value 4 after 1000 steps) or ``"cyclic:4:500:0.5"``. A recipe's schedule setting whose value is
another setting (``beta_schedule`` with ``beta``) has the form without the value, read by
:func:`parse_warmup`: ``"constant"``, ``"linear:STEPS"``, ``"cyclic:PERIOD[:RATIO]"``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union


class Schedule:
    def __call__(self, step: int) -> float:
        raise NotImplementedError

    @property
    def is_constant(self) -> bool:
        return False


def _check_weight(value: float, what: str) -> float:
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{what} must be a finite non-negative number, got {value}")
    return value


@dataclass(frozen=True)
class Constant(Schedule):
    value: float

    def __post_init__(self):
        _check_weight(self.value, "a weight")

    def __call__(self, step: int) -> float:
        return float(self.value)

    @property
    def is_constant(self) -> bool:
        return True


@dataclass(frozen=True)
class LinearWarmup(Schedule):
    value: float
    steps: int
    start: float = 0.0

    def __post_init__(self):
        _check_weight(self.value, "a weight")
        _check_weight(self.start, "a schedule's start")
        if int(self.steps) < 1:
            raise ValueError(f"a warm-up needs steps >= 1, got {self.steps}")

    def __call__(self, step: int) -> float:
        t = min(max(step, 0) / self.steps, 1.0)
        return self.start + t * (self.value - self.start)


@dataclass(frozen=True)
class Cyclic(Schedule):
    value: float
    period: int
    ratio: float = 0.5
    start: float = 0.0

    def __post_init__(self):
        _check_weight(self.value, "a weight")
        if int(self.period) < 1:
            raise ValueError(f"a cyclic schedule needs period >= 1, got {self.period}")
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"a cyclic schedule needs 0 < ratio <= 1, got {self.ratio}")

    def __call__(self, step: int) -> float:
        phase = (max(step, 0) % self.period) / (self.period * self.ratio)
        return self.start + min(phase, 1.0) * (self.value - self.start)


WeightLike = Union[float, int, Schedule]


@dataclass(frozen=True)
class Until(Schedule):
    """``value`` for steps ``< steps``, then 0 (e.g. the classification weight of the two-step method's
    first stage, Hadad et al. 2018)."""

    value: float
    steps: int

    def __post_init__(self):
        _check_weight(self.value, "weight")
        if int(self.steps) != self.steps or self.steps < 0:
            raise ValueError(f"an 'until' schedule needs steps >= 0, got {self.steps}")

    def __call__(self, step: int) -> float:
        return float(self.value) if step < self.steps else 0.0


def as_schedule(w: WeightLike) -> Schedule:
    if isinstance(w, Schedule):
        return w
    if isinstance(w, str):
        return parse_schedule(w)
    return Constant(_check_weight(w, "a weight"))


def parse_schedule(spec: str) -> Schedule:
    """``"4"`` -> Constant(4); ``"linear:V:STEPS[:START]"``; ``"cyclic:V:PERIOD[:RATIO[:START]]"``; ``"until:V:STEPS"``."""
    parts = str(spec).strip().split(":")
    try:
        if len(parts) == 1:
            return Constant(float(parts[0]))
        kind, args = parts[0], [float(p) for p in parts[1:]]
        if kind == "linear" and len(args) in (2, 3):
            return LinearWarmup(args[0], int(args[1]), *(args[2:]))
        if kind == "cyclic" and 2 <= len(args) <= 4:
            return Cyclic(args[0], int(args[1]), *(args[2:]))
        if kind == "until" and len(args) == 2:
            return Until(args[0], int(args[1]))
    except ValueError as e:
        if "schedule" in str(e) or "weight" in str(e):
            raise
    raise ValueError(
        f"cannot read schedule {spec!r}; use a number, 'linear:VALUE:STEPS[:START]', 'cyclic:VALUE:PERIOD[:RATIO[:START]]' or 'until:VALUE:STEPS'"
    )


WARMUP_FORMS = "'constant', 'linear:STEPS' or 'cyclic:PERIOD[:RATIO]'"


def parse_warmup(spec: str, value: float, setting: str = "beta_schedule", value_setting: str = "beta") -> float | Schedule:
    """The schedule of ``value`` that setting ``setting`` names: ``"constant"`` (``value`` itself),
    ``"linear:STEPS"`` (0 to ``value`` over STEPS steps) or ``"cyclic:PERIOD[:RATIO]"`` (Fu et al. 2019).

    ``value`` comes from its own setting (``value_setting``), so a spec that repeats it
    (``"linear:4:1000"``, the :func:`parse_schedule` form) is refused, naming both settings."""
    text = str(spec).strip()
    if text == "constant":
        return value
    kind, _, rest = text.partition(":")
    args = rest.split(":") if rest else []
    hint = (f"{setting} must be {WARMUP_FORMS}, got {text!r}; its value is {value_setting} "
            f"(e.g. --set {value_setting}=4 --set {setting}=linear:1000)")
    if kind not in ("linear", "cyclic") or not args or len(args) > (1 if kind == "linear" else 2):
        raise ValueError(hint)
    try:
        steps = float(args[0])
        ratio = float(args[1]) if len(args) > 1 else 0.5
    except ValueError:
        raise ValueError(hint) from None
    if steps != int(steps) or steps < 1:
        raise ValueError(f"{setting}: the {'warm-up steps' if kind == 'linear' else 'period'} must be a whole "
                         f"number >= 1, got {args[0]!r} (in {text!r})")
    try:
        return LinearWarmup(value, int(steps)) if kind == "linear" else Cyclic(value, int(steps), ratio)
    except ValueError as e:
        raise ValueError(f"{setting}={text!r}: {e}") from None
