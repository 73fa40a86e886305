"""Structured VAEs (Johnson et al. 2016; survey Sec. 5.1): recipes on the NumPyro/JAX backend.

These recipes have their own engine (:mod:`metaprior.svae.engine`): the command line calls
``train_run`` / ``evaluate_run`` / ``plot_run`` instead of the Pyro trainer, and the run
directory has the same layout (``config.json``, ``metrics.jsonl``, ``checkpoints/``,
``eval.json``, ``plots/``). JAX is imported only when a recipe is used.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metaprior.svae_defaults import GMM, LDS, SLDS

from . import register

EVAL_METRICS = ("elbo", "ari", "nmi")


_JITS: dict = {}


def _jitted(fn):
    """``jax.jit(fn, static_argnums=0)`` (the spec is static), cached per function."""
    import jax

    if fn not in _JITS:
        _JITS[fn] = jax.jit(fn, static_argnums=0)
    return _JITS[fn]


def jax_device(device: str):
    """``jax.default_device`` for the command's ``--device`` (cpu, cuda, auto), with a clear error when
    JAX has no GPU backend (the CPU wheel of jax; ``pip install "jax[cuda12]"`` adds one)."""
    import jax

    if device in (None, "auto"):
        return jax.default_device(None)
    if device == "cpu":
        return jax.default_device(jax.devices("cpu")[0])
    if device == "cuda":
        try:
            gpus = jax.devices("gpu")
        except RuntimeError:
            gpus = []
        if not gpus:
            raise RuntimeError("--device cuda: JAX sees no GPU (this jax is CPU-only); install a CUDA build, "
                               "e.g. pip install 'jax[cuda12]', or train with --device cpu")
        return jax.default_device(gpus[0])
    raise ValueError(f"the JAX engine supports --device cpu, cuda or auto, got {device!r}")


class _Flat:
    """A data set whose examples are flattened to vectors (for the GMM-SVAE on images)."""

    def __init__(self, data):
        self.data = data
        self.num_examples = data.num_examples

    def batch(self, step, batch_size, seed):
        b = self.data.batch(step, batch_size, seed)
        return b.reshape(len(b), -1)


class _SVAERecipe:
    """Shared run-directory plumbing of the SVAE recipes (subclasses define the model hooks)."""

    def build(self, data):
        raise ValueError(f"{type(self).__name__} is trained by its own JAX engine (train_run), not the Pyro trainer")

    def check_likelihood(self) -> None:
        valid = ("auto", "gaussian_learned", "gaussian", "bernoulli")
        if self.likelihood not in valid:
            raise ValueError(f"unknown likelihood {self.likelihood!r}; valid: {', '.join(valid)}")

    def spec_of(self, cls, **settings):
        """A ``cls`` spec from every setting of this recipe that ``cls`` also has (by name), then ``settings``."""
        import dataclasses

        shared = {f.name for f in dataclasses.fields(cls)} & {f.name for f in dataclasses.fields(self)}
        return cls(**{**{k: getattr(self, k) for k in shared}, **settings})

    def resolved_likelihood(self, data) -> str:
        if self.likelihood != "auto":
            return self.likelihood
        return "bernoulli" if data.is_binary else "gaussian_learned"

    # -- training ------------------------------------------------------------------------
    def train_run(self, data, train_cfg, out, record, resume) -> dict:
        """Train with :func:`metaprior.svae.engine.train` and write the run directory ``out``."""
        from metaprior.svae.engine import train

        spec = self.spec(data)
        with jax_device(train_cfg.device):
            res = train(spec, self.train_data(data), train_cfg, out=out, record=record, resume=resume)
        if not res.last_metrics and out is not None:  # resumed at or past the end
            rows = [r for r in Path(out, "metrics.jsonl").read_text().splitlines() if r.strip()]
            return json.loads(rows[-1]) if rows else {"step": res.step}
        return res.last_metrics

    def train_data(self, data):
        return data

    # -- loading -------------------------------------------------------------------------
    def load(self, run_dir):
        """``(record, data, spec, state, step)`` of a run directory (newest checkpoint)."""
        from metaprior.runs import load_data
        from metaprior.svae.engine import latest_state

        run_dir = Path(run_dir)
        record = json.loads((run_dir / "config.json").read_text())
        data = load_data(record["data"])
        state, step = latest_state(run_dir)
        return record, data, self.spec(data), state, step

    # -- evaluation ----------------------------------------------------------------------
    def evaluate_run(self, run_dir, metrics=EVAL_METRICS, seed: int = 0) -> dict:
        """Held-out ELBO (with rate and distortion) and, where the data have labels, the
        adjusted Rand index and NMI (scikit-learn) of the inferred labels against the true ones.

        ``metrics`` from ``elbo, ari, nmi``. ``iwae`` (in the command's default list
        ``elbo,iwae``, meant for Pyro runs) has no counterpart here and stands for the SVAE
        defaults: the default command evaluates ``elbo, ari, nmi``.
        """
        metrics = list(metrics) or list(EVAL_METRICS)
        if "iwae" in metrics:
            metrics = list(dict.fromkeys([m for m in metrics if m != "iwae"] + list(EVAL_METRICS)))
        bad = [m for m in metrics if m not in EVAL_METRICS]
        if bad:
            raise ValueError(f"unknown metric(s) {', '.join(bad)} for an SVAE run; valid: {', '.join(EVAL_METRICS)}")
        record, data, spec, state, step = self.load(run_dir)
        results = {}
        base = {"checkpoint_step": step, "seed": seed}
        if "elbo" in metrics:
            results.update(self.heldout_elbo(spec, state, data, seed, base))
        if {"ari", "nmi"} & set(metrics):
            if getattr(data, "labels", None) is None:
                print("metaprior: note: the data have no labels; ari/nmi skipped", file=sys.stderr)
            else:
                from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

                true, pred, settings = self.labels_pred(spec, state, data)
                settings = {**base, **settings, "estimator": "argmax of q(labels)"}
                if "ari" in metrics:
                    results["ari"] = {"value": float(adjusted_rand_score(true, pred)), "settings": settings}
                if "nmi" in metrics:
                    results["nmi"] = {"value": float(normalized_mutual_info_score(true, pred)), "settings": settings}
        return results

    def heldout_elbo(self, spec, state, data, seed, base, samples: int = 10) -> dict:
        import jax

        idx = data.test_indices if len(data.test_indices) else data.train_indices
        x = data.x[idx]
        x = x.reshape(len(x), -1) if self.flatten else x
        fn = _jitted(self.elbo_fn())
        keys = jax.random.split(jax.random.PRNGKey(seed), samples)
        terms = [fn(spec, state, x, k, data.num_examples) for k in keys]
        settings = {**base, "split": "test", "num_examples": int(len(x)), "samples": samples,
                    "unit": "nats per example", "objective": "SVAE ELBO (global KL / N included)"}
        out = {}
        for name in ("elbo", "rate", "distortion", "kl_local", "kl_global"):
            out[name] = {"value": float(np.mean([float(t[name]) for t in terms])), "settings": settings}
        return out

    flatten = False


# --------------------------------------------------------------------------------------
# GMM-SVAE
# --------------------------------------------------------------------------------------


@register("svae_gmm")
@dataclass(frozen=True)
class SVAEGMM(_SVAERecipe):
    """GMM-SVAE (Johnson et al. 2016, Sec. 3-4, eq. 3-8): mixture-of-Gaussians prior, natural gradients.

    K mixture components with Dirichlet/NIW globals over a ``latent_dim`` latent; the
    recognition MLP emits Gaussian potentials; local mean-field over ``q(z)``, ``q(labels)``
    (``meanfield_iters`` jit-compiled iterations); reparameterized ``z`` into the decoder;
    natural-gradient steps (size ``natgrad_step``) on the globals and Adam (``lr``) on the
    networks. ``likelihood``: auto (Bernoulli for binary data, else Gaussian with learned
    variance), gaussian_learned, gaussian (fixed ``obs_scale``) or bernoulli. ``init``:
    kmeans (k-means labels of the data place the initial components), kmeans_latent or random.
    ``nu``: the NIW degrees of freedom, 0 (default) for ``latent_dim + 2`` (4 at d = 2; it
    must exceed ``latent_dim - 1``). ``local_grad``: last (gradients through the last mean-field iteration only, as in Johnson
    et al.'s code) or unrolled (through all of them); on the command below (seeds 0, 1, 2)
    last gave ARI 0.965 / 0.965 / 0.936, unrolled 0.965 / 0.975 / 0.936, and last's step
    computation is 25 % shorter at batch 64, 40 % at batch 256 (``python bench/bench_svae.py
    --fused --skip-slds --gmm-batch 64 256 [--gmm-local-grad unrolled]``: 0.094 / 0.282 against
    0.126 / 0.484 ms). Model, objective and the natural-gradient derivation: :mod:`metaprior.svae.gmm`.

    The paper's pinwheel setting (5 arms x 100 points, radial std 0.3, tangential std 0.05,
    rate 0.25 -- the dataset's defaults)::

        metaprior train --method svae_gmm --data pinwheel --steps 5000 --set batch_size=64 --out runs/svae_gmm
        metaprior evaluate runs/svae_gmm      # ari, nmi, held-out elbo
        metaprior plot runs/svae_gmm          # latent space with component ellipses

    ``meanfield_iters`` defaults to 2: on that command with ``--seed S --set meanfield_iters=I``
    and then ``metaprior evaluate`` (seeds 0, 1, 2; 2026-11-25), 2 iterations gave ARI 0.965 / 0.965 /
    0.936 and held-out ELBO -1.33 / -1.55 / -1.48, the same as 3 (0.965 / 0.965 / 0.936;
    -1.33 / -1.55 / -1.48); 1 iteration lost seed 2 (ARI 0.888, ELBO -1.50). An earlier comparison
    with 10 iterations gave 0.970 / 0.975 / 0.936. Each iteration costs about 7 % of the step
    (``bench/bench_svae.py``).
    """

    num_components: int = GMM["num_components"]
    latent_dim: int = GMM["latent_dim"]
    hidden: tuple[int, ...] = GMM["hidden"]
    likelihood: str = "auto"
    obs_scale: float = GMM["obs_scale"]
    meanfield_iters: int = GMM["meanfield_iters"]
    alpha: float = GMM["alpha"]
    kappa: float = GMM["kappa"]
    nu: float = GMM["nu"]
    prior_scale: float = GMM["prior_scale"]
    natgrad_step: float = GMM["natgrad_step"]
    init: str = GMM["init"]
    local_grad: str = GMM["local_grad"]

    def __post_init__(self):
        from metaprior.svae.gmm import GMM_INITS

        object.__setattr__(self, "hidden", tuple(self.hidden))
        self.check_likelihood()
        if self.init not in GMM_INITS:
            raise ValueError(f"unknown init {self.init!r}; valid: {', '.join(GMM_INITS)}")
        self.spec_for(2, "gaussian")  # validates the remaining settings

    def spec_for(self, obs_dim: int, likelihood: str):
        from metaprior.svae.gmm import GMMSVAE

        return self.spec_of(GMMSVAE, obs_dim=obs_dim, likelihood=likelihood)  # (the spec reads nu = 0 as d + 2)

    @property
    def flatten(self):
        return True

    def spec(self, data):
        x = getattr(data, "x", None)
        if x is None or np.ndim(x) < 2:
            raise ValueError("svae_gmm needs an array data set of shape (N, D) (e.g. --data pinwheel)")
        return self.spec_for(int(np.prod(np.shape(x)[1:])), self.resolved_likelihood(data))

    def train_data(self, data):
        return data if np.ndim(data.x) == 2 else _Flat(data)

    def elbo_fn(self):
        from metaprior.svae.gmm import gmm_svae_elbo

        return gmm_svae_elbo

    def labels_pred(self, spec, state, data):
        from metaprior.svae.gmm import gmm_infer

        inf = gmm_infer(spec, state, data.x.reshape(len(data.x), -1))
        return np.asarray(data.labels).ravel(), inf["labels"], {"split": "all", "num_examples": int(len(data.x))}

    def plot_run(self, run_dir) -> list[Path]:
        """``plots/latent.png`` (data and latent space coloured by inferred label, component
        ellipses at 2 standard deviations of ``E[Sigma_k]``, drawn more opaque for heavier
        components) and ``plots/training.png`` (loss, rate, distortion against the step)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Ellipse

        from metaprior.plots import save_figure, training_curves
        from metaprior.svae.gmm import gmm_global_standard, gmm_infer

        run_dir = Path(run_dir)
        _, data, spec, state, step = self.load(run_dir)
        x = data.x.reshape(len(data.x), -1)
        inf = gmm_infer(spec, state, x)
        g = {k: np.asarray(v) for k, v in gmm_global_standard(state["globals"]).items()}
        d = spec.latent_dim
        weights = g["alpha"] / g["alpha"].sum()
        cov = g["S"] / np.maximum(g["nu"] - d - 1, 1e-3)[:, None, None]
        cmap = plt.get_cmap("tab10")
        panels = (2 if x.shape[1] == 2 else 0) + 1
        fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4))
        axes = np.atleast_1d(axes)
        if x.shape[1] == 2:
            truth = data.labels if data.labels is not None else np.zeros(len(x), int)
            for ax, lab, title in ((axes[0], truth, "data, true labels"), (axes[1], inf["labels"], "data, inferred labels")):
                ax.scatter(x[:, 0], x[:, 1], c=cmap(np.asarray(lab) % 10), s=6)
                ax.set_title(title, fontsize=10)
                ax.set_xlabel("x1")
                ax.set_ylabel("x2")
                ax.set_aspect("equal")
        ax = axes[-1]
        z = inf["z_mean"]
        dims = (0, 1) if d >= 2 else (0, 0)
        ax.scatter(z[:, dims[0]], z[:, dims[1]] if d >= 2 else np.zeros(len(z)), c=cmap(inf["labels"] % 10), s=6)
        if d >= 2:
            for k in range(spec.num_components):
                C = cov[k][np.ix_(dims, dims)]
                vals, vecs = np.linalg.eigh(C)
                angle = np.degrees(np.arctan2(vecs[1, -1], vecs[0, -1]))
                w, h = 4 * np.sqrt(np.maximum(vals[::-1], 0))
                ax.add_patch(Ellipse(g["m"][k][list(dims)], w, h, angle=angle, fill=False, lw=2,
                                     color=cmap(k % 10), alpha=float(min(1.0, 0.15 + 3 * weights[k]))))
        ax.set_title(f"latent space (E[z]), step {step}", fontsize=10)
        ax.set_xlabel(f"z{dims[0]}")
        ax.set_ylabel(f"z{dims[1]}" if d >= 2 else "")
        from matplotlib.lines import Line2D

        used = np.unique(inf["labels"])
        handles = [Line2D([], [], marker="o", ls="", color=cmap(k % 10), label=f"{k} ({weights[k]:.0%})") for k in used]
        handles.append(Line2D([], [], color="0.3", lw=2, label="2 sd of E[Sigma_k]"))
        ax.legend(handles=handles, title="inferred component (weight)", fontsize=7, title_fontsize=8,
                  loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)
        fig.tight_layout()
        out = run_dir / "plots"
        return [save_figure(fig, out / "latent.png", dpi=110), training_curves(run_dir / "metrics.jsonl", out / "training.png")]


# --------------------------------------------------------------------------------------
# SLDS-SVAE and LDS-SVAE
# --------------------------------------------------------------------------------------


@register("svae_slds")
@dataclass(frozen=True)
class SVAESLDS(_SVAERecipe):
    """SLDS-SVAE (Johnson et al. 2016, Sec. 3-4): switching linear dynamics prior for sequences.

    HMM over ``num_states`` discrete states (Dirichlet globals, natural gradients) switching
    the affine dynamics of a ``latent_dim`` LDS (point estimates, Adam); per-frame recognition
    potentials; ``meanfield_iters`` rounds of Kalman smoothing and forward-backward; a
    reparameterized sample of the whole latent path into the per-frame decoder. Data: (N, T, W)
    sequences of frames. Model and objective: :mod:`metaprior.svae.slds`. E.g.::

        metaprior train --method svae_slds --data bouncing_dot \
            --steps 6000 --set batch_size=16 --set lr=3e-3 --out runs/svae_slds
        metaprior evaluate runs/svae_slds     # ari/nmi of the inferred states, held-out elbo
        metaprior plot runs/svae_slds         # inferred against true state sequences

    In Python, ``metaprior.svae.slds_global_posterior(state)`` gives the HMM globals'
    posterior (initial-state and transition probabilities, with the dynamics as constant
    data) as ArviZ ``InferenceData``.

    Training aids (both on by default): ``kl_warmup`` steps of linear KL warm-up and, at
    ``refit_step``, a one-off k-means refit of the switching dynamics from the latent paths
    learned so far (:func:`metaprior.svae.slds.slds_refit_dynamics`). Measured on one-hot
    frames without them: the posterior collapses for the first 1000-2500 steps, and one state
    takes every transition while the other dies (ARI 0.0 at 1500 and 3000 steps). On the
    default (blurred) frames the refit is not what matters: ``--set refit_step=0`` gave ARI
    0.855 against 0.872 with it (seed 0, 6000 steps).

    Measured with the command above at 6000 steps: ARI of the inferred states against the
    direction 0.852 (seed 0) and 0.855 (seed 1), NMI 0.765 / 0.769, about 50 s of training
    each on 2 cores (2026-11-25). ``meanfield_iters`` defaults to 2: with 3 the same runs gave
    ARI 0.847 / 0.860 and a lower held-out ELBO (843.8 / 850.9 against 854.4 / 852.9), with 1
    (seed 0) 0.846; table and plots in ``experiments/results/svae/``. The frames matter: on one-hot frames
    (``--data-option blur=0 --data-option noise=0``) neighbouring positions share no pixel,
    the learned code folds the position and the states mark the folds (ARI 0.00-0.46 over
    runs of 8000-16000 steps), which is why ``bouncing_dot`` blurs by default.
    ``local_grad``: unrolled (default; gradients through every mean-field iteration) or last
    (through the last one only, as in Johnson et al.'s code and the GMM-SVAE's default). Here
    the switching dynamics are Adam point estimates that reach the objective only through
    the mean-field updates, and ``last`` starves them: on the command above (seed 0) it gave
    ARI 0.14 against 0.85 unrolled.
    """

    num_states: int = SLDS["num_states"]
    latent_dim: int = SLDS["latent_dim"]
    hidden: tuple[int, ...] = SLDS["hidden"]
    likelihood: str = "auto"
    obs_scale: float = SLDS["obs_scale"]
    meanfield_iters: int = SLDS["meanfield_iters"]
    alpha: float = SLDS["alpha"]
    stickiness: float = SLDS["stickiness"]
    natgrad_step: float = SLDS["natgrad_step"]
    drift_init: float = SLDS["drift_init"]
    refit_step: int = SLDS["refit_step"]
    kl_warmup: int = SLDS["kl_warmup"]
    local_grad: str = SLDS["local_grad"]

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(self.hidden))
        self.check_likelihood()
        self.spec_for(2, "gaussian")  # validates the remaining settings

    def spec_for(self, obs_dim: int, likelihood: str):
        from metaprior.svae.slds import SLDSSVAE

        return self.spec_of(SLDSSVAE, obs_dim=obs_dim, likelihood=likelihood)  # (one state: the spec drops refit_step)

    def spec(self, data):
        x = getattr(data, "x", None)
        if x is None or np.ndim(x) != 3:
            raise ValueError(f"{type(self).__name__} needs sequence data of shape (N, T, W) "
                             "(e.g. --data bouncing_dot)" + ("" if x is None else f"; got shape {np.shape(x)}"))
        return self.spec_for(int(np.shape(x)[2]), self.resolved_likelihood(data))

    def elbo_fn(self):
        from metaprior.svae.slds import slds_svae_elbo

        return slds_svae_elbo

    def labels_pred(self, spec, state, data):
        from metaprior.svae.slds import slds_infer

        inf = slds_infer(spec, state, data.x)
        return (np.asarray(data.labels).ravel(), inf["states"].ravel(),
                {"split": "all", "num_examples": int(len(data.x)), "unit": "time steps", "num_steps": int(inf["states"].size)})

    def plot_run(self, run_dir, num_sequences: int = 4) -> list[Path]:
        """``plots/states.png`` (for test sequences: the frames, the latent path, the true and the
        inferred state sequences) and ``plots/training.png``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from metaprior.plots import save_figure, training_curves
        from metaprior.svae.slds import slds_infer

        run_dir = Path(run_dir)
        _, data, spec, state, step = self.load(run_dir)
        idx = (data.test_indices if len(data.test_indices) else data.train_indices)[:num_sequences]
        full = slds_infer(spec, state, data.x)   # all sequences: the shape evaluate_run compiles for
        inf = {k: v[idx] for k, v in full.items()}
        x = data.x[idx]
        n = len(idx)
        fig, axes = plt.subplots(3, n, figsize=(3.2 * n, 6), squeeze=False, gridspec_kw={"height_ratios": [3, 2, 1]})
        cmap = plt.get_cmap("tab10")
        for i in range(n):
            axes[0, i].imshow(x[i].T, aspect="auto", cmap="gray_r", origin="lower")
            axes[0, i].set_title(f"sequence {idx[i]}", fontsize=9)
            axes[1, i].plot(inf["x_mean"][i])
            axes[1, i].set_title("E[x_t]", fontsize=9)
            rows = [inf["states"][i]]
            if data.labels is not None:
                rows.insert(0, np.asarray(data.labels)[idx[i]])
            axes[2, i].imshow(np.stack(rows), aspect="auto", cmap=matplotlib.colors.ListedColormap(
                [cmap(k % 10) for k in range(max(spec.num_states, 2))]), vmin=0, vmax=max(spec.num_states, 2) - 1,
                interpolation="nearest")
            axes[2, i].set_yticks(range(len(rows)), ["true", "inferred"][-len(rows):] if len(rows) == 2 else ["inferred"])
            axes[2, i].set_xlabel("t")
        fig.suptitle(f"SLDS-SVAE, step {step}", fontsize=10)
        fig.tight_layout()
        out = run_dir / "plots"
        return [save_figure(fig, out / "states.png", dpi=110), training_curves(run_dir / "metrics.jsonl", out / "training.png")]


@register("svae_lds")
@dataclass(frozen=True)
class SVAELDS(SVAESLDS):
    """LDS-SVAE (Johnson et al. 2016, Sec. 3): linear dynamical system prior, Kalman smoothing of the potentials.

    The SLDS-SVAE with one state (no switching, one exact smoothing pass). E.g.
    ``metaprior train --method svae_lds --data bouncing_dot --steps 2000 --out runs/svae_lds``.
    """

    num_states: int = LDS["num_states"]
    meanfield_iters: int = LDS["meanfield_iters"]
