"""Validation during training: a held-out bound every ``val_every`` steps, the best checkpoint, early stopping.

:class:`Validation` is a trainer callback. Every ``every`` steps it computes, on held-out
observations (the data set's validation split), the mean per-example ELBO (``metric="elbo"``,
one draw per example, beta = 1, no regularizers: :func:`~metaprior.evaluation.heldout.heldout_elbo`)
or the IWAE bound with ``samples`` draws (``metric="iwae"``, Burda et al. 2016, eq. 8), and

* writes a row ``{"step", "val_elbo", "val_rate", "val_distortion"[, "val_iwae"], "val_best", ...}``
  to ``metrics.jsonl`` (beside the training rows; the rows of the two kinds are told apart by their keys);
* keeps the checkpoint of the best value so far as ``checkpoints/best.ckpt`` (higher is better:
  both metrics are lower bounds on log p(x));
* with ``patience`` > 0, stops training after ``patience`` validations in a row without a new best
  (early stopping; Prechelt 1998's "patience" rule).

The held-out draws use their own seed inside ``torch.random.fork_rng``, so validating does not
change the training run's random stream: a run with validation trains exactly as one without, and
its state (best value, step, validations since the best) is in every checkpoint, so a resumed run
validates, keeps and stops exactly as an uninterrupted one.

The selection rule itself (:meth:`Validation.observe`) is a pure function of the sequence of values,
tested on synthetic curves.
"""
from __future__ import annotations

import json
import math
from typing import Callable

import numpy as np
import torch

VAL_METRICS = ("elbo", "iwae")


class Validation:
    """Held-out validation, best checkpoint and early stopping (see the module docstring)."""

    def __init__(self, observations, every: int, metric: str = "elbo", samples: int = 100, patience: int = 0,
                 seed: int = 0, batch_size: int = 256, evaluate: Callable | None = None):
        if int(every) != every or every < 1:
            raise ValueError(f"val_every must be a positive number of steps, got {every!r}")
        if metric not in VAL_METRICS:
            raise ValueError(f"val_metric must be one of {', '.join(VAL_METRICS)}, got {metric!r}")
        if int(patience) != patience or patience < 0:
            raise ValueError(f"early_stopping (patience, in validations) must be an integer >= 0, got {patience!r}")
        if int(samples) < 1:
            raise ValueError(f"val_samples must be >= 1, got {samples!r}")
        self.x = None if observations is None else np.asarray(observations, dtype=np.float32)
        if self.x is not None and len(self.x) == 0:
            raise ValueError("the validation split is empty; give the data set a validation split "
                             "(--data-option validation_fraction=0.1) or turn validation off (val_every=0)")
        self.every, self.metric, self.samples = int(every), metric, int(samples)
        self.patience, self.seed, self.batch_size = int(patience), int(seed), int(batch_size)
        self._evaluate = evaluate
        self.best = -math.inf
        self.best_step = -1
        self.since_best = 0
        self.stopped = False
        self.history: list[tuple[int, float]] = []

    # -- the selection rule -------------------------------------------------------------------
    def observe(self, step: int, value: float) -> bool:
        """Record ``value`` at ``step``; True when it is a new best. Sets ``stopped`` when patience runs out.
        A NaN value is never a best and counts against patience."""
        self.history.append((int(step), float(value)))
        improved = value == value and value > self.best
        if improved:
            self.best, self.best_step, self.since_best = float(value), int(step), 0
        else:
            self.since_best += 1
            if self.patience and self.since_best >= self.patience:
                self.stopped = True
        return improved

    # -- the held-out metric --------------------------------------------------------------------
    def measure(self, pair, device) -> dict[str, float]:
        if self._evaluate is not None:
            return dict(self._evaluate(pair))
        from ..evaluation.heldout import heldout_elbo, heldout_iwae

        x = torch.as_tensor(self.x).to(device)
        was = pair.training
        pair.eval()
        try:
            with torch.random.fork_rng(devices=[]):
                out = {f"val_{k}": v for k, v in heldout_elbo(pair, x, batch_size=self.batch_size, seed=self.seed).items()}
                if self.metric == "iwae":
                    r = heldout_iwae(pair, x, num_samples=self.samples, seed=self.seed)
                    out["val_iwae"] = r["iwae_log_likelihood"]
        finally:
            pair.train(was)
        return out

    @property
    def key(self) -> str:
        return f"val_{self.metric}"

    def after_step(self, trainer, fh) -> bool:
        """Called by the trainer after each step (before that step's checkpoint); returns True to stop."""
        if trainer.step % self.every != 0:
            return False
        row = {"step": trainer.step, **self.measure(trainer.pair, trainer.fabric.device)}
        value = row[self.key]
        if self.observe(trainer.step, value):
            if trainer.out is not None:
                trainer.save_checkpoint(name="best.ckpt")
        row.update(val_metric=self.key, val_best=self.best, val_best_step=self.best_step, val_since_best=self.since_best)
        trainer.last_validation = row
        if fh is not None:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
        sched = getattr(trainer, "_plateau", None)
        if sched is not None:
            sched.step(value)
        return self.stopped

    # -- checkpoint state -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "since_best": self.since_best,
                "stopped": self.stopped, "history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step = float(state["best"]), int(state["best_step"])
        self.since_best, self.stopped = int(state["since_best"]), bool(state["stopped"])
        self.history = [(int(s), float(v)) for s, v in state["history"]]
