"""Plot helpers (matplotlib, Agg backend, no screen needed)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _is_image(shape: Sequence[int]) -> bool:
    return len(shape) == 3 and shape[0] in (1, 3) and shape[1] > 1 and shape[2] > 1


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def image_grid(images, path, ncol: int | None = None, title: str | None = None,
               row_labels: Sequence[str] | None = None) -> Path:
    """Images [N, C, H, W] (values in [0, 1]) as a grid with ``ncol`` columns."""
    images = np.asarray(images.detach().cpu() if torch.is_tensor(images) else images, dtype=np.float32)
    n = images.shape[0]
    ncol = ncol or int(np.ceil(np.sqrt(n)))
    nrow = int(np.ceil(n / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(ncol * 0.9, nrow * 0.9 + (0.4 if title else 0)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([]), ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
        if i < n:
            img = images[i]
            img = img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))
            ax.imshow(np.clip(img, 0, 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    if row_labels is not None:
        for r, label in enumerate(row_labels[:nrow]):
            axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _scatter(points: dict[str, np.ndarray], path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for (label, p), marker in zip(points.items(), ("o", "x", ".")):
        p = p.reshape(len(p), -1)
        ax.scatter(p[:, 0], p[:, 1] if p.shape[1] > 1 else np.zeros(len(p)), s=6, marker=marker, label=label, alpha=0.7)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


@torch.no_grad()
def reconstructions(pair, x: torch.Tensor, path, n: int = 8) -> Path:
    """Inputs (top row) and the decoder means at the encoder means (bottom row)."""
    x = x[:n]
    loc, _ = pair.encode(x)
    xr = pair.decode(loc)
    if not _is_image(x.shape[1:]):
        return _scatter({"data": x.cpu().numpy(), "reconstruction": xr.cpu().numpy()}, path, "reconstructions")
    return image_grid(torch.cat([x, xr]), path, ncol=len(x), title="data (top) and reconstructions (bottom)")


@torch.no_grad()
def prior_samples(pair, path, n: int = 64, seed: int = 0) -> Path:
    """Decoder means at z ~ p(z) = N(0, I)."""
    g = torch.Generator().manual_seed(seed)
    dev = next(pair.parameters()).device
    z = torch.randn(n, pair.latent_dim, generator=g).to(dev)
    xs = pair.decode(z)
    if not _is_image(xs.shape[1:]):
        return _scatter({"samples": xs.cpu().numpy()}, path, "decoded prior samples")
    return image_grid(xs, path, title="decoded prior samples")


@torch.no_grad()
def latent_traversals(pair, x: torch.Tensor, path, values: Sequence[float] = tuple(np.linspace(-2, 2, 9)),
                      dims: Sequence[int] | None = None) -> Path:
    """One row per latent dimension: the encoder mean of ``x[0]`` with that dimension set to each of ``values``
    (the survey's Fig. 4). Rows are sorted by the dimension's mean KL on ``x`` (most informative first)."""
    loc, scale = pair.encode(x)
    kl = (0.5 * (loc**2 + scale**2 - 1) - torch.log(scale)).mean(0)
    dims = list(dims) if dims is not None else torch.argsort(kl, descending=True).tolist()
    base = loc[:1]
    rows = []
    for d in dims:
        z = base.repeat(len(values), 1)
        z[:, d] = torch.as_tensor(values, dtype=z.dtype, device=z.device)
        rows.append(pair.decode(z))
    if not _is_image(rows[0].shape[1:]):
        return _scatter({f"z{d}": r.cpu().numpy() for d, r in list(zip(dims, rows))[:3]}, path, "latent traversals")
    labels = [f"z{d} KL={kl[d]:.2f}" for d in dims]
    return image_grid(torch.cat(rows), path, ncol=len(values), row_labels=labels,
                      title=f"latent traversals, z from {values[0]:g} to {values[-1]:g}")


def training_curves(metrics_path, path) -> Path:
    """Loss, rate and distortion against the step, from a run's metrics.jsonl."""
    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    steps = [r["step"] for r in rows]
    for ax, key in zip(axes, ("loss", "rate", "distortion")):
        ax.plot(steps, [r[key] for r in rows])
        ax.set_title(key + (" (nats)" if key != "loss" else " (nats / example)"), fontsize=10)
        ax.set_xlabel("step")
    fig.tight_layout()
    return _save(fig, path)
