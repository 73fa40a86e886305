"""The semi-supervised M2 model (Kingma et al. 2014, sec. 2.2) as a Pyro model/guide pair.

    p(y) = Cat(1/K),  p(z) = N(0, I),  p(x | y, z) = likelihood(decoder([z, y]))
    q(z, y | x) = q(z | y, x) q(y | x)                                       (their eq. 4)

A batch ``(x, y, labelled)`` is split in two plates. Labelled examples (plate
``"labelled"``) observe y (site ``"y_l"``) and contribute ``-L(x, y)`` (their eq. 6);
unlabelled ones (plate ``"unlabelled"``) sample y in the guide from q(y | x) at site
``"y_u"``, marked for parallel enumeration, so ``TraceEnum_ELBO`` sums it out exactly:

    -U(x) = sum_y q(y | x) (-L(x, y)) + H(q(y | x))                           (their eq. 7)

(``-L`` and ``-U`` are lower bounds on log p(x, y) and log p(x); the entropy of q(y|x) enters
the bound with a plus sign.) Sites ``"z_l"``/``"z_u"`` are the continuous codes and
``"x_l"``/``"x_u"`` the observations.

Weighting (their eq. 9). Kingma et al. minimise, over the whole training set,

    J^alpha = sum_{labelled} L(x, y) + sum_{unlabelled} U(x) + alpha sum_{labelled} -log q(y | x),   alpha = 0.1 N.

With ``counts=(N_l, N_u)`` (N = N_l + N_u) a batch of B_l labelled and B_u unlabelled
examples (B = B_l + B_u) scales its labelled sites by ``(N_l / N) (B / B_l)`` and its
unlabelled sites by ``(N_u / N) (B / B_u)`` (``poutine.scale`` in model and guide alike), so
that the ELBO divided by B, as the objective reports it, is the unbiased estimate of the
data-set sum divided by N. A batch holding only one kind of example is left unscaled (it
estimates that kind's per-example bound: the held-out ELBO of unlabelled test images). The
classification sum is :class:`M2Classification` (a batch mean over the labelled examples)
weighted by ``alpha N_l / N`` (eq. 9's alpha; the ``m2`` recipe's ``alpha`` setting is alpha / N). ``counts=None``: no scaling (each
batch's examples weigh equally, the earlier per-batch form). The objective's logged
``rate``/``distortion`` are unscaled batch means.
"""
from __future__ import annotations

import contextlib

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn
from torch.nn import functional as F

from ..guides.m2 import ConditionalGaussianEncoder
from ..nets.batching import apply_flat, cat_last
from .likelihoods import Likelihood


class M2(nn.Module):
    """``model(x, y, labelled)`` / ``guide(x, y, labelled)``; ``y`` and ``labelled`` may be omitted (all unlabelled)."""

    def __init__(self, classifier: nn.Module, encoder: ConditionalGaussianEncoder, decoder: nn.Module,
                 num_classes: int, likelihood: Likelihood, counts: tuple[int, int] | None = None):
        super().__init__()
        if int(num_classes) < 2:
            raise ValueError(f"M2 needs at least 2 classes, got {num_classes}")
        if counts is not None:
            counts = (int(counts[0]), int(counts[1]))
            if min(counts) < 0 or sum(counts) < 1:
                raise ValueError(f"counts must be (labelled, unlabelled) training-set sizes >= 0, got {counts}")
        self.counts = counts
        self.classifier, self.encoder, self.decoder = classifier, encoder, decoder
        self.num_classes, self.latent_dim = int(num_classes), encoder.latent_dim
        self.likelihood = likelihood
        self.observation_shape = likelihood.observation_shape
        self._event_dims = len(self.observation_shape)

    def _split(self, x, y, labelled):
        if labelled is None:
            labelled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        labelled = labelled.bool()
        if labelled.any():
            if y is None:
                raise ValueError("labelled examples need their labels y")
            if int(y[labelled].max()) >= self.num_classes or int(y[labelled].min()) < 0:
                raise ValueError(f"labels must lie in 0..{self.num_classes - 1}")
            y_l = F.one_hot(y[labelled].long(), self.num_classes).to(x.dtype)
        else:
            y_l = x.new_zeros(0, self.num_classes)
        return x[labelled], y_l, x[~labelled]

    def weights(self, n_l: int, n_u: int) -> tuple[float, float]:
        """Scales of the labelled and unlabelled sites of a batch with ``n_l``/``n_u`` examples (eq. 9; see module doc)."""
        if self.counts is None or n_l == 0 or n_u == 0:
            return 1.0, 1.0
        big_l, big_u = self.counts
        big_n, b = big_l + big_u, n_l + n_u
        return big_l / big_n * b / n_l, big_u / big_n * b / n_u

    @staticmethod
    def _scaled(w: float):
        return poutine.scale(scale=w) if w != 1.0 else contextlib.nullcontext()

    def _likelihood(self, z: torch.Tensor, y: torch.Tensor) -> dist.Distribution:
        return self.likelihood(apply_flat(self.decoder, cat_last(z, y), 1))

    def _prior_z(self, n: int, like: torch.Tensor) -> dist.Distribution:
        zeros = like.new_zeros(n, self.latent_dim)
        return dist.Normal(zeros, torch.ones_like(zeros), validate_args=False).to_event(1)

    def _prior_y(self, n: int, like: torch.Tensor) -> dist.Distribution:
        return dist.OneHotCategorical(logits=like.new_zeros(n, self.num_classes), validate_args=False)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None, labelled: torch.Tensor | None = None) -> None:
        x_l, y_l, x_u = self._split(x, y, labelled)
        w_l, w_u = self.weights(len(x_l), len(x_u))
        if len(x_l):
            with pyro.plate("labelled", len(x_l)), self._scaled(w_l):
                pyro.sample("y_l", self._prior_y(len(x_l), x), obs=y_l)
                z = pyro.sample("z_l", self._prior_z(len(x_l), x))
                pyro.sample("x_l", self._likelihood(z, y_l), obs=x_l)
        if len(x_u):
            with pyro.plate("unlabelled", len(x_u)), self._scaled(w_u):
                y_u = pyro.sample("y_u", self._prior_y(len(x_u), x))
                z = pyro.sample("z_u", self._prior_z(len(x_u), x))
                pyro.sample("x_u", self._likelihood(z, y_u), obs=x_u)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None, labelled: torch.Tensor | None = None) -> None:
        x_l, y_l, x_u = self._split(x, y, labelled)
        w_l, w_u = self.weights(len(x_l), len(x_u))
        if len(x_l):
            with pyro.plate("labelled", len(x_l)), self._scaled(w_l):
                loc, scale = self.encoder(x_l, y_l)
                pyro.sample("z_l", dist.Normal(loc, scale, validate_args=False).to_event(1))
        if len(x_u):
            with pyro.plate("unlabelled", len(x_u)), self._scaled(w_u):
                q_y = dist.OneHotCategorical(logits=self.classifier(x_u), validate_args=False)
                y_u = pyro.sample("y_u", q_y, infer={"enumerate": "parallel"})
                loc, scale = self.encoder(x_u, y_u)
                pyro.sample("z_u", dist.Normal(loc, scale, validate_args=False).to_event(1))

    # evaluation helpers
    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """argmax_y q(y | x)."""
        return self.classifier(x).argmax(-1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | x, y*) at the most probable class y*."""
        y = F.one_hot(self.classifier(x).argmax(-1), self.num_classes).to(x.dtype)
        return self.encoder(x, y)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of p(x | z, y); ``y`` one-hot (class 0 when omitted)."""
        if y is None:
            y = F.one_hot(torch.zeros(z.shape[0], dtype=torch.long, device=z.device), self.num_classes).to(z.dtype)
        return self.likelihood.mean(apply_flat(self.decoder, cat_last(z, y), 1))


class M2Classification:
    """Kingma et al. (2014, eq. 9): ``E_labelled[-log q(y | x)]``, the mean over the batch's labelled examples.

    Zero when the batch has none. The ``m2`` recipe weighs it by eq. 9's ``alpha N_l / N``
    (alpha times the labelled sum, per example of the data set) or, with
    ``weighting="batch"``, by its ``alpha`` setting.
    """

    def __init__(self, pair: M2):
        self.pair = pair

    def __call__(self, ctx) -> torch.Tensor:
        x, y, labelled = (list(ctx.args) + [None, None])[:3]
        if labelled is None or not bool(labelled.any()):
            return x.new_zeros(())
        labelled = labelled.bool()
        return F.cross_entropy(self.pair.classifier(x[labelled]), y[labelled].long())
