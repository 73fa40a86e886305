"""Training loop of the JAX SVAE models, writing the same run directory as the Pyro trainer.

A *spec* (e.g. :class:`~metaprior.svae.gmm.GMMSVAE`, :class:`~metaprior.svae.slds.SLDSSVAE`)
is a frozen, hashable dataclass with ``init_state(key, x) -> state`` (``x``: up to 1024 training examples, for data-dependent initialisation),
``train_step(state, x, key, lr, num_data) -> (state, terms)`` and ``metric_names``; optionally
``refit_step`` and ``refit(state, x) -> state``, applied once before step ``refit_step`` to the
same data sample as ``init_state``, and ``constant_state() -> dict``, the state entries its
settings fix (the prior), which the jitted step receives as constants (:func:`carried_state`). One
jit-compiled function runs a step and adds its terms to an on-device accumulator, so a step
is one dispatch (see ``../shared/PITFALLS.md``: jit the update).

Run directory (the contract of :mod:`metaprior.inference.trainer`)::

    out/config.json       {**record, "train": asdict(config), "versions": {..., "jax", "numpyro"}}
    out/metrics.jsonl     rows {"step", "loss", "elbo", "rate", "distortion", ..., "wall_s"},
                          each the mean over the steps since the previous row
    out/checkpoints/      step_NNNNNNN.ckpt: a pickled dict of numpy arrays (state, the
                          accumulator of not-yet-logged steps, the step), written atomically

Batches are ``data.batch(step, batch_size, seed)`` and the step's random key is
``fold_in(PRNGKey(seed), step)``: both are pure functions of the step, so a resumed run ends
exactly where an uninterrupted one does.
"""
from __future__ import annotations

import functools
import json
import os
import pickle
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metaprior.svae.nets import to_numpy

__all__ = ["SVAEResult", "train", "load_checkpoint", "save_checkpoint", "latest_state", "constant_state",
           "carried_state", "full_state"]

CKPT_FORMAT = "metaprior-svae/1"


class SVAEResult(NamedTuple):
    state: Any
    step: int
    last_metrics: dict


def step_fn(spec, state, acc, x, key, lr, num_data):
    """One training step, un-jitted: ``spec.train_step`` plus the accumulation of its terms into
    ``acc``. Entries of :func:`constant_state` that ``state`` lacks (see :func:`carried_state`)
    enter as compile-time constants and are left out of the result."""
    missing = {k: v for k, v in constant_state(spec).items() if k not in state}
    new, terms = spec.train_step({**state, **missing}, x, key, lr, num_data)
    vec = jnp.stack([jnp.asarray(terms[k], jnp.float32) for k in spec.metric_names])
    return {k: v for k, v in new.items() if k not in missing}, acc + vec


# The jitted step: ``state`` and ``acc`` are donated (their buffers are reused for the outputs,
# so the caller must not use them afterwards, and no two leaves may share a buffer: see _own).
_step = jax.jit(step_fn, static_argnums=0, donate_argnums=(1, 2))


@functools.lru_cache(maxsize=64)
def constant_state(spec) -> dict:
    """The state entries a spec rebuilds from its settings alone (``spec.constant_state()``, e.g.
    the prior's natural parameters) as numpy arrays; ``{}`` when the spec defines none."""
    make = getattr(spec, "constant_state", None)
    return {} if make is None else jax.tree_util.tree_map(np.asarray, dict(make()))


def carried_state(spec, state) -> dict:
    """``state`` without the entries that equal :func:`constant_state` exactly (same structure,
    dtypes and values): :func:`_step` rebuilds those inside the compiled step, so they are
    neither passed in nor returned (each array in and out of a jitted call costs a few
    microseconds on CPU, comparable to a whole small step). A state whose prior was changed by
    hand keeps it. :func:`full_state` undoes this."""
    out = dict(state)
    for k, const in constant_state(spec).items():
        if k in out and _same_tree(out[k], const):
            del out[k]
    return out


def full_state(spec, carried) -> dict:
    """:func:`carried_state` undone: the constant entries added back (as JAX arrays)."""
    missing = {k: v for k, v in constant_state(spec).items() if k not in carried}
    return {**carried, **jax.tree_util.tree_map(jnp.asarray, missing)}


def _same_tree(a, b) -> bool:
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    return ta == tb and all(np.asarray(u).dtype == np.asarray(v).dtype and np.array_equal(np.asarray(u), np.asarray(v))
                            for u, v in zip(la, lb))


def _own(tree):
    """Fresh copies of every array of ``tree``, so that it can be donated to :func:`_step` (an
    initial state may hold one array in two places, e.g. the prior and the starting globals;
    and the caller's arrays stay valid)."""
    return jax.tree_util.tree_map(lambda a: jnp.array(a, copy=True), tree)


def _errors():
    from metaprior.inference.trainer import CheckpointError, TrainingError, checkpoints

    return TrainingError, CheckpointError, checkpoints


def save_checkpoint(out: Path, step: int, state, acc, acc_n: int, keep: int) -> Path:
    """Pickle ``{"format", "step", "state", "acc", "acc_n"}`` to ``out/checkpoints/step_NNNNNNN.ckpt``."""
    _, _, checkpoints = _errors()
    d = Path(out) / "checkpoints"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"step_{step:07d}.ckpt"
    tmp = d / f".{path.name}.tmp"
    blob = {"format": CKPT_FORMAT, "step": int(step), "state": to_numpy(state),
            "acc": np.asarray(acc), "acc_n": int(acc_n)}
    with open(tmp, "wb") as fh:
        pickle.dump(blob, fh, protocol=pickle.HIGHEST_PROTOCOL)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    for old in checkpoints(out)[:-keep]:
        old.unlink()
    return path


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; arrays come back as ``jax`` arrays."""
    _, CheckpointError, _ = _errors()
    try:
        with open(path, "rb") as fh:
            blob = pickle.load(fh)
        if blob.get("format") != CKPT_FORMAT:
            raise ValueError(f"unknown checkpoint format {blob.get('format')!r}")
    except Exception as e:  # noqa: BLE001 -- any failure means the file is unusable
        raise CheckpointError(f"cannot read checkpoint {path} ({type(e).__name__}: {e}); delete it to resume "
                              "from an older one, or start afresh without --resume") from e
    blob["state"] = jax.tree_util.tree_map(jnp.asarray, blob["state"])
    return blob


def latest_state(run_dir) -> tuple[Any, int]:
    """``(state, step)`` of the newest checkpoint of a run directory."""
    _, _, checkpoints = _errors()
    ckpts = checkpoints(Path(run_dir))
    if not ckpts:
        raise FileNotFoundError(f"{Path(run_dir) / 'checkpoints'} holds no checkpoint; the run has not saved any yet")
    blob = load_checkpoint(ckpts[-1])
    return blob["state"], blob["step"]


def _versions() -> dict:
    from metaprior.inference.trainer import versions

    import numpyro

    return {**versions(), "jax": jax.__version__, "numpyro": numpyro.__version__}


def _truncate_metrics(out: Path, step: int, log_every: int) -> None:
    path = out / "metrics.jsonl"
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            s = json.loads(line)["step"]
        except (ValueError, KeyError):
            break  # a torn last line from a crash
        if s < step or (s == step and s % log_every == 0):
            keep.append(line)
    path.write_text("".join(k + "\n" for k in keep))


def train(spec, data, config, out=None, record: Mapping[str, Any] | None = None, resume: bool = False,
          state=None) -> SVAEResult:
    """Train ``spec`` on ``data`` for ``config.steps`` steps (a ``TrainConfig``-like object).

    Uses ``config.steps, batch_size, lr, seed, log_every, checkpoint_every, keep_checkpoints,
    progress``. With ``out`` the run directory is written (and, with ``resume``, continued
    from its newest checkpoint); without it training happens in memory. ``state`` overrides
    the initial state (``spec.init_state(PRNGKey(seed), sample)`` otherwise).
    """
    TrainingError, CheckpointError, checkpoints = _errors()
    cfg = config
    out = Path(out) if out is not None else None
    num_data = int(data.num_examples)
    if cfg.batch_size > num_data:
        raise ValueError(f"batch_size {cfg.batch_size} exceeds the {num_data} training examples; lower batch_size")
    names = tuple(spec.metric_names)
    acc = jnp.zeros((len(names),), jnp.float32)
    acc_n, step = 0, 0
    if resume:
        if out is None:
            raise CheckpointError("resume needs a run directory (out=...)")
        ckpts = checkpoints(out)
        if not ckpts:
            raise CheckpointError(f"no checkpoint to resume from in {out / 'checkpoints'}; train without --resume")
        blob = load_checkpoint(ckpts[-1])
        state, step, acc, acc_n = blob["state"], blob["step"], jnp.asarray(blob["acc"]), blob["acc_n"]
        _truncate_metrics(out, step, cfg.log_every)
    else:
        if out is not None:
            if out.exists() and ((out / "config.json").exists() or checkpoints(out)):
                raise TrainingError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
            out.mkdir(parents=True, exist_ok=True)
            rec = {**dict(record or {}), "train": asdict(cfg), "versions": _versions()}
            (out / "config.json").write_text(json.dumps(rec, indent=2, default=str) + "\n")
            (out / "metrics.jsonl").write_text("")
        if state is None:
            x0 = np.ascontiguousarray(data.batch(0, min(num_data, max(cfg.batch_size, 1024)), cfg.seed), dtype=np.float32)
            state = spec.init_state(jax.random.PRNGKey(cfg.seed), x0)
    state, acc = _own(carried_state(spec, state)), _own(acc)
    base_key = jax.random.PRNGKey(cfg.seed)
    lr, n_arr = jnp.float32(cfg.lr), jnp.float32(num_data)
    last: dict = {}
    last_good = checkpoints(out)[-1] if out is not None and checkpoints(out) else None
    fh = open(out / "metrics.jsonl", "a") if out is not None else None
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc="train (svae)", dynamic_ncols=True, leave=False)
    t0 = time.time()

    def check(acc_np):
        if not np.all(np.isfinite(acc_np)):
            bad = {k: float(v) for k, v in zip(names, acc_np)}
            where = f"; the last good checkpoint is {last_good}" if last_good else "; no checkpoint was written yet"
            raise TrainingError(f"non-finite loss terms {bad} between steps {step - acc_n} and {step}{where}. "
                                "Lower lr or natgrad_step, or check the data")

    refit_at = int(getattr(spec, "refit_step", 0) or 0)
    try:
        while step < cfg.steps:
            if refit_at and step == refit_at:  # a one-off re-initialization (e.g. the SLDS dynamics)
                sample = np.ascontiguousarray(data.batch(0, min(num_data, max(cfg.batch_size, 1024)), cfg.seed),
                                              dtype=np.float32)
                state = _own(carried_state(spec, spec.refit(full_state(spec, state), sample)))
            x = np.ascontiguousarray(data.batch(step, cfg.batch_size, cfg.seed), dtype=np.float32)
            key = jax.random.fold_in(base_key, step)
            state, acc = _step(spec, state, acc, x, key, lr, n_arr)
            step += 1
            acc_n += 1
            if bar is not None:
                bar.update(1)
            on_grid = step % cfg.log_every == 0
            ckpt_now = out is not None and (step % cfg.checkpoint_every == 0 or step == cfg.steps)
            if on_grid or ckpt_now or step == cfg.steps:
                acc_np = np.array(acc)   # a copy: acc's buffer is donated to the next step
                check(acc_np)
            if on_grid:
                last = _row(step, names, acc_np, acc_n, t0)
                if fh is not None:
                    fh.write(json.dumps(last) + "\n")
                    fh.flush()
                acc, acc_n = jnp.zeros_like(acc), 0
                if bar is not None:
                    bar.set_postfix(loss=f"{last['loss']:.3f}", R=f"{last['rate']:.3f}", D=f"{last['distortion']:.3f}")
            # A checkpoint holds the accumulator of the steps since the last row (as the Pyro trainer).
            if ckpt_now:
                last_good = save_checkpoint(out, step, full_state(spec, state), acc, acc_n, cfg.keep_checkpoints)
            if step == cfg.steps and acc_n:
                last = _row(step, names, np.asarray(acc), acc_n, t0)
                if fh is not None:
                    fh.write(json.dumps(last) + "\n")
    finally:
        if bar is not None:
            bar.close()
        if fh is not None:
            fh.close()
    return SVAEResult(full_state(spec, state), step, last)


def _row(step, names, acc_np, n, t0) -> dict:
    row = {"step": int(step), **{k: float(v) / n for k, v in zip(names, acc_np)}}
    row["wall_s"] = round(time.time() - t0, 3)
    return row
