"""Attribute-invariant codes by a latent critic: FaderNetworks and two-step disentanglement (survey sec. 3.4).

* ``fader`` -- FaderNetworks (Lample et al. 2017, eq. 2-3; survey Tschannen et al. 2018,
  eq. 18): a deterministic autoencoder whose decoder is conditioned on the attribute y,
  ``min_{E, D} E[-log p(x | E(x), y)] + lambda * E[-log P_critic(1 - y | E(x))]``, while a
  latent critic learns ``P(y | z)`` on the (detached) codes. Editing: decode ``E(x)`` with
  another y (:meth:`~metaprior.models.fader.FaderNetwork.edit`).
* ``two_step`` -- the two-step method of Hadad, Wolf & Shahar (2018, sec. 3): step 1 trains
  an encoder E1 with a classifier head to predict y; step 2 freezes E1 and trains a second
  encoder E2 and a decoder ``D(E1(x), E2(x))`` for reconstruction, with a critic on E2's
  code that must not predict y (Hadad et al.'s adversarial classifier, here the Fader critic).

Attributes come from :class:`~metaprior.data.attributes.WithAttribute` (``prepare_data``):
``attribute`` names a ground-truth factor (dSprites: shape, scale, orientation, pos_x, pos_y)
or ``label``; ``encoding="continuous"`` gives one column ``index / (K - 1)`` in [0, 1],
``"onehot"`` K columns.

The critic's loss (:func:`attribute_nll`). One-hot y: the softmax cross-entropy, as Lample et
al. For continuous y in [0, 1] (Lample et al. only have binary attributes, with a 2-way
softmax): a Bernoulli cross-entropy with y as the soft target,
``-[y log sigma(l) + (1 - y) log(1 - sigma(l))]``, minimized by ``sigma(l) = y``; for a binary
y it is the 2-way softmax loss exactly. It includes the entropy of the soft target, so its
floor is ``E[H(y)]`` rather than 0 (0.41 nats for dSprites' six evenly spaced scales).

The encoder's adversarial term (name ``adversarial``) is the critic's loss with flipped
targets (Lample et al., sec. 3.2: "the encoder ... is trained to make the discriminator
predict 1 - y"): for a continuous or binary y the target ``1 - y``; for K > 2 categories
Lample et al.'s code draws a random other category, and the term here uses its expectation,
the soft target ``(1 - y) / (K - 1)`` (the cross-entropy is linear in the target, so the two
have the same expected value and gradient, without the sampling noise).

The weight ``lambda_`` rises linearly from 0 over ``lambda_warmup`` steps (Lample et al.:
from 0 to 1e-4 over 500,000 steps; ``lambda_warmup=0``: constant). Their 1e-4 weighs a
per-pixel *mean* squared error (images in [-1, 1]); the distortion here is a log-likelihood
*summed* over pixels (nats per example, e.g. 4096 Bernoulli pixels for dSprites), so the
comparable weight is about 1e-4 x the number of pixels (0.4 for 64 x 64 images) times the
ratio of the two losses' scales. The default ``lambda_ = 100`` (warm-up 500 steps) was chosen
on dSprites with MLP nets (``experiments/attribute_editing.py``): at lambda_ = 1 and 10 the
critic kept predicting the scale from z (batch MSE 0.017 and 0.036 against 0.117 for no
information) and the decoder ignored y (edits moved the implied scale by a slope of 0.01);
at 100 the critic's MSE stayed near 0.1 and edits followed y (slope 0.67). Scale lambda_
with the number of pixels for other image sizes. The critic is an MLP (``critic_hidden``) trained by
its own Adam (``critic_lr = 2e-4``, betas (0.5, 0.999): Lample et al.'s discriminator
optimizer; they add dropout 0.3, omitted here) for one step after each autoencoder step,
on the same batch's detached codes. Logged: ``adversarial``, ``attributecritic_loss`` and
``attribute_critic_accuracy`` (one-hot) or ``attribute_critic_mse`` (continuous, of
``sigma(l)`` against y).

``metaprior evaluate`` (:meth:`Fader.evaluate_run`) fits fresh probes from the codes z to the
attribute on held-out data -- ``critic_accuracy`` (logistic regression) and
``critic_accuracy_mlp`` (a one-hidden-layer MLP, since an adversary that fools its own
critic can leave y decodable by another one), each beside its chance level (the majority
value's frequency), and for continuous y ``critic_r2`` (linear regression, 0 = predicting
the mean) -- and the held-out ``distortion``. ``metaprior plot`` draws the training curves,
the critic's curves, reconstructions and an edit grid.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..data.attributes import ENCODINGS, WithAttribute
from ..inference.critics import Critic
from ..inference.elbo import ELBO, TermContext
from ..inference.regularizers import check_weight
from ..evaluation.metrics import probe_accuracy, probe_r2
from ..inference.schedules import Schedule, parse_schedule
from ..models.fader import FaderNetwork, TwoStepAutoencoder
from ..models.likelihoods import make_likelihood
from ..nets.conv import build_encoder_decoder
from . import register
from .adversarial import _Autoencoder


# ---------------------------------------------------------------------- the attribute losses
def _check_encoding(encoding: str) -> str:
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown attribute encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
    return encoding


def attribute_nll(logits: torch.Tensor, target: torch.Tensor, encoding: str) -> torch.Tensor:
    """Mean over the batch of ``-log P(target | logits)``, soft targets allowed (see the module docstring).

    ``"onehot"``: softmax cross-entropy ``-sum_k t_k log softmax(l)_k``; ``"continuous"``:
    Bernoulli cross-entropy per column, summed over columns, target in [0, 1].
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(target.shape)} differ in shape")
    if _check_encoding(encoding) == "onehot":
        return -(target * F.log_softmax(logits, -1)).sum(-1).mean()
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1).mean()


def flip_attribute(y: torch.Tensor, encoding: str) -> torch.Tensor:
    """The encoder's target: ``1 - y`` (continuous or binary), or ``(1 - y) / (K - 1)`` for K one-hot categories."""
    if _check_encoding(encoding) == "onehot" and y.shape[-1] > 2:
        return (1.0 - y) / (y.shape[-1] - 1)
    return 1.0 - y


def attribute_probabilities(logits: torch.Tensor, encoding: str) -> torch.Tensor:
    """``P(y | .)``: softmax rows (one-hot) or sigmoids (continuous: the predicted value in [0, 1])."""
    return torch.softmax(logits, -1) if _check_encoding(encoding) == "onehot" else torch.sigmoid(logits)


def _attribute_of(ctx: TermContext, width: int, who: str) -> torch.Tensor:
    if len(ctx.args) < 2 or not torch.is_tensor(ctx.args[1]):
        raise ValueError(f"{who} needs (x, y) batches with the attribute y: train on "
                         "metaprior.data.attributes.WithAttribute data (the recipe's prepare_data does this)")
    y = ctx.args[1]
    if y.dim() != 2 or y.shape[1] != width:
        raise ValueError(f"{who} was built for attributes of width {width}, got y of shape {tuple(y.shape)}")
    return y


class AttributeCritic(Critic):
    """FaderNetworks' latent discriminator ``P(y | z)``: an MLP from the codes to the attribute's logits.

    As an ELBO term it returns the encoder's loss, the critic's cross-entropy against the
    flipped targets (:func:`flip_attribute`), differentiable in the codes. :meth:`update`
    trains the critic on the batch's detached codes against the true y. Logs
    ``attribute_critic_accuracy`` (one-hot) or ``attribute_critic_mse`` (continuous).
    """

    def __init__(self, dim: int, attribute_dim: int, encoding: str = "onehot", hidden: Sequence[int] = (256, 256, 256),
                 lr: float = 2e-4, betas: tuple[float, float] = (0.5, 0.999), site: str = "z"):
        super().__init__(dim, hidden, lr, betas, site)
        self.attribute_dim, self.encoding = int(attribute_dim), _check_encoding(encoding)
        if self.attribute_dim < 1 or (self.encoding == "onehot" and self.attribute_dim < 2):
            raise ValueError(f"a {encoding} attribute needs width >= {2 if encoding == 'onehot' else 1}, got {attribute_dim}")
        last = self.net[-1]
        self.net[-1] = nn.Linear(last.in_features, self.attribute_dim)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Attribute logits [M, attribute_dim]."""
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"{type(self).__name__} was built for codes [M, {self.dim}], got shape {tuple(z.shape)}")
        return self.net(z)

    def forward(self, ctx: TermContext) -> torch.Tensor:
        y = _attribute_of(ctx, self.attribute_dim, type(self).__name__)
        return attribute_nll(self.logits(self.codes(ctx)), flip_attribute(y, self.encoding), self.encoding)

    def update(self, ctx: TermContext) -> dict[str, torch.Tensor]:
        y = _attribute_of(ctx, self.attribute_dim, type(self).__name__)
        logits = self.logits(self.codes(ctx).detach())
        out = {"loss": attribute_nll(logits, y, self.encoding)}
        out.update(_fit_metrics("attribute_critic", logits.detach(), y, self.encoding))
        return out


def _fit_metrics(prefix: str, logits: torch.Tensor, y: torch.Tensor, encoding: str) -> dict[str, torch.Tensor]:
    p = attribute_probabilities(logits, encoding)
    if encoding == "onehot":
        return {f"{prefix}_accuracy": (p.argmax(-1) == y.argmax(-1)).to(p.dtype).mean()}
    return {f"{prefix}_mse": (p - y).pow(2).mean()}


class SpecifiedClassification:
    """Step 1 of Hadad et al.: ``E[-log P(y | classifier(E1(x)))]`` (term ``classification``), gradients into E1.

    From ``classifier_steps`` on it is computed without gradients (E1 is frozen; its weight is 0 then).
    With ``metric=True`` it returns the batch accuracy (one-hot) or MSE (continuous) instead.
    """

    def __init__(self, pair: TwoStepAutoencoder, attribute_dim: int, encoding: str, classifier_steps: int,
                 metric: bool = False):
        self.pair, self.attribute_dim, self.encoding = pair, int(attribute_dim), _check_encoding(encoding)
        self.classifier_steps, self.metric = int(classifier_steps), bool(metric)

    def __call__(self, ctx: TermContext) -> torch.Tensor:
        y = _attribute_of(ctx, self.attribute_dim, "the two_step classification")
        x = ctx.args[0]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.metric and ctx.step < self.classifier_steps):
            logits = self.pair.class_logits(x)
            if self.metric:
                return next(iter(_fit_metrics("classifier", logits, y, self.encoding).values())).detach()
            return attribute_nll(logits, y, self.encoding)


# ---------------------------------------------------------------------- recipes
@register("fader")
@dataclass(frozen=True)
class Fader(_Autoencoder):
    """FaderNetworks (Lample et al. 2017, eqs. 2-3; survey eq. 18): D(E(x), y) + lambda * critic loss on flipped y.

    ``attribute`` (default ``scale``) and ``encoding`` (``continuous`` or ``onehot``) pick y;
    ``lambda_`` weighs the term ``adversarial`` with a linear warm-up over ``lambda_warmup``
    steps (0: constant); the critic has ``critic_hidden`` layers and Adam(``critic_lr``,
    betas (0.5, 0.999)). The encoder is deterministic (``deterministic=false``: Gaussian,
    the critic then sees sampled codes). ``rate`` is the codes' prior cross-entropy, logged
    with weight ``beta = 0`` as for ``ae``. See the module docstring for the losses.
    """

    attribute: str = "scale"
    encoding: str = "continuous"
    lambda_: float = 100.0
    lambda_warmup: int = 500
    critic_lr: float = 2e-4

    def __post_init__(self):
        super().__post_init__()
        _check_encoding(self.encoding)
        check_weight("lambda_", self.lambda_)
        if int(self.lambda_warmup) != self.lambda_warmup or self.lambda_warmup < 0:
            raise ValueError(f"lambda_warmup must be an integer number of steps >= 0 (0: no warm-up), got {self.lambda_warmup}")
        if not isinstance(self.attribute, str) or not self.attribute.strip():
            raise ValueError("attribute must name a factor of the data set (e.g. scale, shape) or 'label'")

    # -- data -----------------------------------------------------------------------------------
    def prepare_data(self, data) -> WithAttribute:
        """``WithAttribute(data, attribute, encoding)``; an unknown attribute's error lists the valid ones."""
        if isinstance(data, WithAttribute):
            if (data.attribute, data.encoding) == (self.attribute, self.encoding):
                return data
            data = data.data
        return WithAttribute(data, self.attribute, self.encoding)

    def lambda_weight(self) -> float | Schedule:
        if self.lambda_warmup:
            return parse_schedule(f"linear:{self.lambda_}:{int(self.lambda_warmup)}")
        return self.lambda_

    def critic(self, data: WithAttribute) -> AttributeCritic:
        return AttributeCritic(self.latent_dim, data.attribute_dim, self.encoding, self.critic_hidden, self.critic_lr)

    # -- model and objective --------------------------------------------------------------------
    def build_model(self, data) -> FaderNetwork:
        data = self.prepare_data(data)
        lik = make_likelihood(self.likelihood, data.observation_shape, data.is_binary, self.obs_scale)
        d, k = self.latent_dim, data.attribute_dim
        enc, dec = build_encoder_decoder(self.net, data.observation_shape, d if self.deterministic else 2 * d, d + k,
                                         self.hidden)
        return FaderNetwork(enc, dec, d, k, lik, self.make_prior(), self.deterministic)

    def terms(self, data) -> dict[str, tuple[Any, Any]]:
        return {"adversarial": (self.lambda_weight(), self.critic(self.prepare_data(data)))}

    # -- evaluation and plots -------------------------------------------------------------------
    metric_names = ("critic_accuracy", "critic_accuracy_mlp", "critic_r2", "distortion")

    def _codes(self, pair, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The codes to probe, by metric prefix."""
        return {"critic": pair.encode(x)[0]}

    def evaluate_run(self, run_dir, metrics=("critic_accuracy", "distortion"), seed: int = 0,
                     num_examples: int = 1000) -> dict:
        """Fresh probes from the codes to y on held-out data, and the held-out distortion.

        ``metrics``: any of :attr:`metric_names`; ``elbo``, ``iwae`` (the CLI's defaults, which
        do not apply to a deterministic encoder) and ``all`` select them all.
        """
        from ..runs import load_run

        chosen = _chosen_metrics(metrics, self.metric_names, type(self).__name__)
        run = load_run(run_dir)
        self, data, pair = run.method, run.data, run.pair  # the run's own recipe (the caller's may differ in settings)
        x, v = data.test_batch(2 * num_examples, seed)
        x = torch.as_tensor(x)
        y = torch.as_tensor(data.encode(v))
        base = {"split": "held-out (test stream)", "checkpoint_step": run.step, "seed": seed,
                "attribute": data.attribute, "encoding": data.encoding}
        out: dict[str, dict] = {}
        with torch.no_grad():
            codes = {k: torch.cat([c for c in _chunks(lambda xb: self._codes(pair, xb)[k], x)]).numpy()
                     for k in self._codes(pair, x[:2])}
        n = num_examples
        for prefix, c in codes.items():
            for kind, suffix in (("logistic", ""), ("mlp", "_mlp")):
                name = f"{prefix}_accuracy{suffix}"
                if name in chosen:
                    acc, chance = probe_accuracy(c[:n], v[:n], c[n:], v[n:], kind=kind, seed=seed)
                    out[name] = {"value": acc, "settings": {**base, "probe": PROBES[kind], "chance": chance,
                                                            "target": f"{data.attribute} value index ({data.num_values} classes)",
                                                            "num_train": n, "num_test": len(c) - n}}
            if f"{prefix}_r2" in chosen and data.encoding == "continuous":
                out[f"{prefix}_r2"] = {"value": probe_r2(c[:n], y[:n, 0].numpy(), c[n:], y[n:, 0].numpy()),
                                       "settings": {**base, "probe": "linear regression on standardized codes",
                                                    "baseline": "0 = predicting the training mean", "num_train": n,
                                                    "num_test": len(c) - n}}
        out.update(self._extra_metrics(pair, data, x[n:], v[n:], y[n:], chosen, base))
        if "distortion" in chosen:
            out["distortion"] = {"value": heldout_distortion(pair, x[n:], y[n:]),
                                 "settings": {**base, "unit": "nats per example, -log p(x | code, ...)",
                                              "num_examples": len(x) - n}}
        return out

    def _extra_metrics(self, pair, data, x, v, y, chosen, base) -> dict:
        return {}

    def plot_run(self, run_dir) -> list[Path]:
        from .. import plots
        from ..runs import load_run

        run = load_run(run_dir)
        self, data, pair = run.method, run.data, run.pair
        d = Path(run_dir) / "plots"
        x, v = data.test_batch(8, run.train.seed)
        x, y = torch.as_tensor(x), torch.as_tensor(data.encode(v))
        paths = [plots.training_curves(Path(run_dir) / "metrics.jsonl", d / "training.png"),
                 plots.training_curves(Path(run_dir) / "metrics.jsonl", d / "critic.png", CRITIC_KEYS)]
        with torch.no_grad():
            paths.append(plots.image_grid(torch.cat([x, self._reconstruct(pair, x, y)]), d / "reconstructions.png",
                                          ncol=len(x), title="data (top) and reconstructions (bottom)"))
            paths += self._extra_plots(pair, data, x[:5], y[:5], d)
        return paths

    def _reconstruct(self, pair, x, y) -> torch.Tensor:
        return pair.edit(x, y)

    def _extra_plots(self, pair, data, x, y, d) -> list[Path]:
        from .. import plots

        values, labels = edit_values(data)
        cols = [x, pair.edit(x, y)] + [pair.edit(x, val) for val in values]
        grid = torch.stack(cols, 1).reshape(-1, *x.shape[1:])
        title = f"edits of {data.attribute}: data, reconstruction, then y = " + ", ".join(labels)
        return [plots.image_grid(grid, d / "edits.png", ncol=len(cols), title=title)]


@register("two_step")
@dataclass(frozen=True)
class TwoStep(Fader):
    """Two-step disentanglement (Hadad, Wolf & Shahar 2018, sec. 3): E1 + classifier, then E2 and D(E1(x), E2(x)).

    Step 1 (steps ``< classifier_steps``): the term ``classification`` (weight 1, then 0)
    trains E1 (``specified_dim`` outputs) and a linear classifier head to predict y
    (:func:`attribute_nll`). From ``classifier_steps`` on E1 and the head are frozen: no
    term reaches them any more, so they get no gradient and Adam leaves them unchanged.
    Step 2: E2 (``latent_dim``), the decoder ``D(concat(E1(x), E2(x)))`` and the Fader critic
    on E2's code (term ``adversarial``, weight ``lambda_``, warm-up ``lambda_warmup`` counted
    from step 0) minimize the reconstruction and fool the critic.

    Both steps run in one ``metaprior train``: E1's code enters the decoder detached (the
    guide's ``"s"`` site), so E1 only ever sees the classifier's gradient and is exactly the
    step-1 encoder of Hadad et al. E2, the decoder and the critic are not held back during
    step 1: they already train on E1's (still moving) code, a warm start for step 2 that
    leaves E1 untouched (Hadad et al. run the steps one after the other). Logs
    ``classification``, ``classifier_accuracy`` (one-hot) or ``classifier_mse`` (continuous)
    on the batch, and the critic's ``attributecritic_loss`` and accuracy / MSE.
    ``metaprior evaluate`` adds ``specified_accuracy`` (a probe on E1's code, which should
    predict y) and ``classifier_accuracy`` (the head, held out); ``critic_*`` probe E2's code.
    ``metaprior plot`` draws a swap grid (E1 part of one example, E2 part of another) and an
    interpolation of the E1 part between two examples.
    """

    specified_dim: int = 4
    classifier_steps: int = 1000

    metric_names = ("critic_accuracy", "critic_accuracy_mlp", "critic_r2", "specified_accuracy",
                    "specified_accuracy_mlp", "specified_r2", "classifier_accuracy", "distortion")

    def __post_init__(self):
        super().__post_init__()
        if self.specified_dim < 1:
            raise ValueError(f"specified_dim (size of E1's code) must be >= 1, got {self.specified_dim}")
        if int(self.classifier_steps) != self.classifier_steps or self.classifier_steps < 0:
            raise ValueError(f"classifier_steps must be an integer >= 0, got {self.classifier_steps}")
        if not self.deterministic:
            raise ValueError("two_step has deterministic encoders only; drop deterministic=false")

    def build_model(self, data) -> TwoStepAutoencoder:
        data = self.prepare_data(data)
        shape, k, d, ds = data.observation_shape, data.attribute_dim, self.latent_dim, self.specified_dim
        lik = make_likelihood(self.likelihood, shape, data.is_binary, self.obs_scale)
        e1, _ = build_encoder_decoder(self.net, shape, ds, 1, self.hidden)
        e2, dec = build_encoder_decoder(self.net, shape, d, ds + d, self.hidden)
        return TwoStepAutoencoder(e1, ds, nn.Linear(ds, k), e2, dec, d, lik, self.make_prior())

    def build(self, data):
        data = self.prepare_data(data)
        pair = self.build_model(data)
        k, enc = data.attribute_dim, self.encoding
        metric = "classifier_accuracy" if enc == "onehot" else "classifier_mse"
        terms = {"classification": (parse_schedule(f"until:1:{self.classifier_steps}"),
                                    SpecifiedClassification(pair, k, enc, self.classifier_steps)),
                 metric: (0.0, SpecifiedClassification(pair, k, enc, self.classifier_steps, metric=True)),
                 **self.terms(data)}
        return pair, ELBO(beta=self.beta_weight(), terms=terms, analytic_kl=self.analytic_kl,
                          num_particles=self.num_particles)

    def _codes(self, pair, x):
        s, z = pair.codes(x)
        return {"critic": z, "specified": s}

    def _extra_metrics(self, pair, data, x, v, y, chosen, base) -> dict:
        if "classifier_accuracy" not in chosen:
            return {}
        with torch.no_grad():
            logits = torch.cat(list(_chunks(pair.class_logits, x)))
        if data.encoding == "onehot":
            pred = logits.argmax(-1).numpy()
        else:  # the nearest of the K levels index / (K - 1)
            pred = np.rint(torch.sigmoid(logits[:, 0]).numpy() * (data.num_values - 1)).astype(int)
        rule = "argmax of the head" if data.encoding == "onehot" else "nearest level to sigmoid(head)"
        return {"classifier_accuracy": {"value": float((pred == np.asarray(v)).mean()),
                                        "settings": {**base, "rule": rule, "num_examples": len(x),
                                                     "chance": _chance(np.asarray(v))}}}

    def _reconstruct(self, pair, x, y) -> torch.Tensor:
        return pair.decode(*pair.codes(x))

    def _extra_plots(self, pair, data, x, y, d) -> list[Path]:
        from .. import plots

        n = len(x)
        x_b = x.roll(1, 0)
        swaps = torch.stack([pair.swap(x, x[j:j + 1].expand_as(x)) for j in range(n)], 1)  # [i, j] = D(E1(x_j), E2(x_i))
        blank = torch.zeros_like(x[:1])
        rows = [torch.cat([blank, x])] + [torch.cat([x[i:i + 1], swaps[i]]) for i in range(n)]
        paths = [plots.image_grid(torch.cat(rows), d / "swaps.png", ncol=n + 1,
                                  title="swap: row i, column j = D(E1(top j), E2(left i))")]
        steps = 5
        interp = pair.interpolate(x, x_b, steps)
        grid = torch.cat([x.unsqueeze(1), interp, x_b.unsqueeze(1)], 1).reshape(-1, *x.shape[1:])
        paths.append(plots.image_grid(grid, d / "interpolation.png", ncol=steps + 2,
                                      title="E1 code from x_a (left) to x_b (right), E2 code of x_a"))
        return paths


# ---------------------------------------------------------------------- helpers
PROBES = {"logistic": "logistic regression on standardized codes (sklearn, lbfgs, C=1)",
          "mlp": "MLP classifier, one hidden layer of 64 ReLU units (sklearn, adam, 300 epochs)"}


def _chunks(fn, x: torch.Tensor, size: int = 500):
    for i in range(0, len(x), size):
        yield fn(x[i:i + size])


def _chance(values: np.ndarray) -> float:
    _, counts = np.unique(values, return_counts=True)
    return float(counts.max() / counts.sum())


def _chosen_metrics(metrics, valid: Sequence[str], who: str) -> set[str]:
    metrics = [m.strip() for m in metrics if m.strip()]
    if not metrics or any(m in ("all", "elbo", "iwae") for m in metrics):
        return set(valid)
    bad = [m for m in metrics if m not in valid]
    if bad:
        raise ValueError(f"unknown metric(s) {', '.join(bad)} for {who}; valid: {', '.join(valid)} (or all)")
    return set(metrics)


def heldout_distortion(pair, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean ``-log p(x | codes, ...)`` in nats per example (the ELBO's distortion, no terms)."""
    elbo, total = ELBO(beta=0.0), 0.0
    with torch.no_grad():
        for i in range(0, len(x), 500):
            parts = elbo(pair.model, pair.guide, x[i:i + 500], y[i:i + 500]).parts
            total += float(parts["distortion"]) * len(x[i:i + 500])
    return total / len(x)


def edit_values(data: WithAttribute) -> tuple[list[torch.Tensor], list[str]]:
    """The edit grid's columns: y = 0, 0.25, 0.5, 0.75, 1 (continuous) or each category (one-hot)."""
    if data.encoding == "continuous":
        vals = [0.0, 0.25, 0.5, 0.75, 1.0]
        return [torch.tensor([v]) for v in vals], [f"{v:g}" for v in vals]
    k = data.attribute_dim
    return [F.one_hot(torch.tensor(i), k).float() for i in range(k)], [f"{data.attribute}={i}" for i in range(k)]


CRITIC_KEYS = ("adversarial", "attributecritic_loss", "attribute_critic_accuracy", "attribute_critic_mse",
               "classification", "classifier_accuracy", "classifier_mse")
