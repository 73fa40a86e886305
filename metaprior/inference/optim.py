"""Optimizer and learning-rate schedule by name, straight from ``torch.optim`` (nothing home-made).

Settings (``TrainConfig`` fields, ``--set KEY=VALUE`` on the command line):

* ``optimizer``: the name of a ``torch.optim`` class, case-insensitive (``adam`` -- the default --,
  ``adamw``, ``sgd``, ``rmsprop``, ``adagrad``, ``adamax``, ``nadam``, ``radam``, ...).
* ``lr``, ``weight_decay`` (passed to the optimizer; with ``adamw`` it is decoupled weight decay,
  Loshchilov & Hutter 2019, with the others an L2 penalty in the gradient), ``momentum`` (only for
  optimizers that take one: ``sgd``, ``rmsprop``; refused elsewhere rather than ignored).
* ``lr_schedule``: ``constant`` (default), or a ``torch.optim.lr_scheduler`` stepped once per
  training step:

  ===================== ==========================================================
  ``cosine``            ``CosineAnnealingLR(T_max=total steps)`` (to 0 at the end)
  ``cosine:ETA_MIN``    the same, down to ``ETA_MIN``
  ``step:SIZE:GAMMA``   ``StepLR(step_size=SIZE, gamma=GAMMA)``
  ``exponential:GAMMA`` ``ExponentialLR(gamma=GAMMA)`` (per step)
  ``warmup:STEPS``      ``LinearLR(start_factor=1/STEPS, total_iters=STEPS)``
  ``plateau:FACTOR:PATIENCE`` ``ReduceLROnPlateau`` on the validation metric (needs ``val_every``;
                        patience counts validations)
  ===================== ==========================================================

Both objects' ``state_dict`` go into every checkpoint, so a resumed run continues exactly.
"""
from __future__ import annotations

import inspect

import torch


def _optimizers() -> dict[str, type]:
    return {name.lower(): cls for name, cls in vars(torch.optim).items()
            if inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer}


def optimizer_class(name: str) -> type:
    """The ``torch.optim`` class called ``name`` (case-insensitive), with an error listing the valid names."""
    table = _optimizers()
    cls = table.get(str(name).strip().lower())
    if cls is None:
        raise ValueError(f"unknown optimizer {name!r}; valid (torch.optim): {', '.join(sorted(table))}")
    return cls


def build_optimizer(params, name: str = "adam", lr: float = 1e-3, weight_decay: float = 0.0,
                    momentum: float = 0.0) -> torch.optim.Optimizer:
    """``torch.optim.<name>(params, lr=lr, weight_decay=weight_decay[, momentum=momentum])``."""
    cls = optimizer_class(name)
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {"lr": lr}
    if weight_decay < 0 or momentum < 0:
        raise ValueError(f"weight_decay and momentum must be >= 0, got {weight_decay} and {momentum}")
    if weight_decay:
        if "weight_decay" not in accepted:
            raise ValueError(f"optimizer {name!r} takes no weight_decay; leave weight_decay=0 or choose adamw/sgd/adam")
        kwargs["weight_decay"] = float(weight_decay)
    elif "weight_decay" in accepted and cls is torch.optim.AdamW:
        kwargs["weight_decay"] = 0.0  # AdamW's own default is 0.01: the setting says 0, so 0 it is
    if momentum:
        if "momentum" not in accepted:
            raise ValueError(f"optimizer {name!r} takes no momentum; use optimizer=sgd or rmsprop, or momentum=0")
        kwargs["momentum"] = float(momentum)
    return cls(params, **kwargs)


SCHEDULES = ("constant", "cosine", "step", "exponential", "warmup", "plateau")


def parse_lr_schedule(spec: str) -> tuple[str, list[float]]:
    kind, *rest = [s.strip() for s in str(spec).strip().split(":")]
    try:
        args = [float(v) for v in rest]
    except ValueError:
        raise ValueError(f"lr_schedule {spec!r}: the numbers after the name must be numbers") from None
    want = {"constant": (0, 0), "cosine": (0, 1), "step": (2, 2), "exponential": (1, 1), "warmup": (1, 1),
            "plateau": (2, 2)}
    if kind not in want:
        raise ValueError(f"unknown lr_schedule {spec!r}; valid: constant, cosine[:ETA_MIN], step:SIZE:GAMMA, "
                         "exponential:GAMMA, warmup:STEPS, plateau:FACTOR:PATIENCE")
    lo, hi = want[kind]
    if not lo <= len(args) <= hi:
        raise ValueError(f"lr_schedule {spec!r}: {kind} takes {lo}{'' if lo == hi else f' to {hi}'} number(s)")
    return kind, args


def build_scheduler(optimizer: torch.optim.Optimizer, spec: str, total_steps: int):
    """The ``torch.optim.lr_scheduler`` object for ``spec`` (see the module docstring), or None for constant."""
    kind, args = parse_lr_schedule(spec)
    S = torch.optim.lr_scheduler
    if kind == "constant":
        return None
    if kind == "cosine":
        return S.CosineAnnealingLR(optimizer, T_max=int(total_steps), eta_min=args[0] if args else 0.0)
    if kind == "step":
        return S.StepLR(optimizer, step_size=int(args[0]), gamma=args[1])
    if kind == "exponential":
        return S.ExponentialLR(optimizer, gamma=args[0])
    if kind == "warmup":
        n = int(args[0])
        if n < 1:
            raise ValueError(f"lr_schedule warmup:STEPS needs STEPS >= 1, got {spec!r}")
        return S.LinearLR(optimizer, start_factor=1.0 / n, total_iters=n)
    return S.ReduceLROnPlateau(optimizer, mode="max", factor=args[0], patience=int(args[1]))
