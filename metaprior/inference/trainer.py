"""One SVI engine for the built-in methods and for model/guide pairs a user writes.

The trainer optimizes ``pair.parameters()`` (plus any ``pyro.param`` sites the programs
declare) with a torch optimizer against an :class:`~metaprior.inference.elbo.ELBO`, and
writes the run-directory contract of DESIGN.md:

    out/config.json        resolved configuration, seed and package versions
    out/metrics.jsonl      one JSON object per logged step: step, loss, elbo, rate, distortion, beta, terms...
    out/checkpoints/       step_0000500.ckpt ... (model, optimizers, critics, step, RNG states)

Lightning Fabric places the model on the device, handles precision and DDP
(``strategy="ddp", devices=N``), and reads/writes checkpoints; there is no
distribution code of our own. Batches come from ``data.batch(step, batch_size, seed)``,
a pure function of the step, and the checkpoint holds every RNG state, so a run
resumed from a checkpoint ends exactly where an uninterrupted run does.

Auxiliary updates (critics with their own optimizer: FactorVAE's discriminator, the
AAE's prior critic) are :class:`AuxiliaryUpdate` modules. Any ELBO term that is one is
stepped after each main step with the step's traces; extra ones can be passed in.
"""
from __future__ import annotations

import io
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pyro
import torch
from pyro import poutine
from torch import nn

from ..rundir import (CheckpointError, DiskFull, RunDir, TrainingError, checkpoint_step,  # noqa: F401
                      checkpoints, versions, write_bytes)
from .elbo import ELBO, NonFiniteLoss, TermContext, check_finite


@dataclass
class TrainConfig:
    """Optimisation settings. ``checkpoint_every``, ``log_every`` and ``val_every`` count steps.

    ``epochs`` > 0 replaces ``steps`` by ``epochs`` passes over the training split
    (``epochs * (num_examples // batch_size)`` steps). ``optimizer`` / ``weight_decay`` /
    ``momentum`` / ``lr_schedule`` choose a ``torch.optim`` optimizer and learning-rate schedule
    (:mod:`~metaprior.inference.optim`). ``val_every`` > 0 validates on the data set's validation
    split every so many steps with ``val_metric`` (``elbo``, or ``iwae`` with ``val_samples`` draws),
    keeps ``checkpoints/best.ckpt`` and, with ``early_stopping`` = patience > 0, stops after that many
    validations without a new best (:mod:`~metaprior.inference.validation`). ``threads`` > 0 sets
    ``torch.set_num_threads`` (0: torch's default). ``validate`` is Pyro's argument checking
    (``pyro.validation_enabled``), not a validation split. ``logger`` ``"tensorboard"`` or ``"csv"`` mirrors
    every metrics row to a Lightning Fabric logger under ``out/logs/`` (:mod:`~metaprior.loggers`).
    """

    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    device: str = "cpu"
    devices: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    grad_clip: float = 0.0
    validate: bool = False
    progress: bool = True
    epochs: int = 0
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.0
    lr_schedule: str = "constant"
    val_every: int = 0
    val_metric: str = "elbo"
    val_samples: int = 100
    early_stopping: int = 0
    threads: int = 0
    logger: str = "none"

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints", "devices"):
            v = getattr(self, name)
            if int(v) != v or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not (self.lr > 0 and np.isfinite(self.lr)):
            raise ValueError(f"lr (learning rate) must be a positive number, got {self.lr!r}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        from ..loggers import LOGGERS

        if self.logger not in LOGGERS:
            raise ValueError(f"logger must be one of {', '.join(LOGGERS)}, got {self.logger!r}")
        if self.device not in ("cpu", "cuda", "mps", "auto"):
            raise ValueError(f"device must be cpu, cuda, mps or auto, got {self.device!r}")
        for name in ("epochs", "val_every", "early_stopping", "threads"):
            v = getattr(self, name)
            if int(v) != v or v < 0:
                raise ValueError(f"{name} must be an integer >= 0 (0 = off), got {v!r}")
        from .optim import optimizer_class, parse_lr_schedule
        from .validation import VAL_METRICS

        optimizer_class(self.optimizer)
        parse_lr_schedule(self.lr_schedule)
        if self.val_metric not in VAL_METRICS:
            raise ValueError(f"val_metric must be one of {', '.join(VAL_METRICS)}, got {self.val_metric!r}")
        if self.early_stopping and not self.val_every:
            raise ValueError("early_stopping needs validation: set val_every (steps between validations)")
        if self.lr_schedule.startswith("plateau") and not self.val_every:
            raise ValueError("lr_schedule=plateau steps on the validation metric: set val_every")


class AuxiliaryUpdate(nn.Module):
    """A module trained by its own optimizer after each main step (a critic).

    Subclasses implement ``update(ctx) -> dict`` (values to log); it receives the main
    step's :class:`TermContext` and must use detached inputs. The trainer creates the
    optimizer with :meth:`configure_optimizer`, zeroes this module's gradients before
    ``update`` (the main backward also reaches critic parameters used in a term) and
    steps the optimizer after it. ``update`` returns the loss to minimise under
    ``"loss"`` plus anything to log.
    """

    lr: float = 1e-4

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)

    def update(self, ctx: TermContext) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class ModelGuide(nn.Module):
    """Pairs a user's model and guide functions with the ``nn.Module``s they use."""

    def __init__(self, model, guide, *modules: nn.Module):
        super().__init__()
        self._model, self._guide = model, guide
        self.nets = nn.ModuleList(modules)

    def model(self, *args, **kwargs):
        return self._model(*args, **kwargs)

    def guide(self, *args, **kwargs):
        return self._guide(*args, **kwargs)


class _SVIObjective(nn.Module):
    """Puts the objective inside ``forward`` so Fabric's device/precision/DDP wrappers apply."""

    def __init__(self, pair: nn.Module, objective: ELBO, critics: Iterable[nn.Module]):
        super().__init__()
        self.pair = pair
        self.critics = nn.ModuleList(critics)
        self.objective = objective

    def forward(self, batch: tuple, step: int, dataset_size: int):
        res = self.objective(self.pair.model, self.pair.guide, *batch, step=step, dataset_size=dataset_size)
        # Only the loss goes back through Fabric's output conversion (walking the traces costs ~1 ms a step).
        self.last_parts, self.last_context = res.parts, res.context
        return res.loss


def _numpy_state_to_torch(state) -> dict:
    """numpy's legacy RNG state in a form torch.load(weights_only=True) accepts."""
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_state_from_torch(d: dict):
    return (d["name"], d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["cached"])


_ckpt_step = checkpoint_step  # (the run directory's code lives in metaprior.rundir)


class Trainer:
    """Stochastic variational inference for ``pair.model`` / ``pair.guide`` on ``data``.

    ``pair`` is an ``nn.Module`` with ``model(x)`` and ``guide(x)`` methods (see
    :class:`ModelGuide` for plain functions); ``data`` offers ``batch(step, batch_size,
    seed)``, ``num_examples`` and ``observation_shape`` (:mod:`metaprior.data`).
    ``record`` is stored in ``config.json`` (the CLI puts the method and data spec there).
    """

    def __init__(self, pair: nn.Module, objective: ELBO, data, config: TrainConfig, out: str | Path | None = None,
                 record: Mapping[str, Any] | None = None, aux_updates: Iterable[AuxiliaryUpdate] = (),
                 callbacks: Iterable[Any] = ()):
        from lightning_fabric import Fabric

        if config.device == "cuda" and not torch.cuda.is_available():  # (the JAX engine checks its own backend)
            raise ValueError(
                "device 'cuda' was asked for but torch sees no CUDA GPU (torch.cuda.is_available() is False); "
                "install a CUDA build of torch (see README) or use --device cpu"
            )
        self.pair, self.objective, self.data, self.config = pair, objective, data, config
        self.out = Path(out) if out is not None else None
        self.record = dict(record or {})
        term_aux = [t for _, t in objective.terms.values() if isinstance(t, AuxiliaryUpdate)]
        self.aux = list(dict.fromkeys([*term_aux, *aux_updates]))  # unique, in order
        critics = [t for _, t in objective.terms.values() if isinstance(t, nn.Module)]
        accel = {"auto": "auto", "cpu": "cpu", "cuda": "cuda", "mps": "mps"}[config.device]
        self.fabric = Fabric(accelerator=accel, devices=config.devices, strategy=config.strategy,
                             precision=config.precision)
        if config.devices > 1 or config.strategy != "auto":
            self.fabric.launch()
        self.step = 0
        self._svi = _SVIObjective(pair, objective, list(dict.fromkeys([*critics, *self.aux])))
        self._param_sites: dict[str, torch.Tensor] = {}
        self._setup_done = False
        self._acc: dict[str, float] = {}
        self._acc_n = 0
        self.last_metrics: dict[str, float] = {}
        self.last_validation: dict[str, float] = {}
        if config.threads:
            torch.set_num_threads(int(config.threads))
        if config.epochs:
            per_epoch = int(data.num_examples) // int(config.batch_size)
            if per_epoch < 1:
                raise ValueError(f"batch_size {config.batch_size} exceeds the {data.num_examples} training examples")
            config.steps = int(config.epochs) * per_epoch
        self.callbacks = list(callbacks)
        if config.val_every and not any(hasattr(c, "every") and hasattr(c, "observe") for c in self.callbacks):
            from ..data.splits import validation_observations
            from .validation import Validation

            self.callbacks.append(Validation(validation_observations(data), config.val_every, config.val_metric,
                                             config.val_samples, config.early_stopping, seed=config.seed))

    # -- set-up --------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.config
        module = self._svi
        batch = self._batch(0)
        module.to(self.fabric.device)
        # Discover pyro.param sites declared inside the programs (the user may not use nn.Modules).
        with poutine.trace(param_only=True) as tr, torch.no_grad():
            self.pair.guide(*batch)
            poutine.replay(self.pair.model, trace=poutine.trace(self.pair.guide).get_trace(*batch))(*batch)
        own = {id(p) for p in self.pair.parameters()}
        for name, site in tr.trace.nodes.items():
            u = site["value"].unconstrained()
            if id(u) not in own:
                self._param_sites[name] = u
        params = [*self.pair.parameters(), *self._param_sites.values()]
        if not params:
            raise TrainingError("the model and guide have no parameters to train")
        from .optim import build_optimizer, build_scheduler

        opt = build_optimizer(params, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
        sched = build_scheduler(opt, cfg.lr_schedule, cfg.steps)
        plateau = isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau)
        self._sched, self._plateau = (None, sched) if plateau else (sched, None)
        self._module, self._opt = self.fabric.setup(module, opt)
        self._aux_opts = [self.fabric.setup_optimizers(a.configure_optimizer()) for a in self.aux]
        self._setup_done = True

    def _batch(self, step: int) -> tuple[torch.Tensor, ...]:
        """The step's batch as a tuple of tensors on the device: ``data.batch`` may return one array
        (passed as ``model(x)``) or a tuple of arrays (passed as ``model(x, y, ...)``, e.g. labels)."""
        b = self.data.batch(step, self.config.batch_size, self.config.seed)
        parts = b if isinstance(b, tuple) else (b,)
        return tuple(torch.as_tensor(np.ascontiguousarray(a)).to(self.fabric.device) for a in parts)

    # -- checkpoints -----------------------------------------------------------------------
    def _state(self) -> dict:
        return {
            "step": self.step,
            "pair": self.pair,
            "optimizer": self._opt,
            "aux": {str(i): a.state_dict() for i, a in enumerate(self.aux)},
            "aux_optimizers": {str(i): o.state_dict() for i, o in enumerate(self._aux_opts)},
            "param_sites": {k: v.detach().clone() for k, v in self._param_sites.items()},
            "accumulator": {"values": dict(self._acc), "n": self._acc_n},
            "scheduler": (self._sched or self._plateau).state_dict() if (self._sched or self._plateau) else {},
            "callbacks": {str(i): c.state_dict() for i, c in enumerate(self.callbacks) if hasattr(c, "state_dict")},
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": _numpy_state_to_torch(np.random.get_state()),
                "python": random.getstate(),
            },
        }

    def save_checkpoint(self, name: str | None = None) -> Path:
        """Write ``checkpoints/step_NNNNNNN.ckpt`` (keeping the newest ``keep_checkpoints``), or ``name``
        (e.g. ``best.ckpt``, kept apart from the rotation)."""
        # Fabric's conversion of modules/optimizers to state dicts, then one atomic write in checkpoints/
        # (fabric.save's fsspec transaction stages the file in $TMPDIR, where a kill leaves it behind).
        strategy = self.fabric.strategy
        state = {k: (strategy.get_module_state_dict(v) if isinstance(v, nn.Module)
                     else strategy.get_optimizer_state(v) if isinstance(v, torch.optim.Optimizer) else v)
                 for k, v in self._state().items()}
        path = self.out / "checkpoints" / (name or f"step_{self.step:07d}.ckpt")
        if self.fabric.is_global_zero:
            buf = io.BytesIO()
            torch.save(state, buf)
            if name is None:
                path = self._run.save_checkpoint(self.step, buf.getvalue(), self.config.keep_checkpoints)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_bytes(path, buf.getvalue())
        self.fabric.barrier()
        return path

    def load_checkpoint(self, path: Path) -> None:
        state = {"pair": self.pair, "optimizer": self._opt}
        try:
            rest = self.fabric.load(path, state)
            self.step = int(rest["step"])
            for i, (a, o) in enumerate(zip(self.aux, self._aux_opts)):
                a.load_state_dict(rest["aux"][str(i)])
                o.load_state_dict(rest["aux_optimizers"][str(i)])
            with torch.no_grad():
                for k, v in rest["param_sites"].items():
                    self._param_sites[k].copy_(v)
            rng = rest["rng"]
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            np.random.set_state(_numpy_state_from_torch(rng["numpy"]))
            random.setstate(rng["python"])
            self._acc = dict(rest["accumulator"]["values"])
            self._acc_n = int(rest["accumulator"]["n"])
            if rest.get("scheduler") and (self._sched or self._plateau):
                (self._sched or self._plateau).load_state_dict(rest["scheduler"])
            for i, c in enumerate(self.callbacks):
                if str(i) in rest.get("callbacks", {}):
                    c.load_state_dict(rest["callbacks"][str(i)])
        except Exception as e:  # noqa: BLE001 -- any failure means the file is unusable
            older = [p for p in checkpoints(self.out) if _ckpt_step(p) < _ckpt_step(path)]
            hint = f"delete it to resume from {older[-1].name}" if older else "start afresh without --resume"
            why = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
            raise CheckpointError(f"cannot resume from checkpoint {path} (unreadable or incomplete: "
                                  f"{type(e).__name__}: {why}); {hint}") from e

    # -- the run directory -------------------------------------------------------------------
    def _config_record(self) -> dict:
        return {**self.record, "train": asdict(self.config), "versions": versions()}

    def _prepare_out(self, resume: bool) -> Path | None:
        if self.out is None:
            if resume:
                raise CheckpointError("resume needs a run directory (out=...)")
            return None
        # lock, clean temp files, refuse (leaving the directory as it was) or write config.json + an empty log
        self._run = RunDir(self.out, writer=self.fabric.is_global_zero)
        return self._run.open(resume, self._config_record())

    def _truncate_metrics(self) -> None:
        """Rows after the checkpoint go (see :meth:`RunDir.rewind_metrics`; validation rows at its step stay);
        a finished run keeps its final row, and one whose final row was lost gets it back from the accumulator."""
        kept = self._run.rewind_metrics(self.step, self._acc_n, self.config.steps,
                                        keep_at_step=lambda row: "val_metric" in row)
        train_rows = [r for r in kept if "val_metric" not in r]
        if train_rows:
            self.last_metrics = train_rows[-1]
        self._final_row_missing = (self.step >= self.config.steps and self._acc_n > 0
                                   and not (train_rows and train_rows[-1]["step"] == self.step))

    def _log(self, fh) -> None:
        if not self._acc_n:
            return
        row = {"step": self.step, **{k: v / self._acc_n for k, v in self._acc.items()}}
        row["wall_s"] = round(time.time() - self._t0, 3)
        self.last_metrics = row
        if fh is not None:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
        self._acc, self._acc_n = {}, 0

    # -- training ----------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict[str, float]:
        """Train to ``config.steps`` (continuing a checkpointed run when ``resume``); returns the last logged row."""
        cfg = self.config
        self._final_row_missing = False
        pyro.set_rng_seed(cfg.seed)
        with pyro.validation_enabled(cfg.validate):
            if not self._setup_done:
                self._setup()  # a batch size the data cannot give is refused before the run directory is touched
            ckpt = self._prepare_out(resume)
            try:
                if ckpt is not None:
                    self.load_checkpoint(ckpt)
                    self._truncate_metrics()
                self._t0 = time.time()
                return self._loop()
            finally:
                if self.out is not None:
                    self._run.close()

    def _loop(self) -> dict[str, float]:
        from tqdm.auto import tqdm

        cfg, data = self.config, self.data
        n_data = int(data.num_examples)
        fh = self._run.metrics_log() if self.out is not None else None  # None on the non-zero ranks
        if cfg.logger != "none":  # TensorBoard / CSV mirror of the rows (metaprior.loggers)
            from ..loggers import attach
            fh = attach(self, fh)
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not cfg.progress or not self.fabric.is_global_zero,
                   desc="train", dynamic_ncols=True, leave=False)
        last_good = checkpoints(self.out)[-1] if self.out is not None and checkpoints(self.out) else None
        try:
            if self._final_row_missing:  # a finished run stopped between its final checkpoint and final row
                self._acc = {k: float(v) for k, v in self._acc.items()}
                self._log(fh)
            while self.step < cfg.steps and not any(getattr(c, "stopped", False) for c in self.callbacks):
                batch = self._batch(self.step)
                loss = self._module(batch, self.step, n_data)
                parts, ctx = self._svi.last_parts, self._svi.last_context
                if not torch.isfinite(loss):
                    try:
                        check_finite(parts, self.step)
                        raise NonFiniteLoss(self.step, "loss", {k: float(v) for k, v in parts.items()})
                    except NonFiniteLoss as e:
                        where = (f"; the last good checkpoint is {last_good}" if last_good else
                                 "; no checkpoint was written yet (the same command starts the run again)")
                        raise TrainingError(f"{e}{where}. Lower the learning rate, check the data, or enable grad_clip") from e
                self._opt.zero_grad(set_to_none=True)
                self.fabric.backward(loss)
                if cfg.grad_clip > 0:
                    self.fabric.clip_gradients(self._module, self._opt, max_norm=cfg.grad_clip)
                self._opt.step()
                if self._sched is not None:
                    self._sched.step()
                for aux, opt in zip(self.aux, self._aux_opts):
                    opt.zero_grad(set_to_none=True)
                    out = aux.update(ctx)
                    self.fabric.backward(out["loss"])
                    opt.step()
                    for k, v in out.items():
                        parts[f"{type(aux).__name__.lower()}_{k}" if k == "loss" else k] = v.detach()
                for k, v in self.objective.weights(self.step).items():
                    parts[k] = v
                self.step += 1
                for k, v in parts.items():
                    self._acc[k] = self._acc.get(k, 0.0) + v  # tensors stay on device until logged
                self._acc_n += 1
                bar.update(1)
                on_grid = self.step % cfg.log_every == 0
                if on_grid or self.step == cfg.steps:
                    self._acc = {k: float(v) for k, v in self._acc.items()}
                # A checkpoint holds the accumulator of the unlogged steps since the last row on the
                # log grid, so the final off-grid row of a stopped run is dropped and re-averaged on resume.
                if on_grid:
                    self._log(fh)
                stop = False
                for c in self.callbacks:  # validation (before this step's checkpoint, which then holds its state)
                    stop = bool(c.after_step(self, fh)) or stop
                if stop and not on_grid:
                    self._acc = {k: float(v) for k, v in self._acc.items()}
                    self._log(fh)
                if self.out is not None and (self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps or stop):
                    self._acc = {k: float(v) for k, v in self._acc.items()}
                    last_good = self.save_checkpoint()
                if not on_grid and self.step == cfg.steps and not stop:
                    self._log(fh)
                if (on_grid or self.step == cfg.steps) and self.last_metrics:
                    m = self.last_metrics
                    bar.set_postfix(loss=f"{m['loss']:.2f}", R=f"{m['rate']:.2f}", D=f"{m['distortion']:.2f}")
        except DiskFull as e:
            kept = f"checkpoints up to {last_good.name}" if last_good else "no checkpoint yet"
            raise TrainingError(f"{e}. The run in {self.out} is intact ({kept}, metrics rows up to the last one "
                                f"written): free at least {e.needed:,} bytes there and {self._run.resume_hint()}") from e
        finally:
            bar.close()
            if fh is not None:
                fh.close()
        return self.last_metrics
