"""Fair (invariant) representations: the Variational Fair Autoencoder and its HSIC variant (survey sec. 3.4).

The survey (Tschannen, Bachem & Lucic 2018, eq. 17) writes the VFAE of Louizos et al. (2016,
"The Variational Fair Autoencoder", ICLR; sec. 2.1-2.3) as

    L_VFAE = L_VAE(x | s) + beta * sum_{l=2}^{K} MMD(q(z | s = l), q(z | s = 1))

for a categorical sensitive (nuisance) variable s with K values: a conditional VAE,
q(z | x, s) and p(x | z, s) with the prior p(z) independent of s, plus a penalty on what the
encoder still tells about s. Lopez et al. (2018, "Information Constraints on Auto-Encoding
Variational Bayes", NeurIPS; the HCV) replace the MMD by HSIC(z, s).

Recipe ``vfae`` (:class:`VFAE`). What is implemented, precisely:

* Model: :class:`~metaprior.models.conditional.ConditionalVAE` (s concatenated to the
  encoder's input and to the decoder's input), standard-normal p(z), the likelihood and
  nets of :class:`~metaprior.methods.base.GaussianVAE`. s is the attribute named by
  ``sensitive`` (a dSprites factor, e.g. ``shape``, or ``label`` for digits/mnist),
  one-hot encoded (:class:`~metaprior.data.attributes.WithAttribute`).
* ``penalty="mmd"`` (term ``mmd``): on the batch's *sampled* codes z (one per example, as
  Louizos et al.), ``sum_{l != r} MMD_u^2(z[s = r], z[s = l])`` with the unbiased MMD^2 of
  :func:`~metaprior.inference.estimators.mmd` (RBF kernel; ``bandwidth=0`` means the median
  heuristic on each pair's pooled codes; ``mmd_features=F > 0`` uses F random Fourier
  features, Rahimi & Recht 2007, the "fast MMD" of Louizos et al. sec. 2.3). Reference
  group r: the survey's "s = 1" is the *first category*, index 0 (``shape`` = square for
  dSprites, digit 0 for digits); r = 0 whenever the batch holds at least two examples of
  it, otherwise the lowest-indexed category that does. Categories with fewer than two
  examples in the batch are skipped (the U-statistic needs two); with fewer than two
  usable categories the term is 0 for that batch.
* ``penalty="hsic"`` (term ``hsic``): ``HSIC_b(z, s)`` (Lopez et al. 2018, eq. 7; survey
  appendix eq. 21) by :class:`~metaprior.inference.regularizers.HSICPenalty` reading s from
  the model's density-free site ``"s"``; RBF kernels with the median heuristic on z and on
  the one-hot s separately (``bandwidth > 0``: that bandwidth for both).
* ``penalty_weight`` is the survey's beta on the penalty (Louizos et al.'s beta); the rate
  keeps GaussianVAE's ``beta`` (1: the ELBO). Our losses are nats *per example* while the
  penalty is a batch-level statistic (MMD^2 <= 2 and HSIC_b <= 1 for RBF kernels), so the
  useful weights are large. In ``experiments/fair_representation.py`` (dSprites, s = shape,
  MLP, 1000 steps) the default 1000 (MMD) lowered the logistic probe's shape accuracy from
  0.51 (weight 0) to 0.38 (chance 0.33) for 17 nats of test ELBO; 10000 wiped out scale;
  HSIC needed about 10000. These weights are not comparable with Louizos et al.'s, whose
  ELBO is a minibatch *sum*.
* Not implemented: the semi-supervised part of the VFAE (labels y, the second latent z2 and
  the M1+M2-style classifier of Louizos et al. sec. 2.2). This is the unsupervised VFAE:
  z = their z1.

Evaluation (``metaprior evaluate RUN``, :meth:`VFAE.evaluate_run`), on the encoder means of
q(z | x, s) (the encoder needs s, so the generic evaluation does not apply):
``sensitive_probe_accuracy`` (held-out accuracy of a logistic-regression probe
z -> s, :func:`~metaprior.evaluation.metrics.usefulness`'s ``LogisticRegressionCV``; chance
1/K in its settings), ``sensitive_probe_accuracy_rf`` (a random forest, the non-linear
probe), for ground-truth data ``probe_r2.<factor>`` for each other factor (held-out R^2 of a
linear regression z -> the factor's value index; a cyclic factor such as dSprites'
orientation, with sprites that repeat under rotation, scores near 0 for any code) and
their mean ``other_factors_r2``; with ``elbo`` (default) the held-out ``elbo``, ``rate``,
``distortion`` of log p(x | s), with ``iwae`` the IWAE bound of it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..data.attributes import WithAttribute
from ..inference import estimators as est
from ..inference.elbo import ELBO, TermContext
from ..inference.regularizers import HSICPenalty, check_weight, codes
from ..models.conditional import ATTRIBUTE_SITE, ConditionalVAE, build_conditional_nets
from ..models.likelihoods import make_likelihood
from . import register
from .base import GaussianVAE

PENALTIES = ("mmd", "hsic")
EVAL_METRICS = ("probes", "elbo", "iwae")

#: sizes of the evaluation (ground-truth data: fresh draws; finite data: the train / test splits)
PROBE_TRAIN, PROBE_TEST, IWAE_EXAMPLES, IWAE_SAMPLES = 5000, 2000, 256, 100


# ---------------------------------------------------------------------------- the penalty
def category_indices(s: torch.Tensor) -> torch.Tensor:
    """Integer categories [B] from one-hot rows [B, K] (argmax) or from integers [B]."""
    if s.dim() == 2:
        return s.argmax(-1)
    if s.dim() == 1 and not s.is_floating_point():
        return s
    raise ValueError(f"s must be one-hot rows [B, K] or integer categories [B], got shape {tuple(s.shape)} dtype {s.dtype}")


def group_mmd(z: torch.Tensor, s: torch.Tensor, bandwidth: Optional[float] = None, num_features: Optional[int] = None,
              generator: Optional[torch.Generator] = None, min_count: int = 2) -> torch.Tensor:
    """``sum_{l != r} MMD_u^2(z[s = r], z[s = l])``: the VFAE penalty (Louizos et al. 2016, sec. 2.3; survey eq. 17).

    ``z`` [B, D] codes, ``s`` [B, K] one-hot (or [B] integer) categories. Categories with fewer
    than ``min_count`` (>= 2) rows are skipped; the reference r is the lowest-indexed category
    left (category 0, the survey's "s = 1", whenever it has ``min_count`` rows). MMD^2 is the
    unbiased U-statistic of :func:`~metaprior.inference.estimators.mmd` with the RBF kernel
    (``bandwidth=None``: median heuristic per pair; ``num_features``: random Fourier
    features). Returns a scalar (0, still attached to z's graph, when fewer than two
    categories are usable).
    """
    z = z.reshape(z.shape[0], -1)
    labels = category_indices(s)
    if labels.shape[0] != z.shape[0]:
        raise ValueError(f"z has {z.shape[0]} rows but s has {labels.shape[0]}; they must be paired")
    if min_count < 2:
        raise ValueError(f"min_count must be >= 2 (the unbiased MMD needs two samples per group), got {min_count}")
    counts = torch.bincount(labels)
    groups = [int(g) for g in torch.nonzero(counts >= min_count).flatten()]
    total = z.sum() * 0.0
    if len(groups) < 2:
        return total
    ref = z[labels == groups[0]]
    for g in groups[1:]:
        total = total + est.mmd(ref, z[labels == g], kernel="rbf", bandwidth=bandwidth, num_features=num_features,
                                generator=generator)
    return total


def sensitive_values(ctx: TermContext, site: str = ATTRIBUTE_SITE) -> torch.Tensor:
    """The sensitive variable s of the traced batch: the model's observed site ``site``."""
    node = ctx.model_trace.nodes.get(site)
    if node is None or node["type"] != "sample" or not node["is_observed"]:
        raise ValueError(f"the fairness penalty reads the sensitive variable from the model's observed site {site!r}, "
                         "which this model lacks; use the conditional VAE (metaprior.models.conditional), which "
                         "records s with pyro.deterministic, and batches (x, s)")
    return node["value"]


class SensitiveMMD:
    """ELBO term: :func:`group_mmd` of the guide's sampled codes at ``site`` and the model's s."""

    def __init__(self, bandwidth: Optional[float] = None, num_features: Optional[int] = None, site: str = "z",
                 sensitive: str = ATTRIBUTE_SITE):
        if bandwidth is not None and not (float(bandwidth) > 0 and math.isfinite(float(bandwidth))):
            raise ValueError(f"bandwidth must be a positive number (or None for the median heuristic), got {bandwidth!r}")
        self.bandwidth, self.num_features, self.site, self.sensitive = bandwidth, num_features, site, sensitive

    def __call__(self, ctx: TermContext) -> torch.Tensor:
        return group_mmd(codes(ctx, self.site), sensitive_values(ctx, self.sensitive), self.bandwidth, self.num_features)

    def __repr__(self):
        return f"SensitiveMMD(bandwidth={self.bandwidth}, num_features={self.num_features})"


# ---------------------------------------------------------------------------- the recipe
@register("vfae")
@dataclass(frozen=True)
class VFAE(GaussianVAE):
    """Variational Fair Autoencoder (Louizos et al. 2016, eqs. 3 and 8; survey eq. 17), unsupervised part.

    Conditional VAE q(z | x, s), p(x | z, s), p(z) = N(0, I), plus ``penalty_weight`` times
    ``mmd`` = sum over categories l != r of MMD^2(z[s = l], z[s = r]) (reference r = category 0
    when present in the batch), or ``hsic`` = HSIC(z, s) (Lopez et al. 2018). Settings:
    ``sensitive`` (attribute name: a ground-truth factor or ``label``), ``penalty``
    (``mmd`` | ``hsic``), ``penalty_weight`` (>= 0; 0 = the plain conditional VAE),
    ``bandwidth`` (RBF bandwidth, 0 = median heuristic), ``mmd_features`` (0 = exact MMD,
    F > 0 = F random Fourier features). The semi-supervised y / z2 part is not implemented.
    See the module docstring for the details and the evaluation.
    """

    sensitive: str = "shape"
    penalty: str = "mmd"
    penalty_weight: float = 1000.0
    bandwidth: float = 0.0
    mmd_features: int = 0

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.sensitive, str) or not self.sensitive.strip():
            raise ValueError(f"sensitive must name an attribute of the data (e.g. shape, label), got {self.sensitive!r}")
        if self.penalty not in PENALTIES:
            raise ValueError(f"unknown penalty {self.penalty!r}; choose one of {', '.join(map(repr, PENALTIES))}")
        check_weight("penalty_weight", self.penalty_weight)
        if not (self.bandwidth >= 0 and math.isfinite(self.bandwidth)):
            raise ValueError(f"bandwidth must be >= 0 (0 = median heuristic), got {self.bandwidth!r}")
        if self.mmd_features < 0:
            raise ValueError(f"mmd_features must be >= 0 (0 = exact MMD), got {self.mmd_features}")
        if self.mmd_features and self.penalty != "mmd":
            raise ValueError(f"mmd_features (random Fourier features) applies to penalty='mmd' only, got penalty="
                             f"{self.penalty!r}; drop mmd_features")

    # -- data and model ---------------------------------------------------------------------------
    def prepare_data(self, data) -> WithAttribute:
        """``WithAttribute(data, sensitive, "onehot")``: batches ``(x, s)``; unknown attributes list the valid ones."""
        if isinstance(data, WithAttribute):
            if data.attribute == self.sensitive and data.encoding == "onehot":
                return data
            data = data.data
        return WithAttribute(data, self.sensitive, "onehot")

    def build_model(self, data) -> ConditionalVAE:
        data = self.prepare_data(data)
        lik = make_likelihood(self.likelihood, data.observation_shape, data.is_binary, self.obs_scale)
        enc, dec = build_conditional_nets(self.net, data.observation_shape, data.attribute_dim, self.latent_dim,
                                          self.hidden)
        return ConditionalVAE(enc, dec, self.latent_dim, lik, data.attribute_dim)

    def terms(self, data):
        bandwidth = self.bandwidth or None
        if self.penalty == "mmd":
            term = SensitiveMMD(bandwidth, self.mmd_features or None)
        else:
            term = HSICPenalty(groups=(), kernel="rbf", bandwidth=bandwidth, sensitive=ATTRIBUTE_SITE)
        return {self.penalty: (self.penalty_weight, term)}

    # -- evaluation -----------------------------------------------------------------------------
    def evaluate_run(self, run_dir, metrics: Sequence[str] = ("elbo",), seed: int = 0) -> dict:
        """Probe accuracies (always) and, on request, the held-out ELBO / IWAE of log p(x | s).

        ``metrics`` from ``probes, elbo, iwae`` (or ``all``); the probes are always computed.
        """
        from ..runs import load_run

        metrics = list(metrics) or ["elbo"]
        if "all" in metrics:
            metrics = list(EVAL_METRICS)
        bad = [m for m in metrics if m not in EVAL_METRICS]
        if bad:
            raise ValueError(f"unknown metric(s) {', '.join(bad)} for vfae; valid: {', '.join(EVAL_METRICS)} (or all)")
        run = load_run(run_dir)
        return evaluate_fairness(run.pair, run.data, self.sensitive, seed=seed, metrics=metrics,
                                 checkpoint_step=run.step)

    def plot_run(self, run_dir) -> list[Path]:
        """Training curves, reconstructions with s swapped, samples per s, the latent scatter coloured by the factors."""
        from ..runs import load_run

        run = load_run(run_dir)
        return plot_conditional(run.pair, run.data, Path(run_dir), Path(run_dir) / "plots", seed=run.train.seed)


# ---------------------------------------------------------------------- evaluation helpers
def probe_sets(data: WithAttribute, seed: int = 0, num_train: int = PROBE_TRAIN, num_test: int = PROBE_TEST):
    """``(x_train, f_train, x_test, f_test, names)``: observations with their factors (or labels) for the probes.

    Ground-truth data: fresh uniform draws (the evaluation pools of
    :class:`~metaprior.evaluation.evaluate.Pools`); finite data: the train and test splits.
    """
    from ..evaluation.evaluate import Pools, _available, ground_truth

    kind, names = ground_truth(data)
    if kind is None:
        raise ValueError(f"{getattr(data, 'name', 'the data set')!r} has neither factors nor labels to probe")
    pools = Pools(data, seed)
    x_tr, f_tr = pools.get("train", _available(pools, "train", num_train))
    x_te, f_te = pools.get("test", _available(pools, "test", num_test))
    return x_tr, np.asarray(f_tr).astype(np.int64), x_te, np.asarray(f_te).astype(np.int64), list(names)


@torch.no_grad()
def encode_means(pair: ConditionalVAE, data: WithAttribute, x: np.ndarray, values: np.ndarray,
                 batch_size: int = 512) -> np.ndarray:
    """Encoder means of q(z | x, s) for observations ``x`` and integer attribute values ``values``."""
    device = next(pair.parameters()).device
    s = torch.as_tensor(data.encode(np.asarray(values)))
    xt = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
    out = [pair.encode(xt[i:i + batch_size].to(device), s[i:i + batch_size].to(device))[0].double().cpu().numpy()
           for i in range(0, len(xt), batch_size)]
    return np.concatenate(out)


def probe_scores(encode, data: WithAttribute, sensitive: str, seed: int = 0, num_train: int = PROBE_TRAIN,
                 num_test: int = PROBE_TEST, checkpoint_step: int | None = None, sets=None) -> dict:
    """Probe results ``{name: {"value", "settings"}}`` of the codes ``encode(x, s_values) -> [n, D]`` (numpy).

    ``sensitive_probe_accuracy`` (logistic regression) and ``sensitive_probe_accuracy_rf``
    (random forest): held-out accuracy of predicting s from the codes, with the chance level
    1/K and the test set's majority-class rate in the settings; for ground-truth data also
    ``probe_r2.<factor>`` (held-out R^2 of a linear regression codes -> factor index) for each
    other factor and their mean ``other_factors_r2``. ``encode`` may ignore s (an
    unconditional encoder). ``sets``: the output of :func:`probe_sets` (drawn if None).
    """
    from ..evaluation.metrics import probe_r2, usefulness

    x_tr, f_tr, x_te, f_te, names = sets if sets is not None else probe_sets(data, seed, num_train, num_test)
    col = names.index(sensitive) if sensitive in names else 0  # labelled data: the one column "label"
    c_tr = np.asarray(encode(x_tr, f_tr[:, col]), dtype=np.float64)
    c_te = np.asarray(encode(x_te, f_te[:, col]), dtype=np.float64)
    if not (np.isfinite(c_tr).all() and np.isfinite(c_te).all()):
        raise ValueError("the encoder returned NaN or infinite codes; the model has diverged -- evaluate an earlier "
                         "checkpoint or retrain")
    k = int(data.num_values)
    base = {"attribute": sensitive, "num_train": int(len(c_tr)), "num_test": int(len(c_te)), "seed": seed,
            "representation": "encoder means", "checkpoint_step": checkpoint_step}
    majority = float(np.bincount(f_te[:, col], minlength=k).max() / len(f_te))
    n = len(c_tr)
    acc = usefulness(c_tr, f_tr[:, [col]], c_te, f_te[:, [col]], sizes=(n,), models=("logistic", "random_forest"),
                     seed=seed)
    out = {
        "sensitive_probe_accuracy": {"value": acc[f"logistic_{n}"], "settings": {
            **base, "chance": 1.0 / k, "majority": majority,
            "probe": "LogisticRegressionCV(Cs=10, 5-fold), test accuracy"}},
        "sensitive_probe_accuracy_rf": {"value": acc[f"random_forest_{n}"], "settings": {
            **base, "chance": 1.0 / k, "majority": majority,
            "probe": "RandomForestClassifier(50 trees, depth 6), test accuracy"}},
    }
    others = [j for j, name in enumerate(names) if j != col and name != sensitive]
    if others:
        r2 = {}
        for j in others:
            r2[names[j]] = probe_r2(c_tr, f_tr[:, j], c_te, f_te[:, j])
            out[f"probe_r2.{names[j]}"] = {"value": r2[names[j]], "settings": {
                **base, "factor": names[j], "probe": "least-squares regression codes -> factor index, test R^2"}}
        out["other_factors_r2"] = {"value": float(np.mean(list(r2.values()))), "settings": {
            **base, "factors": [names[j] for j in others], "probe": "mean test R^2 of the linear regressions"}}
    return out


def evaluate_fairness(pair: ConditionalVAE, data: WithAttribute, sensitive: str, seed: int = 0,
                      metrics: Sequence[str] = ("elbo",), checkpoint_step: int | None = None,
                      num_train: int | None = None, num_test: int | None = None, sets=None) -> dict:
    """:func:`probe_scores` of the encoder means of q(z | x, s), plus the held-out ELBO / IWAE of log p(x | s)
    (on the probes' test observations; ``sets`` as in :func:`probe_scores`)."""
    was = pair.training
    pair.eval()
    if sets is None:
        sets = probe_sets(data, seed, num_train or PROBE_TRAIN, num_test or PROBE_TEST)
    out = probe_scores(lambda x, v: encode_means(pair, data, x, v), data, sensitive, seed,
                       checkpoint_step=checkpoint_step, sets=sets)
    for v in out.values():
        v["settings"]["representation"] = "encoder mean of q(z | x, s)"
    x_te, f_te, names = sets[2], sets[3], sets[4]
    col = names.index(sensitive) if sensitive in names else 0
    base = {"attribute": sensitive, "seed": seed, "checkpoint_step": checkpoint_step}
    x = torch.as_tensor(x_te, dtype=torch.float32)
    s = torch.as_tensor(data.encode(f_te[:, col]))
    if "elbo" in metrics:
        torch.manual_seed(seed)
        sums, elbo = {"elbo": 0.0, "rate": 0.0, "distortion": 0.0}, ELBO()
        with torch.no_grad():
            for i in range(0, len(x), 256):
                parts = elbo(pair.model, pair.guide, x[i:i + 256], s[i:i + 256]).parts
                for key in sums:
                    sums[key] += float(parts[key]) * len(x[i:i + 256])
        for key, v in sums.items():
            out[key] = {"value": v / len(x), "settings": {**base, "unit": "nats per example", "bound": "log p(x | s)",
                                                          "num_examples": int(len(x))}}
    if "iwae" in metrics:
        from ..inference.importance import iwae_log_likelihood

        xs, ss = x[:IWAE_EXAMPLES], s[:IWAE_EXAMPLES]

        def model(xr):  # the importance sampler repeats x along the batch; repeat s alike
            return pair.model(xr, ss.repeat_interleave(xr.shape[0] // len(ss), 0))

        def guide(xr):
            return pair.guide(xr, ss.repeat_interleave(xr.shape[0] // len(ss), 0))

        torch.manual_seed(seed)
        vals = iwae_log_likelihood(model, guide, xs, IWAE_SAMPLES).cpu().numpy()
        out["iwae_log_likelihood"] = {"value": float(vals.mean()), "settings": {
            **base, "unit": "nats per example", "bound": "log p(x | s)", "num_examples": int(len(xs)),
            "num_samples": IWAE_SAMPLES, "stderr": float(vals.std(ddof=1) / np.sqrt(len(vals)))}}
    pair.train(was)
    return out


@torch.no_grad()
def plot_conditional(pair: ConditionalVAE, data: WithAttribute, run_dir: Path, out_dir: Path, seed: int = 0,
                     n: int = 8) -> list[Path]:
    """Training curves; for images, reconstructions with every value of s and samples per s; the latent scatter."""
    from .. import plots

    was = pair.training
    pair.eval()
    paths = []
    if (run_dir / "metrics.jsonl").exists():
        paths.append(plots.training_curves(run_dir / "metrics.jsonl", out_dir / "training.png"))
    k = int(data.num_values)
    m = n if k <= 4 else max(1, n // 2)  # fewer rows when s has many values (one axis per image)
    x_np, v = data.test_batch(m, seed)
    x = torch.as_tensor(x_np, dtype=torch.float32)
    s = torch.as_tensor(data.encode(v))
    eye = torch.eye(k)
    if len(data.observation_shape) == 3:
        loc, _ = pair.encode(x, s)
        cols = [x, pair.decode(loc, s)] + [pair.decode(loc, eye[j].expand(len(x), k)) for j in range(k)]
        grid = torch.stack(cols, dim=1).flatten(0, 1)  # one row per example
        paths.append(plots.image_grid(grid, out_dir / "reconstructions.png", ncol=k + 2,
                                      title=f"data, recon., z decoded with {data.attribute}=0..{k - 1}"))
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(m, pair.latent_dim, generator=g)
        samples = torch.stack([pair.decode(z, eye[j].expand(m, k)) for j in range(k)], dim=1).flatten(0, 1)
        paths.append(plots.image_grid(samples, out_dir / "samples.png", ncol=k,
                                      title=f"p(x|z,s): z per row, {data.attribute}=0..{k - 1}"))
    x_tr, f_tr, _, _, names = probe_sets(data, seed, num_train=1000, num_test=1)
    col = names.index(data.attribute) if data.attribute in names else 0
    codes_ = encode_means(pair, data, x_tr, f_tr[:, col])
    paths.append(plots.latent_scatter(codes_, f_tr, names, out_dir / "latent_scatter.png",
                                      title=f"{getattr(data, 'name', 'data')}, q(z|x,s)"))
    pair.train(was)
    return paths
