"""Training logs for TensorBoard (or CSV) through Lightning Fabric's loggers, beside ``metrics.jsonl``.

Both engines use it: the torch trainer (:func:`attach`, which adds the plot images) and the
NumPyro/JAX SVAE engine (:class:`MirroredLog` of :func:`make_logger`, scalars only).

``metrics.jsonl`` stays the run's source of truth; a logger mirrors it. Every row written there
(training rows: loss, elbo, rate, distortion, each regularizer term and each weight by name;
validation rows) goes to ``logger.log_metrics(row, step=row["step"])`` with its numeric entries,
so the scalars in TensorBoard are exactly the file's numbers. With the TensorBoard logger the
run's plots (reconstructions, prior samples, latent traversals; :mod:`metaprior.plots`) are also
logged as images at every checkpoint step (:class:`PlotImages`), drawn with the global RNG states
saved and restored, so a logged run trains exactly as an unlogged one.

* ``logger="tensorboard"``: :class:`lightning_fabric.loggers.TensorBoardLogger`, event files in
  ``out/logs/tensorboard/`` (``tensorboard --logdir out/logs``). Needs the optional extra
  ``pip install -e ".[tensorboard]"`` (the ``tensorboard`` package).
* ``logger="csv"``: :class:`lightning_fabric.loggers.CSVLogger`, ``out/logs/csv/metrics.csv``.

The logger's files are rebuilt from ``metrics.jsonl`` when training starts, so after a resume
(the file already cut back to the checkpoint) they hold no rows of the interrupted part twice;
images logged before the interruption are not redrawn.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Mapping

LOGGERS = ("none", "tensorboard", "csv")
TENSORBOARD_INSTALL = 'pip install -e ".[tensorboard]"'


def tensorboard_available() -> bool:
    from lightning_fabric.loggers.tensorboard import _TENSORBOARD_AVAILABLE, _TENSORBOARDX_AVAILABLE

    return bool(_TENSORBOARD_AVAILABLE) or bool(_TENSORBOARDX_AVAILABLE)


def check_logger(kind: str) -> None:
    """Raise ValueError for an unknown logger name or a TensorBoard logger without the package."""
    if kind not in LOGGERS:
        raise ValueError(f"logger must be one of {', '.join(LOGGERS)}, got {kind!r}")
    if kind == "tensorboard" and not tensorboard_available():
        raise ValueError(f"logger=tensorboard needs the tensorboard package: {TENSORBOARD_INSTALL} "
                         "(or pip install tensorboard); logger=csv needs nothing extra")


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of a metrics row except ``step`` (strings such as ``val_metric`` are dropped)."""
    return {k: float(v) for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def make_logger(kind: str, out: Path | None):
    """The Fabric logger for ``kind`` writing under ``out/logs`` (None for ``"none"`` or no run directory).

    Earlier files of this logger are removed and the rows already in ``out/metrics.jsonl`` (none in
    a new run; those up to the checkpoint after a resume) are logged again."""
    check_logger(kind)
    if kind == "none" or out is None:
        return None
    root = Path(out) / "logs"
    if kind == "tensorboard":
        from lightning_fabric.loggers import TensorBoardLogger

        logger = TensorBoardLogger(root_dir=root, name="tensorboard", version="", default_hp_metric=False)
        stale = list(Path(logger.log_dir).glob("events.out.tfevents.*"))
    else:
        from lightning_fabric.loggers import CSVLogger

        logger = CSVLogger(root_dir=root, name="csv", version="")
        stale = [Path(logger.log_dir) / "metrics.csv"]
    for f in stale:  # files this module wrote; their rows come back from metrics.jsonl below
        f.unlink(missing_ok=True)
    metrics = Path(out) / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                logger.log_metrics(scalars(row), step=int(row["step"]))
    return logger


class MirroredLog:
    """A metrics log (``write(line)`` of whole JSON rows, ``flush``, ``close``) that also sends each
    row to a Fabric logger; everything else is the wrapped log's."""

    def __init__(self, log, logger):
        self._log, self.logger = log, logger

    def write(self, text: str) -> None:
        self._log.write(text)
        for line in text.splitlines():
            if line.strip():
                row = json.loads(line)
                self.logger.log_metrics(scalars(row), step=int(row["step"]))

    def append(self, row: Mapping[str, Any]) -> None:
        self.write(json.dumps(dict(row)) + "\n")

    def flush(self) -> None:
        self._log.flush()

    def close(self) -> None:
        try:
            self._log.close()
        finally:
            self.logger.finalize("success")

    def __getattr__(self, name):
        return getattr(self._log, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def mosaic(images, ncol: int, pad: int = 1):
    """Images [N, C, H, W] in [0, 1] as one array [C, rows (H + pad), ncol (W + pad)] (white gaps)."""
    import numpy as np

    x = np.clip(np.asarray(images, dtype=np.float32), 0.0, 1.0)
    n, c, h, w = x.shape
    nrow = -(-n // ncol)
    out = np.ones((c, nrow * (h + pad) - pad, ncol * (w + pad) - pad), dtype=np.float32)
    for i in range(n):
        r, k = divmod(i, ncol)
        out[:, r * (h + pad):r * (h + pad) + h, k * (w + pad):k * (w + pad) + w] = x[i]
    return out


class PlotImages:
    """Trainer callback: at every checkpoint step (and the last), the run's plots as TensorBoard images.

    The image content of :func:`metaprior.plots.reconstructions` (the first 8 held-out observations
    over their reconstructions), :func:`~metaprior.plots.prior_samples` (64) and
    :func:`~metaprior.plots.latent_traversals` (one row per latent dimension), computed in eval mode
    by the same functions, laid out as plain mosaics (no matplotlib). The global RNG states (torch,
    numpy, Python: what Pyro draws from) are saved before and restored after, so the training
    trajectory is the one of a run without images. Pairs without ``encode``/``decode`` or with
    observations that are not images are skipped with one note.
    """

    def __init__(self, logger, every: int, total: int, seed: int = 0, n: int = 8):
        self.logger, self.every, self.total, self.seed, self.n = logger, int(every), int(total), seed, n
        self._noted: set[str] = set()

    def after_step(self, trainer, fh) -> bool:
        step = trainer.step
        if step % self.every and step != self.total:
            return False
        import pyro
        import torch

        from .plots.figures import _is_image, prior_sample_batch, reconstruction_batch, traversal_batch

        pair, shape = trainer.pair, tuple(getattr(trainer.data, "observation_shape", ()))
        if not (hasattr(pair, "encode") and hasattr(pair, "decode")) or not _is_image(shape):
            self._note(f"{type(pair).__name__} with observations {shape}: no encode/decode or not images; "
                       "no plot images are logged")
            return False
        rng = pyro.util.get_rng_state()
        was_training = pair.training
        pair.eval()
        try:
            dev = next(pair.parameters()).device
            x = torch.as_tensor(trainer.data.test_observations(self.n, self.seed)).to(dev)
            xs, xr = reconstruction_batch(pair, x, self.n)
            rows, _, _ = traversal_batch(pair, x)
            grids = {"reconstructions": (torch.cat([xs, xr]), len(xs)),
                     "samples": (prior_sample_batch(pair, 64, self.seed), 8),
                     "traversals": (torch.cat(rows), len(rows[0]))}
            for name, (images, ncol) in grids.items():
                self.logger.experiment.add_image(f"plots/{name}", mosaic(images.detach().cpu(), ncol), step,
                                                 dataformats="CHW")
            self.logger.experiment.flush()
        finally:
            pair.train(was_training)
            pyro.util.set_rng_state(rng)
        return False

    def _note(self, msg: str) -> None:
        if not self._noted:
            self._noted.add(msg)
            print(f"metaprior: {msg}", file=sys.stderr)


def attach(trainer, fh):
    """Wrap the trainer's metrics log ``fh`` for ``trainer.config.logger`` (the one call the trainer makes).

    Returns the log to write to: ``fh`` itself when no logger is set or on non-zero ranks (``fh`` None)."""
    kind = getattr(trainer.config, "logger", "none")
    if fh is None or kind == "none":
        check_logger(kind)
        return fh
    logger = make_logger(kind, trainer.out)
    if kind == "tensorboard" and not any(isinstance(c, PlotImages) for c in trainer.callbacks):
        trainer.callbacks.append(PlotImages(logger, trainer.config.checkpoint_every, trainer.config.steps,
                                            seed=trainer.config.seed))
    return MirroredLog(fh, logger)


__all__ = ["LOGGERS", "TENSORBOARD_INSTALL", "check_logger", "make_logger", "MirroredLog", "PlotImages", "attach",
           "mosaic", "scalars", "tensorboard_available"]
