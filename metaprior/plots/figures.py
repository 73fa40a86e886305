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


def save_figure(fig, path, dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` (its folder created; cropped to the drawn area), close it and
    return the path: the last step of every figure here, in the recipes' and experiments' plots."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def image_grid(images, path, ncol: int | None = None, title: str | None = None,
               row_labels: Sequence[str] | None = None, col_labels: Sequence[str] | None = None,
               xlabel: str | None = None) -> Path:
    """Images [N, C, H, W] (values in [0, 1]) as a grid with ``ncol`` columns; ``row_labels`` left of the rows,
    ``col_labels`` above the columns, ``xlabel`` under the grid."""
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
    if col_labels is not None:
        for c, label in enumerate(col_labels[:ncol]):
            axes[0, c].set_title(label, fontsize=8)
    if xlabel:
        fig.supxlabel(xlabel, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def _scatter(points: dict[str, np.ndarray], path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for (label, p), marker in zip(points.items(), ("o", "x", ".")):
        p = p.reshape(len(p), -1)
        ax.scatter(p[:, 0], p[:, 1] if p.shape[1] > 1 else np.zeros(len(p)), s=6, marker=marker, label=label, alpha=0.7)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


@torch.no_grad()
def reconstruction_batch(pair, x: torch.Tensor, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` inputs and the decoder means at their encoder means."""
    x = x[:n]
    loc, _ = pair.encode(x)
    return x, pair.decode(loc)


@torch.no_grad()
def reconstructions(pair, x: torch.Tensor, path, n: int = 8) -> Path:
    """Inputs (top row) and the decoder means at the encoder means (bottom row)."""
    x, xr = reconstruction_batch(pair, x, n)
    if not _is_image(x.shape[1:]):
        return _scatter({"data": x.cpu().numpy(), "reconstruction": xr.cpu().numpy()}, path, "reconstructions")
    return image_grid(torch.cat([x, xr]), path, ncol=len(x), title="data (top) and reconstructions (bottom)")


@torch.no_grad()
def prior_samples(pair, path, n: int = 64, seed: int = 0) -> Path:
    """Decoder means at z ~ p(z) (:func:`prior_sample_batch`) as a grid."""
    xs = prior_sample_batch(pair, n, seed)
    if not _is_image(xs.shape[1:]):
        return _scatter({"samples": xs.cpu().numpy()}, path, "decoded prior samples")
    return image_grid(xs, path, title="decoded prior samples")


@torch.no_grad()
def prior_sample_batch(pair, n: int = 64, seed: int = 0) -> torch.Tensor:
    """Decoder means at z ~ p(z): the model's own prior (``pair.sample_prior(n, generator)`` when it has
    one, else a draw from ``pair.prior(n, like)``: mixture, flow, categorical x normal, ...), N(0, I)
    for a pair that declares neither."""
    g = torch.Generator().manual_seed(seed)
    dev = next(pair.parameters()).device
    if hasattr(pair, "sample_prior"):
        z = pair.sample_prior(n, g).to(dev)
    elif hasattr(pair, "prior"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            z = pair.prior(n, torch.zeros((), device=dev)).sample()
    else:
        z = torch.randn(n, pair.latent_dim, generator=g).to(dev)
    return pair.decode(z)


@torch.no_grad()
def latent_traversals(pair, x: torch.Tensor, path, values: Sequence[float] = tuple(np.linspace(-2, 2, 9)),
                      dims: Sequence[int] | None = None, kl=None) -> Path:
    """One row per latent dimension: the encoder mean of ``x[0]`` with that dimension set to each of ``values``
    (the survey's Fig. 4); columns are labelled with their z value. Rows are sorted by the dimension's mean KL
    (most informative first): ``kl`` [D] when given (``metaprior plot`` passes the KL per dimension that its
    KL bars and latent scatter show, so every plot of a run names the same numbers), else the closed-form
    KL(q(z_d|x) || N(0, 1)) averaged over ``x``."""
    rows, dims, kl = traversal_batch(pair, x, values, dims, kl)
    if not _is_image(rows[0].shape[1:]):
        return _scatter({f"z{d}": r.cpu().numpy() for d, r in list(zip(dims, rows))[:3]}, path, "latent traversals")
    name = getattr(pair, "code_name", "z")
    labels = [f"{name}{d} KL={float(kl[d]):.2f}" if name == "z" else f"{name}[{d}] KL={float(kl[d]):.2f}" for d in dims]
    return image_grid(torch.cat(rows), path, ncol=len(values), row_labels=labels,
                      col_labels=[f"{v:+.1f}" for v in values], xlabel="value of the traversed dimension",
                      title="latent traversals: one dimension varied, the others at the encoder mean of one input")


@torch.no_grad()
def traversal_batch(pair, x: torch.Tensor, values: Sequence[float] = tuple(np.linspace(-2, 2, 9)),
                    dims: Sequence[int] | None = None, kl=None) -> tuple[list[torch.Tensor], list[int], torch.Tensor]:
    """The rows of :func:`latent_traversals`: per dimension (most informative first, see there) the
    decoder means [len(values), ...]; returns ``(rows, dims, kl)``."""
    loc, scale = pair.encode(x)
    if kl is None:
        kl = (0.5 * (loc**2 + scale**2 - 1) - torch.log(scale)).mean(0)
    kl = torch.as_tensor(np.asarray(kl, dtype=np.float64))
    dims = list(dims) if dims is not None else torch.argsort(kl, descending=True).tolist()
    base = loc[:1]
    rows = []
    for d in dims:
        z = base.repeat(len(values), 1)
        z[:, d] = torch.as_tensor(values, dtype=z.dtype, device=z.device)
        rows.append(pair.decode(z))
    return rows, dims, kl


def _robust_ylim(v: np.ndarray) -> tuple[float, float] | None:
    """Limits that show the values after the first tenth of training (the start-up transient clipped)."""
    v = v[np.isfinite(v)]
    if len(v) < 10:
        return None
    tail = v[len(v) // 10:]
    lo, hi = float(tail.min()), float(tail.max())
    pad = 0.08 * (hi - lo) if hi > lo else max(abs(hi) * 0.05, 1e-3)
    return lo - pad, hi + pad


def training_curves(metrics_path, path, keys: Sequence[str] = ("loss", "rate", "distortion")) -> Path:
    """Logged values against the step, one panel per key, from a run's metrics.jsonl (default: loss,
    rate and distortion; keys a run did not log are left out). The y axis shows the values after the first
    tenth of the steps (the start-up transient, often ten times larger, runs off the top, marked with an arrow
    when it does) and each panel's title states the final value."""
    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    keys = [k for k in keys if any(k in r for r in rows)] or list(keys[:1])
    fig, axes = plt.subplots(1, len(keys), figsize=(3.7 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        # rows without the key (validation rows beside training rows, see inference/validation.py) are left out
        have = [r for r in rows if key in r] or rows
        steps = [r["step"] for r in have]
        v = np.array([r.get(key, float("nan")) for r in have], dtype=np.float64)
        ax.plot(steps, v, lw=1)
        unit = {"loss": " (nats / example)", "rate": " (nats)", "distortion": " (nats)"}.get(key, "")
        final = v[np.isfinite(v)][-1] if np.isfinite(v).any() else float("nan")
        ax.set_title(f"{key}{unit}\nfinal {final:.4g} at step {steps[-1] if steps else 0}", fontsize=9)
        lim = _robust_ylim(v)
        if lim is not None:
            ax.set_ylim(*lim)
            if np.nanmax(v) > lim[1]:
                ax.annotate("start-up values above", xy=(0.02, 0.97), xycoords="axes fraction", fontsize=7,
                            va="top", color="0.4")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def rate_distortion(points: Sequence[dict], path, entropy: float | None = None,
                    title: str = "rate-distortion plane", color_key: str | None = None) -> Path:
    """Runs in the (rate, distortion) plane, in nats per example (the survey's Fig. 7a; Alemi et al. 2018, Fig. 1).

    ``points``: dicts with ``rate``, ``distortion``, ``label`` and optionally ``group`` (one
    colour per group, connected in order of rate). With the data entropy ``entropy`` = H
    the line ``D = max(H - R, 0)`` is drawn and the region below it, which no encoder /
    decoder pair can reach (``H - D <= I(x; z) <= R``), is shaded.

    With ``color_key`` (e.g. ``"usefulness"``: the survey's Fig. 7c, where runs of similar
    rate and distortion differ in how useful their representation is) each point is coloured
    and sized by ``point[color_key]``; points without that value are drawn hollow and grey.
    """
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    groups: dict[str, list[dict]] = {}
    for p in points:
        groups.setdefault(p.get("group", ""), []).append(p)
    r_max = max([p["rate"] for p in points] + [entropy or 0.0]) * 1.1 + 1e-9
    d_max = max([p["distortion"] for p in points] + [entropy or 0.0]) * 1.1 + 1e-9
    if entropy is not None:
        r = np.linspace(0.0, r_max, 200)
        bound = np.maximum(entropy - r, 0.0)
        ax.plot(r, bound, "k-", lw=1.2, label=f"D = H - R  (H = {entropy:.2f} nats)")
        ax.fill_between(r, 0.0, bound, color="0.85", label="infeasible")
    for name, ps in groups.items():
        ps = sorted(ps, key=lambda p: p["rate"])
        if color_key is None:
            ax.plot([p["rate"] for p in ps], [p["distortion"] for p in ps], "o-", ms=5, lw=0.8, label=name or None)
        elif len(ps) > 1 and name:  # connect only named groups (e.g. one method's beta sweep)
            ax.plot([p["rate"] for p in ps], [p["distortion"] for p in ps], "-", color="0.6", lw=0.8, label=name or None)
        for p in ps:
            ax.annotate(p["label"], (p["rate"], p["distortion"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if color_key is not None:
        have = [p for p in points if p.get(color_key) is not None and np.isfinite(p[color_key])]
        missing = [p for p in points if p not in have]
        if have:
            u = np.array([p[color_key] for p in have], dtype=float)
            lo, hi = float(u.min()), float(u.max())
            size = 40.0 + 260.0 * ((u - lo) / (hi - lo) if hi > lo else np.full_like(u, 0.5))
            sc = ax.scatter([p["rate"] for p in have], [p["distortion"] for p in have], c=u, s=size,
                            cmap="viridis", edgecolors="k", linewidths=0.5, zorder=3)
            fig.colorbar(sc, ax=ax, label=color_key)
        if missing:
            ax.scatter([p["rate"] for p in missing], [p["distortion"] for p in missing], s=40, facecolors="none",
                       edgecolors="0.5", zorder=3, label=f"no {color_key}")
    ax.set_xlim(0.0, r_max)
    ax.set_ylim(0.0, d_max)
    ax.set_xlabel("rate R = E KL(q(z|x) || p(z))  (nats)")
    ax.set_ylabel("distortion D = E[-log p(x|z)]  (nats)")
    ax.set_title(title, fontsize=10)
    if ax.get_legend_handles_labels()[0]:  # below the axes: never over the points
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)


def _informative_dims(codes: np.ndarray, kl: np.ndarray | None) -> list[int]:
    score = np.asarray(kl) if kl is not None else codes.var(axis=0)
    return [int(d) for d in np.argsort(-score, kind="stable")[:2]]


#: a factor or label with at most this many distinct values is drawn with a discrete legend, not a colour bar
MAX_CATEGORIES = 20


def latent_scatter(codes, values, names: Sequence[str], path, kl=None, max_points: int = 2000,
                   title: str = "latent space", code_name: str = "z") -> Path:
    """The two most informative latent dimensions, one panel per factor or label, points coloured by it.

    The survey's Fig. 1b. ``codes`` [n, D] (encoder means), ``values`` [n, k] integer factors
    or labels (None: one uncoloured panel) named by ``names``, drawn with a discrete legend (outside the
    axes) when they take at most :data:`MAX_CATEGORIES` values, else a colour bar; ``kl`` [D] ranks the
    dimensions (the mean KL of each, most informative = largest; default: the variance of
    the codes). A 1-D latent is drawn against a constant.
    """
    codes = np.asarray(codes, dtype=np.float64)[:max_points]
    dims = _informative_dims(codes, kl)
    x = codes[:, dims[0]]
    y = codes[:, dims[1]] if len(dims) > 1 else np.zeros(len(codes))
    panels = [(None, None)] if values is None else [(names[j] if j < len(names) else f"factor {j}",
                                                    np.asarray(values)[:max_points, j])
                                                   for j in range(np.asarray(values).shape[1])]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False)
    for ax, (name, v) in zip(axes[0], panels):
        if v is None:
            ax.scatter(x, y, s=4, alpha=0.6)
        else:
            levels = np.unique(v)
            if len(levels) <= MAX_CATEGORIES:  # categorical: one colour and one legend entry per value
                cmap = plt.get_cmap("tab10" if len(levels) <= 10 else "tab20")
                for i, level in enumerate(levels):
                    sel = v == level
                    ax.scatter(x[sel], y[sel], s=4, alpha=0.7, color=cmap(i), label=f"{level:g}")
                ax.legend(title=name, fontsize=7, title_fontsize=8, markerscale=3, loc="upper left",
                          bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)
            else:  # many ordered values: a colour bar
                sc = ax.scatter(x, y, c=v, s=4, alpha=0.7, cmap="viridis")
                fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.02, label=name)
            ax.set_title(f"coloured by {name}", fontsize=9)
        ax.set_xlabel(_dim(code_name, dims[0]) + (f" (KL {kl[dims[0]]:.2f})" if kl is not None else ""), fontsize=8)
        ax.set_ylabel((_dim(code_name, dims[1]) + (f" (KL {kl[dims[1]]:.2f})" if kl is not None else ""))
                      if len(dims) > 1 else "", fontsize=8)
    fig.suptitle(f"{title}: the two most informative dimensions", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _dim(code_name: str, d: int) -> str:
    """``z3`` for the default code name, ``z1[3]`` for a named site (a user's program with several latent sites)."""
    return f"z{d}" if code_name == "z" else f"{code_name}[{d}]"


def kl_bars(rate_per_dim, path, dimwise_kl_per_dim=None, code_name: str = "z") -> Path:
    """Per-dimension KL bars: E_x KL(q(z_d|x) || N(0, 1)) (the rate of dimension d under the standard-normal
    prior) and, if given, KL(q(z_d) || N(0, 1)) of the aggregate posterior (Chen et al. 2018's dimension-wise KL).
    Both are against N(0, 1), which is p(z_d) only for the standard-normal prior; the labels say so."""
    r = np.asarray(rate_per_dim, dtype=np.float64)
    d = np.arange(len(r))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(r) + 2), 3.2))
    w = 0.4 if dimwise_kl_per_dim is not None else 0.8
    ax.bar(d - (w / 2 if dimwise_kl_per_dim is not None else 0), r, width=w,
           label=f"E KL(q(z_d|x) || N(0, 1)), total {r.sum():.2f}")
    if dimwise_kl_per_dim is not None:
        k = np.asarray(dimwise_kl_per_dim, dtype=np.float64)
        ax.bar(d + w / 2, k, width=w, label=f"KL(q(z_d) || N(0, 1)), total {k.sum():.2f}")
    ax.set_xticks(d)
    ax.set_xticklabels([_dim(code_name, int(i)) for i in d], fontsize=8)
    ax.set_ylabel("nats")
    ax.set_title("KL per latent dimension", fontsize=10, pad=28 if dimwise_kl_per_dim is not None else 6)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)


def pareto_khat_histogram(khat, path, num_samples: int | None = None) -> Path:
    """Histogram of per-example Pareto k-hat of the importance weights (Yao et al. 2018), with the
    0.5 and 0.7 thresholds; k-hat of constant weights (-inf) is drawn at -1. When any example reaches 0.7
    the figure says in red that the importance-weighted estimates are unreliable."""
    k = np.maximum(np.asarray(khat, dtype=np.float64), -1.0)
    k = np.where(np.isfinite(k), k, 2.0)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(k, bins=np.linspace(min(-1.0, k.min()), max(1.5, k.max()) + 1e-9, 31), color="C0")
    for t, c in ((0.5, "orange"), (0.7, "red")):
        ax.axvline(t, color=c, ls="--", lw=1)
    good, ok, bad = (k < 0.5).mean(), ((k >= 0.5) & (k < 0.7)).mean(), (k >= 0.7).mean()
    ax.set_xlabel("Pareto k-hat of log w = log p(x, z) - log q(z|x)")
    ax.set_ylabel("examples")
    extra = f", K = {num_samples}" if num_samples else ""
    ax.set_title(f"k < 0.5: {good:.0%}   0.5-0.7: {ok:.0%}   >= 0.7: {bad:.0%}  (n = {len(k)}{extra})", fontsize=9)
    if bad > 0:
        fig.suptitle(f"UNRELIABLE: k-hat >= 0.7 for {bad:.0%} of examples: the importance weights have (nearly)\n"
                     "infinite variance there, and IWAE estimates of log p(x) cannot be trusted", fontsize=8, color="red")
    fig.tight_layout()
    return save_figure(fig, path)
