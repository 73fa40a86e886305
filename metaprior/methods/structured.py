"""Factorized encoders/decoders and structured priors (survey sec. 4 and 5.2; mechanisms (ii) and (iii)).

Recipes registered here (each a frozen dataclass, ``build(data) -> (pair, objective)``):

* ``gmm_vae``    -- VAE with a learned Gaussian-mixture prior, component summed out (clustering).
* ``joint_vae``  -- JointVAE (Dupont 2018): continuous z and relaxed one-hot c with two capacities.
* ``vq_vae``     -- VQ-VAE (van den Oord et al. 2017): nearest-codebook quantization, EMA or loss codebook.
* ``m2``         -- semi-supervised M2 (Kingma et al. 2014), y enumerated exactly.
* ``m1m2``       -- the stack M1+M2 (Kingma et al. 2014, sec. 2.3): M2 on the codes of a frozen VAE (M1).
* ``ladder_vae`` / ``hierarchical_vae`` -- Ladder VAE (Sonderby et al. 2016) and the bottom-up hierarchy.
* ``vlae``       -- Variational Lossy Autoencoder (Chen et al. 2017): PixelCNN decoder with a causal window,
                    optionally a learned autoregressive-flow prior.
* ``pixel_vae``  -- PixelVAE (Gulrajani et al. 2017): two stochastic levels, shallow PixelCNN output.
* ``vladder``    -- Variational Ladder Autoencoder (Zhao et al. 2017): latents injected at decoder depths.

Losses are in nats per example and every term is logged by name in ``metrics.jsonl``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from ..data.semi_supervised import SemiSupervised
from ..guides.m2 import ConditionalGaussianEncoder
from ..guides.relaxed import check_temperature
from ..inference.elbo import ELBO
from ..inference.enum_elbo import EnumELBO
from ..inference.regularizers import CapacityGap, check_weight, rate
from ..models.autoregressive import PixelCNNBernoulli, check_binary_data
from ..models.flow_prior import AutoregressiveFlowPrior, FlowPriorVAE
from ..models.joint_vae import JointVAE as JointVAEModel
from ..models.ladder import HierarchicalVAE as HierarchicalModel
from ..models.likelihoods import LIKELIHOODS, make_likelihood
from ..models.m1m2 import FEATURES, M1Codes
from ..models.m2 import M2 as M2Model, M2Classification
from ..models.mixture_vae import MixturePrior, MixtureVAE, clusters_used
from ..models.vae import VAE as VAEModel
from ..models.vladder import VariationalLadderAE
from ..models.vq_vae import CODEBOOK_UPDATES, VQVAE as VQVAEModel, VectorQuantizer, codebook_perplexity
from ..nets.conv import NETS, build_encoder_decoder
from . import register
from .base import GaussianVAE, configure


@dataclass(frozen=True)
class StructuredRecipe:
    """Settings shared by recipes that are not the Gaussian VAE: code size and the nets.

    ``likelihood``/``obs_scale``/``net``/``hidden`` as in :class:`~metaprior.methods.base.GaussianVAE`.
    """

    latent_dim: int = 10
    likelihood: str = "auto"
    obs_scale: float = 0.1
    net: str = "auto"
    hidden: tuple[int, ...] = (400,)

    def __post_init__(self):
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {self.likelihood!r}; valid: {', '.join(LIKELIHOODS)}")
        if self.net not in NETS:
            raise ValueError(f"unknown net {self.net!r}; valid: {', '.join(NETS)}")

    def make_likelihood(self, data):
        return make_likelihood(self.likelihood, data.observation_shape, data.is_binary, self.obs_scale)


# ---------------------------------------------------------------------- mixture-prior VAE
@register("gmm_vae")
@dataclass(frozen=True)
class GMMVAE(GaussianVAE):
    """VAE with a learned Gaussian-mixture prior p(z) = sum_c pi_c N(mu_c, sigma_c^2), c summed out (clustering).

    ``components`` K mixture components; ``learn_prior`` learns weights, means and scales;
    ``init_spread`` is the standard deviation of the initial means. The rate is the Monte
    Carlo KL ``log q(z|x) - log p(z)`` (no closed form against a mixture). Logs
    ``clusters_used``, the perplexity of the batch's mean responsibilities (1..K).
    """

    components: int = 10
    learn_prior: bool = True
    init_spread: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if self.components < 1:
            raise ValueError(f"components must be >= 1, got {self.components}")
        if not self.init_spread >= 0:
            raise ValueError(f"init_spread must be >= 0, got {self.init_spread}")

    def build_model(self, data) -> nn.Module:
        lik = make_likelihood(self.likelihood, data.observation_shape, data.is_binary, self.obs_scale)
        enc, dec = build_encoder_decoder(self.net, data.observation_shape, 2 * self.latent_dim, self.latent_dim, self.hidden)
        prior = MixturePrior(self.components, self.latent_dim, self.init_spread, self.learn_prior)
        return MixtureVAE(enc, dec, self.latent_dim, lik, prior)

    def build(self, data):
        pair = self.build_model(data)
        return pair, self._elbo({"clusters_used": (0.0, partial(clusters_used, model=pair))})

    def _elbo(self, terms) -> ELBO:
        return ELBO(beta=self.beta_weight(), terms=terms, analytic_kl=self.analytic_kl, num_particles=self.num_particles)


# ---------------------------------------------------------------------- JointVAE
@register("joint_vae")
@dataclass(frozen=True)
class JointVAE(GaussianVAE):
    """JointVAE (Dupont 2018, sec. 3): D + gamma |KL_z - C_z(t)| + gamma |KL_c - C_c(t)|, c relaxed one-hot.

    ``latent_dim`` continuous dimensions plus one discrete code of ``categories`` values,
    relaxed as a Concrete / Gumbel-softmax sample at ``temperature`` (Dupont: 0.67).
    ``KL_c`` is the categorical KL of the logits against the uniform prior (no closed form
    exists between two relaxed distributions). Both capacities rise linearly from 0 over
    ``capacity_steps`` steps, to ``capacity_z`` and to ``min(capacity_c, log K)`` (a
    categorical KL from the uniform prior cannot exceed log K). Dupont's MNIST setting:
    gamma = 30, C_z -> 5 and C_c -> 5 (capped at log 10) over 25,000 steps, lambda = 0.67.
    ``beta`` adds ``beta * (KL_z + KL_c)`` (0 in the paper). Logs ``kl_z``, ``kl_c``,
    ``gap_z = |KL_z - C_z|``, ``gap_c``, and the current ``capacity_z``, ``capacity_c``.
    """

    beta: float = 0.0
    categories: int = 10
    temperature: float = 0.67
    gamma: float = 30.0
    capacity_z: float = 5.0
    capacity_c: float = 5.0
    capacity_steps: int = 25000

    def __post_init__(self):
        super().__post_init__()
        if self.categories < 2:
            raise ValueError(f"categories must be >= 2, got {self.categories}")
        check_temperature(self.temperature)
        check_weight("gamma", self.gamma)
        if not self.analytic_kl:
            raise ValueError("joint_vae needs analytic_kl=true: the discrete rate is the categorical KL of the logits "
                             "(a Monte Carlo KL between two relaxed densities is not what JointVAE optimizes)")
        CapacityGap(self.capacity_z, self.capacity_steps)
        CapacityGap(self.capacity_c, self.capacity_steps)

    def build_model(self, data) -> nn.Module:
        lik = make_likelihood(self.likelihood, data.observation_shape, data.is_binary, self.obs_scale)
        d, k = self.latent_dim, self.categories
        enc, dec = build_encoder_decoder(self.net, data.observation_shape, 2 * d + k, d + k, self.hidden)
        return JointVAEModel(enc, dec, d, k, lik, self.temperature)

    def terms(self, data) -> dict[str, tuple[Any, Any]]:
        gap_z = CapacityGap(self.capacity_z, self.capacity_steps, site="z")
        gap_c = CapacityGap(min(self.capacity_c, math.log(self.categories)), self.capacity_steps, site="c")
        return {"gap_z": (self.gamma, gap_z), "gap_c": (self.gamma, gap_c),
                "kl_z": (0.0, partial(rate, site="z")), "kl_c": (0.0, partial(rate, site="c")),
                "capacity_z": (0.0, gap_z.capacity), "capacity_c": (0.0, gap_c.capacity)}


# ---------------------------------------------------------------------- VQ-VAE
@register("vq_vae")
@dataclass(frozen=True)
class VQVAE(StructuredRecipe):
    """VQ-VAE (van den Oord et al. 2017, eq. 3; survey eq. 19): nearest-codebook codes, straight-through gradient.

    The encoder emits ``codes`` vectors of dimension ``latent_dim``, each snapped to one of
    ``codebook_size`` entries. ``codebook_update="ema"`` (default; their appendix A.1,
    ``decay`` 0.99) or ``"loss"`` (the codebook term ``||sg[z_e] - e||^2``); the commitment
    weight ``commitment`` is their beta = 0.25. ``rate`` is the constant ``codes * log K``;
    the factors ``codebook``/``commitment`` are logged as log-factors (negated losses);
    ``perplexity`` is exp of the entropy of the batch's code usage.
    """

    latent_dim: int = 8
    codes: int = 4
    codebook_size: int = 32
    commitment: float = 0.25
    codebook_update: str = "ema"
    decay: float = 0.99
    data_init: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.codes < 1:
            raise ValueError(f"codes (code vectors per example) must be >= 1, got {self.codes}")
        if self.codebook_size < 1:
            raise ValueError(f"codebook_size must be >= 1, got {self.codebook_size}")
        if self.codebook_update not in CODEBOOK_UPDATES:
            raise ValueError(f"unknown codebook_update {self.codebook_update!r}; valid: {', '.join(CODEBOOK_UPDATES)}")
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {self.decay}")
        check_weight("commitment", self.commitment)

    def build(self, data):
        m = self.codes * self.latent_dim
        enc, dec = build_encoder_decoder(self.net, data.observation_shape, m, m, self.hidden)
        vq = VectorQuantizer(self.codebook_size, self.latent_dim, self.codebook_update, self.decay, self.data_init)
        pair = VQVAEModel(enc, dec, self.codes, self.latent_dim, self.make_likelihood(data), vq, self.commitment)
        return pair, ELBO(beta=1.0, terms={"perplexity": (0.0, partial(codebook_perplexity, model=pair))})


# ---------------------------------------------------------------------- M2
M2_WEIGHTINGS = ("eq9", "batch")


@register("m2")
@dataclass(frozen=True)
class M2(StructuredRecipe):
    """Semi-supervised M2 (Kingma et al. 2014, eqs. 6-9): y enumerated exactly for unlabelled x, observed when labelled.

    Trains on a labelled data set keeping ``labels_per_class`` labels per class (chosen by
    ``label_seed``) and hiding the rest; each batch is ``labelled_fraction`` labelled
    (:class:`~metaprior.data.semi_supervised.SemiSupervised`). ``weighting="eq9"`` (default,
    Kingma et al.'s eq. 9): the loss is their J^alpha per example of the training set,
    ``[N_l E_l L(x, y) + N_u E_u U(x) + alpha_paper N_l E_l(-log q(y|x))] / N`` with the batch's
    labelled and unlabelled means standing in for E_l, E_u (:class:`~metaprior.models.m2.M2`
    scales their sites), N_l / N_u the labelled / unlabelled training-set sizes, and
    ``alpha = alpha_paper / N`` (their alpha = 0.1 N: ``alpha=0.1``). ``weighting="batch"``:
    ``(sum_l L(x, y) + sum_u U(x)) / B + alpha * E_l[-log q(y|x)]`` over the batch (each example
    of the batch weighs the same, so the oversampled labelled examples weigh
    ``labelled_fraction`` of the ELBO). ``U`` is exact in y by parallel enumeration
    (``TraceEnum_ELBO``). Logged: ``rate``
    (Monte Carlo KL of z plus the exact KL(q(y|x) || p(y)) of unlabelled examples),
    ``distortion``, ``label_nll`` (``log K`` per labelled example), ``classification`` and
    ``train_accuracy`` on the batch's labelled examples. ``metaprior evaluate`` reports the
    held-out accuracy of ``argmax q(y|x)`` and the enumerated held-out ELBO (x only).
    """

    latent_dim: int = 10
    hidden: tuple[int, ...] = (256,)
    labels_per_class: int = 10
    labelled_fraction: float = 0.5
    alpha: float = 0.1
    weighting: str = "eq9"
    label_seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        if self.labels_per_class < 1:
            raise ValueError(f"labels_per_class must be >= 1, got {self.labels_per_class}")
        if self.weighting not in M2_WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.weighting!r}; valid: {', '.join(M2_WEIGHTINGS)} "
                             "(eq9: Kingma et al. 2014 eq. 9 over the data set; batch: each batch example alike)")
        if not 0.0 <= self.labelled_fraction <= 1.0:
            raise ValueError(f"labelled_fraction must be in [0, 1], got {self.labelled_fraction}")
        check_weight("alpha", self.alpha)

    def semi_supervised(self, data) -> SemiSupervised:
        if isinstance(data, SemiSupervised):
            return data
        return SemiSupervised(data, self.labels_per_class, self.labelled_fraction, self.label_seed)

    def build(self, data):
        ssl = self.semi_supervised(data)
        return self._build_m2(ssl.num_classes, ssl.observation_shape, self.make_likelihood(ssl),
                              (len(ssl.labelled), len(ssl.unlabelled)))

    def _build_m2(self, k: int, shape, likelihood, counts: tuple[int, int]):
        h = self.hidden[-1] if self.hidden else 64
        classifier, _ = build_encoder_decoder(self.net, shape, k, 1, self.hidden)
        features, decoder = build_encoder_decoder(self.net, shape, h, self.latent_dim + k, self.hidden)
        encoder = ConditionalGaussianEncoder(features, h, k, self.latent_dim)
        eq9 = self.weighting == "eq9"
        pair = M2Model(classifier, encoder, decoder, k, likelihood, counts=counts if eq9 else None)
        # eq9: (alpha_paper / N) * sum_labelled CE, with the sum estimated by N_l * the batch's labelled mean
        alpha = self.alpha * counts[0] if eq9 else self.alpha
        terms = {"classification": (alpha, M2Classification(pair)),
                 "train_accuracy": (0.0, partial(_labelled_accuracy, pair=pair))}
        return pair, EnumELBO(terms=terms, label_sites=("y_l",))

    # -- its own engine: the command line hands it the plain labelled data set -----------------
    def train_run(self, data, train_cfg, out, record, resume: bool = False):
        from ..inference.trainer import Trainer

        ssl = self.semi_supervised(data)
        pair, objective = self.build(ssl)
        record = {**record, "semi_supervised": {"labelled": int(len(ssl.labelled)), "unlabelled": int(len(ssl.unlabelled)),
                                                "labelled_per_batch": ssl.split(train_cfg.batch_size)[0]}}
        last = Trainer(pair, objective, ssl, train_cfg, out=out, record=record).fit(resume=resume)
        return {**last, "test_accuracy": round(accuracy(pair, ssl), 4)}

    def _load(self, run_dir):
        from ..runs import load_run

        run = load_run(run_dir)
        return run, self.semi_supervised(run.data)

    def evaluate_run(self, run_dir, metrics=("accuracy",), seed: int = 0) -> dict:
        import torch

        bad = [m for m in metrics if m not in ("accuracy", "elbo", "iwae")]
        if bad:
            raise ValueError(f"unknown metric(s) {', '.join(bad)} for m2; valid: accuracy, elbo")
        run, ssl = self._load(run_dir)
        x, y = ssl.test_set()
        settings = {"num_examples": int(len(x)), "split": "test", "checkpoint_step": run.step}
        out = {"accuracy": {"value": accuracy(run.pair, ssl), "settings": {**settings, "rule": "argmax q(y|x)"}}}
        if "elbo" in metrics:
            torch.manual_seed(seed)
            with torch.no_grad():
                parts = EnumELBO()(run.pair.model, run.pair.guide, torch.as_tensor(x)).parts
            for k in ("elbo", "rate", "distortion"):
                out[k] = {"value": float(parts[k]), "settings": {**settings, "unit": "nats per example",
                                                                 "y": "enumerated (unlabelled)", "seed": seed}}
        return out

    def plot_run(self, run_dir):
        import torch
        from torch.nn import functional as F

        from .. import plots

        run, ssl = self._load(run_dir)
        pair, d = run.pair, run_dir / "plots"
        x = torch.as_tensor(ssl.test_observations(8, run.train.seed))
        paths = [plots.training_curves(run_dir / "metrics.jsonl", d / "training.png")]
        if len(ssl.observation_shape) == 3:
            with torch.no_grad():
                loc, _ = pair.encode(x)
                y = F.one_hot(pair.classify(x), pair.num_classes).to(x.dtype)
                recon = pair.decode(loc, y)
                paths.append(plots.image_grid(torch.cat([x, recon]), d / "reconstructions.png", ncol=len(x),
                                              title="data (top), reconstructions at argmax q(y|x) (bottom)"))
                g = torch.Generator().manual_seed(run.train.seed)
                z = torch.randn(6, pair.latent_dim, generator=g).repeat_interleave(pair.num_classes, 0)
                y = F.one_hot(torch.arange(pair.num_classes).repeat(6), pair.num_classes).to(z.dtype)
                paths.append(plots.image_grid(pair.decode(z, y), d / "samples.png", ncol=pair.num_classes,
                                              title="p(x | y, z): one z per row, y = 0.. per column"))
        return paths


@register("m1m2")
@dataclass(frozen=True)
class M1M2(M2):
    """The stacked model M1+M2 (Kingma et al. 2014, sec. 2.3): M2 trained on the codes z1 of a frozen VAE M1.

    Stage 1 trains M1, the ``vae`` recipe on x alone (``m1_latent_dim`` units, Kingma et al.:
    50; ``m1_hidden``, ``m1_net``, ``m1_likelihood``) for ``m1_steps`` steps with the run's
    batch size, learning rate and seed. Stage 2 freezes it and trains M2 exactly as the ``m2``
    recipe does (same settings, TraceEnum objective, labelled/unlabelled batches, ``steps``
    steps) with z1 in place of x and a Gaussian likelihood p(z1 | y, z2) (``likelihood``:
    auto = learned scale per unit, starting at ``code_scale``). ``feature="sample"`` (default) feeds M2 a fresh draw of
    q(z1|x) per example and step, as Kingma et al.'s code does; ``"mean"`` the posterior mean.
    Held-out accuracy classifies the posterior mean of q(z1|x) with ``argmax q(y|z1)``
    (:class:`~metaprior.models.m1m2.M1Codes`).

    The run directory holds stage 2 (``config.json``, ``metrics.jsonl``, ``checkpoints/``) and
    M1 in ``m1/``, itself a ``vae`` run directory (``metaprior evaluate RUN/m1``,
    ``metaprior plot RUN/m1``); ``--resume`` finishes M1 if it was stopped, else continues M2.
    ``metaprior evaluate RUN`` reports the test accuracy (and with ``--metrics accuracy,elbo``
    M2's enumerated ELBO of the test codes z1, in nats per example of z1, not of x).
    """

    m1_latent_dim: int = 50
    m1_hidden: tuple[int, ...] = (400,)
    m1_net: str = "auto"
    m1_likelihood: str = "auto"
    m1_steps: int = 2000
    feature: str = "sample"
    code_scale: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if self.m1_steps < 1:
            raise ValueError(f"m1_steps must be >= 1, got {self.m1_steps}")
        if self.feature not in FEATURES:
            raise ValueError(f"unknown feature {self.feature!r}; valid: {', '.join(FEATURES)}")
        if not self.code_scale > 0:
            raise ValueError(f"code_scale (initial scale of p(z1 | y, z2)) must be > 0, got {self.code_scale}")
        if self.likelihood == "bernoulli":
            raise ValueError("likelihood is M2's p(z1 | y, z2) over real-valued M1 codes: use auto, gaussian or "
                             "gaussian_learned (M1's own likelihood is m1_likelihood)")
        if self.net not in ("auto", "mlp"):
            raise ValueError(f"net={self.net!r}: M2's nets act on M1's code vectors, so they are MLPs (net=auto or mlp); "
                             "M1's net is m1_net")
        self.m1_method()  # validates m1_latent_dim, m1_net, m1_likelihood

    def m1_method(self):
        from . import METHODS

        try:
            return configure(METHODS["vae"], {"latent_dim": self.m1_latent_dim, "hidden": tuple(self.m1_hidden),
                                              "net": self.m1_net, "likelihood": self.m1_likelihood,
                                              "obs_scale": self.obs_scale})
        except ValueError as e:
            raise ValueError(f"M1 (m1_* settings): {e}") from None

    def codes(self, m1_pair, data) -> M1Codes:
        """M1's codes of every example of ``data`` as semi-supervised batches for M2."""
        m1_pair.eval()
        return M1Codes.from_encoder(m1_pair.encode, data, self.labels_per_class, self.labelled_fraction,
                                    self.label_seed, self.feature)

    def build(self, data):
        # ``load_run`` hands over the raw data set: the M2 part only needs the code space's shape
        ssl = data if isinstance(data, M1Codes) else self.semi_supervised(data)
        shape = (self.m1_latent_dim,)
        return self._build_m2(ssl.num_classes, shape, make_likelihood(self.likelihood, shape, False, self.code_scale),
                              (len(ssl.labelled), len(ssl.unlabelled)))

    # -- two stages, one run directory --------------------------------------------------------
    def train_run(self, data, train_cfg, out, record, resume: bool = False):
        import json
        from dataclasses import asdict

        from ..inference.trainer import TrainingError, checkpoints, versions

        out = Path(out)
        if not resume:
            if out.exists() and ((out / "config.json").exists() or checkpoints(out) or (out / "m1").exists()):
                raise TrainingError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
            # written now so that a run stopped during stage 1 can be resumed; stage 2's trainer rewrites it
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(json.dumps({**record, "train": asdict(train_cfg), "versions": versions()},
                                                        indent=2, default=str) + "\n")
            (out / "metrics.jsonl").write_text("")
        m1_pair = self._train_m1(data, train_cfg, out / "m1", record)
        m1_pair.requires_grad_(False)
        codes = self.codes(m1_pair, data)
        pair, last = self._train_m2(codes, train_cfg, out, record)
        return {**last, "test_accuracy": round(accuracy(pair, codes), 4)}

    def _train_m1(self, data, train_cfg, m1_dir: Path, record):
        import dataclasses
        import shutil

        import pyro

        from ..inference.trainer import Trainer, checkpoints
        from ..runs import load_run, method_record

        if checkpoints(m1_dir):
            run = load_run(m1_dir)
            if run.step >= self.m1_steps:
                return run.pair
        elif m1_dir.exists():  # stopped before its first checkpoint: start M1 again
            shutil.rmtree(m1_dir)
        m1 = self.m1_method()
        cfg = dataclasses.replace(train_cfg, steps=self.m1_steps,
                                  checkpoint_every=min(train_cfg.checkpoint_every, self.m1_steps))
        m1_record = {**method_record("vae", m1), "data": record["data"],
                     "stage": "M1 of an m1m2 run (Kingma et al. 2014, sec. 2.3)"}
        pyro.set_rng_seed(train_cfg.seed)
        pair, objective = m1.build(data)
        Trainer(pair, objective, data, cfg, out=m1_dir, record=m1_record).fit(resume=bool(checkpoints(m1_dir)))
        return pair.cpu()

    def _train_m2(self, codes: M1Codes, train_cfg, out: Path, record):
        import pyro

        from ..inference.trainer import Trainer, checkpoints

        resume = bool(checkpoints(out))
        if not resume:  # replace stage 1's placeholder config.json (and empty log) by the trainer's
            for name in ("config.json", "metrics.jsonl"):
                (out / name).unlink(missing_ok=True)
        pyro.set_rng_seed(train_cfg.seed + 1)  # M2's initial weights do not depend on how stage 1 ran
        pair, objective = self.build(codes)
        record = {**record, "semi_supervised": {"labelled": int(len(codes.labelled)),
                                                "unlabelled": int(len(codes.unlabelled)),
                                                "labelled_per_batch": codes.split(train_cfg.batch_size)[0]},
                  "m1": {"run_dir": "m1", "steps": self.m1_steps, "feature": self.feature}}
        last = Trainer(pair, objective, codes, train_cfg, out=out, record=record).fit(resume=resume)
        return pair.cpu(), last

    def _load_stack(self, run_dir):
        from ..runs import load_run

        run_dir = Path(run_dir)
        if not (run_dir / "m1" / "config.json").exists():
            raise FileNotFoundError(f"{run_dir / 'm1'} holds no M1 run; the m1m2 run in {run_dir} is incomplete "
                                    f"(continue it with `metaprior train --resume --out {run_dir}`)")
        m1 = load_run(run_dir / "m1")
        return load_run(run_dir), m1, self.codes(m1.pair, m1.data)

    def _load(self, run_dir):
        run, _, codes = self._load_stack(run_dir)
        return run, codes

    def evaluate_run(self, run_dir, metrics=("accuracy",), seed: int = 0) -> dict:
        out = super().evaluate_run(run_dir, metrics, seed)
        for v in out.values():
            v["settings"]["input"] = "posterior mean of M1's q(z1|x)"
        return out

    def plot_run(self, run_dir):
        import torch
        from torch.nn import functional as F

        from .. import plots

        run_dir = Path(run_dir)
        run, m1, codes = self._load_stack(run_dir)
        pair, d = run.pair, run_dir / "plots"
        paths = [plots.training_curves(run_dir / "metrics.jsonl", d / "training.png"),
                 plots.training_curves(run_dir / "m1" / "metrics.jsonl", d / "m1_training.png")]
        if len(m1.data.observation_shape) == 3:
            with torch.no_grad():
                x = torch.as_tensor(m1.data.test_observations(8, run.train.seed))
                z1, _ = m1.pair.encode(x)
                z2, _ = pair.encode(z1)
                y = F.one_hot(pair.classify(z1), pair.num_classes).to(x.dtype)
                recon = m1.pair.decode(pair.decode(z2, y))
                paths.append(plots.image_grid(torch.cat([x, recon]), d / "reconstructions.png", ncol=len(x),
                                              title="data (top); x -> z1 -> (y*, z2) -> z1 -> x (bottom)"))
                g = torch.Generator().manual_seed(run.train.seed)
                z2 = torch.randn(6, pair.latent_dim, generator=g).repeat_interleave(pair.num_classes, 0)
                y = F.one_hot(torch.arange(pair.num_classes).repeat(6), pair.num_classes).to(z2.dtype)
                paths.append(plots.image_grid(m1.pair.decode(pair.decode(z2, y)), d / "samples.png",
                                              ncol=pair.num_classes,
                                              title="M1 decoder at the mean of p(z1 | y, z2): one z2 per row, y = 0.."))
        return paths


def _labelled_accuracy(ctx, pair) -> "torch.Tensor":
    import torch

    x, y, labelled = ctx.args[:3]
    labelled = labelled.bool()
    if not bool(labelled.any()):
        return x.new_zeros(())
    with torch.no_grad():
        return (pair.classify(x[labelled]) == y[labelled]).to(x.dtype).mean()


def accuracy(pair, ssl: SemiSupervised, batch_size: int = 1000) -> float:
    """Held-out accuracy of ``argmax_y q(y|x)`` on the wrapped data set's test split."""
    import torch

    x, y = ssl.test_set()
    was = pair.training
    pair.eval()
    with torch.no_grad():
        pred = torch.cat([pair.classify(torch.as_tensor(x[i:i + batch_size])) for i in range(0, len(x), batch_size)])
    pair.train(was)
    return float((pred.numpy() == y).mean())


# ---------------------------------------------------------------------- hierarchical VAEs
@register("ladder_vae")
@dataclass(frozen=True)
class LadderVAE(GaussianVAE):
    """Ladder VAE (Sonderby et al. 2016): L Gaussian layers, top-down inference with precision-weighted merges.

    ``layers`` stochastic layers of ``latent_dim`` units each, or the sizes ``latent_dims``
    (bottom first; Sonderby et al.'s MNIST model: 64,32,16,8,4). ``hidden[i]`` is the width of
    the deterministic block of layer i (the last repeats). KL warm-up: ``beta_schedule``
    ``linear:STEPS`` ramps the rate's weight from 0 to ``beta`` (their sec. 2.3; default
    over 1000 steps). ``batch_norm`` (default on, their sec. 2.3): batch normalization in every
    deterministic layer (the hierarchical models only; ``pixel_vae``/``vladder`` ignore it).
    Logs ``kl_z1`` ... ``kl_zL``, the analytic KL of each layer.
    """

    latent_dim: int = 8
    layers: int = 3
    latent_dims: tuple[int, ...] = ()
    hidden: tuple[int, ...] = (256, 128, 64)
    beta_schedule: str = "linear:1000"
    batch_norm: bool = True
    inference = "ladder"

    def __post_init__(self):
        super().__post_init__()
        if self.layers < 1:
            raise ValueError(f"layers must be >= 1, got {self.layers}")
        if self.latent_dims and min(self.latent_dims) < 1:
            raise ValueError(f"latent_dims must be positive, got {self.latent_dims}")

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(self.latent_dims) if self.latent_dims else (self.latent_dim,) * self.layers

    def make_likelihood(self, data):
        return make_likelihood(self.likelihood, data.observation_shape, data.is_binary, self.obs_scale)

    def build_model(self, data) -> nn.Module:
        hidden = tuple(self.hidden) or (64,)
        stem, dec = build_encoder_decoder(self.net, data.observation_shape, hidden[0], self.dims[0], hidden[:1])
        return HierarchicalModel(stem, hidden[0], dec, self.dims, hidden, self.make_likelihood(data), inference=self.inference,
                                 batch_norm=self.batch_norm)

    def terms(self, data) -> dict[str, tuple[Any, Any]]:
        return {f"kl_z{i}": (0.0, partial(rate, site=f"z{i}")) for i in range(1, len(self.dims) + 1)}


@register("hierarchical_vae")
@dataclass(frozen=True)
class BottomUpHierarchicalVAE(LadderVAE):
    """Hierarchical VAE with bottom-up inference q(z_1|x) q(z_2|z_1) ... (Sonderby et al. 2016, sec. 2.1).

    The same generative model, sizes and KL warm-up as ``ladder_vae``; only the guide differs.
    Logs ``kl_z1`` ... ``kl_zL``.
    """

    inference = "bottom_up"


# ---------------------------------------------------------------------- autoregressive decoders
def _pixelcnn(method, data) -> PixelCNNBernoulli:
    name = type(method).__name__
    check_binary_data(data, name)
    lik = PixelCNNBernoulli(data.observation_shape, 0, method.pixel_channels, method.pixel_layers)
    window = method.window if method.window >= 0 else lik.full_window
    return PixelCNNBernoulli(data.observation_shape, window, method.pixel_channels, method.pixel_layers)


def _check_pixel_settings(method) -> None:
    if method.window < -1:
        raise ValueError(f"window must be >= 0 (half-width of the causal window) or -1 (full), got {method.window}")
    if method.pixel_channels < 1 or method.pixel_layers < 0:
        raise ValueError(f"pixel_channels must be >= 1 and pixel_layers >= 0, got {method.pixel_channels}, "
                         f"{method.pixel_layers}")


@register("vlae")
@dataclass(frozen=True)
class VLAE(GaussianVAE):
    """Variational Lossy Autoencoder (Chen et al. 2017, sec. 3.2): a VAE whose decoder is a PixelCNN of window w.

    p(x | z) = prod_j Bernoulli(x_j | x_{W(j)}, h(z)_j), W(j) the earlier pixels within
    ``window`` rows/columns of j (-1: every earlier pixel, the full-receptive-field
    variant). A small window cannot model global structure, so it must go through z
    (Chen et al.'s information-preference argument, their sec. 3.1). PixelCNN:
    ``pixel_channels`` wide, ``pixel_layers`` 1x1 layers after the masked window convolution.
    Needs binary single-channel images (digits: ``--data-option binarize=true``).

    ``prior``: ``"normal"`` (N(0, I), analytic rate) or ``"flow"``, Chen et al.'s learned
    autoregressive-flow prior (their sec. 3.2; :mod:`metaprior.models.flow_prior`):
    ``flow_layers`` MADE-masked affine autoregressive layers of ``flow_hidden`` units, starting
    at the identity (so at step 0 it is N(0, I)) and trained with the rest of the model. With
    the flow the rate is the Monte Carlo ``log q(z|x) - log p(z)`` at the posterior sample
    (no closed-form KL exists), still logged as ``rate``.
    """

    window: int = 2
    pixel_channels: int = 32
    pixel_layers: int = 2
    prior: str = "normal"
    flow_layers: int = 2
    flow_hidden: tuple[int, ...] = (64,)

    def __post_init__(self):
        super().__post_init__()
        _check_pixel_settings(self)
        if self.prior not in VLAE_PRIORS:
            raise ValueError(f"unknown prior {self.prior!r}; valid: {', '.join(VLAE_PRIORS)}")
        if self.flow_layers < 1:
            raise ValueError(f"flow_layers must be >= 1, got {self.flow_layers}")
        if not self.flow_hidden or min(self.flow_hidden) < 1:
            raise ValueError(f"flow_hidden must be one or more positive layer sizes, got {self.flow_hidden}")

    def build_model(self, data) -> nn.Module:
        lik = _pixelcnn(self, data)
        enc, dec = build_encoder_decoder(self.net, data.observation_shape, 2 * self.latent_dim, self.latent_dim, self.hidden)
        if self.prior == "flow":
            flow = AutoregressiveFlowPrior(self.latent_dim, self.flow_layers, self.flow_hidden)
            return FlowPriorVAE(enc, dec, self.latent_dim, lik, flow)
        return VAEModel(enc, dec, self.latent_dim, lik)


VLAE_PRIORS = ("normal", "flow")


@register("pixel_vae")
@dataclass(frozen=True)
class PixelVAE(LadderVAE):
    """PixelVAE (Gulrajani et al. 2017, sec. 3.2): two stochastic levels and a shallow conditional PixelCNN output.

    p(z_2) p(z_1 | z_2) p(x | z_1) with bottom-up inference q(z_1 | x) q(z_2 | z_1) (the
    ``hierarchical_vae`` networks; conv nets for 28x28 / 64x64 images with ``net=auto``) and
    the autoregressive Bernoulli decoder of ``window`` half-width (default 1: a 3x3 masked
    convolution, "shallow"). Logs ``kl_z1``, ``kl_z2``. Needs binary single-channel images.
    """

    layers: int = 2
    beta_schedule: str = "constant"
    window: int = 1
    pixel_channels: int = 32
    pixel_layers: int = 2
    inference = "bottom_up"

    def __post_init__(self):
        super().__post_init__()
        _check_pixel_settings(self)

    def make_likelihood(self, data):
        return _pixelcnn(self, data)


@register("vladder")
@dataclass(frozen=True)
class VLadder(LadderVAE):
    """Variational Ladder Autoencoder (Zhao et al. 2017, sec. 4): independent N(0, I) layers injected at decoder depths.

    ``layers`` latents of ``latent_dim`` units (or ``latent_dims``, z1 nearest the data),
    ``hidden[l]`` the width at depth l. No hierarchy in p(z) and no KL warm-up by default.
    Logs ``kl_z1`` ... ``kl_zL``.
    """

    beta_schedule: str = "constant"

    def build_model(self, data) -> nn.Module:
        hidden = tuple(self.hidden) or (64,)
        stem, dec = build_encoder_decoder(self.net, data.observation_shape, hidden[0], hidden[0], hidden[:1])
        return VariationalLadderAE(stem, hidden[0], dec, self.dims, hidden, self.make_likelihood(data))
