"""The importance-weighted objective (IWAE) as a training loss, with the IWAE or the DReG gradient.

For K draws z_1..z_K ~ q(z | x) per example (Burda et al. 2016, eq. 8 / 14):

    L_K(x) = log (1/K) sum_k w_k,      w_k = p(x, z_k) / q(z_k | x)

and the loss is -mean_x L_K(x) in nats per example. L_1 is the ELBO (a single-sample,
Monte Carlo KL estimate of it); L_K increases with K towards log p(x).

Gradients (``gradient=``):

* ``"iwae"``: the reparameterized gradient of L_K (Burda et al. 2016, eq. 14),
  sum_k w~_k grad log w_k with normalized weights w~_k = w_k / sum_j w_j.
* ``"dreg"``: the doubly reparameterized gradient of Tucker et al. (2019, eq. 5) for the
  guide's parameters phi,

      grad_phi L_K = E[ sum_k w~_k^2  d log w_k / d z_k  d z_k / d phi ]

  with log q's distribution parameters held fixed inside log w_k (only the path through
  z_k counts); the model's parameters get the IWAE gradient. It is built in one backward
  pass: log q is evaluated with detached distribution parameters, and every latent value
  the model sees carries a gradient hook that multiplies its gradient by w~_k (the
  gradient reaching z_k from L_K is already w~_k d log w_k / d z_k). Its expectation
  equals the IWAE gradient's; its variance does not grow with K the way the IWAE
  gradient's signal-to-noise ratio for phi shrinks (Rainforth et al. 2018).

How the K draws are made: the batch is repeated K times along the data plate (rows
b*K ... b*K + K - 1 belong to example b), as :mod:`~metaprior.inference.importance` does for
evaluation, so any model/guide pair whose sites all live in that plate, one value per
example, works unchanged.

Deviations and limits (stated, not hidden):

* ``beta`` (a number or a schedule, e.g. KL warm-up) tempers the weights:
  log w_k = log p(x | z_k) + beta (log p(z_k) - log q(z_k | x)). At beta = 1 this is L_K;
  at other values it is a warm-up device, not a bound on log p(x).
* Regularizer terms and ``pyro.factor`` sites are refused: the survey's terms are defined
  per ELBO particle, not for an importance-weighted bound.
* DReG detaches each guide site's distribution parameters. For a guide where one latent's
  distribution depends on another latent (a hierarchical guide), the path through those
  parameters is dropped as well, so there DReG is not the unbiased estimator of Tucker
  et al.; use it with guides whose sites are conditionally independent given x (the
  Gaussian encoder of the built-in VAEs).
* The logged ``rate`` and ``distortion`` are per-draw averages over the K draws (analytic
  KL where torch knows it, as :class:`~metaprior.inference.elbo.ELBO` logs them) and
  ``elbo`` = -(rate + distortion); ``iwae`` is L_K (beta = 1), the quantity optimized at
  beta = 1.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from pyro import poutine
from torch.distributions import kl_divergence

from .elbo import ELBO, ELBOResult, TermContext, sample_sites
from .importance import _site_log_prob

GRADIENTS = ("iwae", "dreg")


def detached(fn):
    """A shallow copy of distribution ``fn`` whose tensor parameters are detached (recursively through
    ``base_dist``), so ``log_prob`` passes gradients only through its argument."""
    out = copy.copy(fn)
    for k, v in list(vars(out).items()):
        if torch.is_tensor(v):
            setattr(out, k, v.detach())
        elif isinstance(v, torch.distributions.Distribution):
            setattr(out, k, detached(v))
    return out


def _row_log_prob(name: str, fn, value, mask, rows: int) -> torch.Tensor:
    """One log-density per row, checked as the evaluation's importance weights are (one helper for both)."""
    return _site_log_prob(name, {"fn": fn, "value": value, "mask": mask}, rows)


class _Scale(torch.autograd.Function):
    """Identity forward; backward multiplies row r's gradient by ``weights[r]`` (a detached [rows] tensor
    filled in after the forward pass, before backward)."""

    @staticmethod
    def forward(ctx, z, holder):
        ctx.holder = holder
        return z.view_as(z)

    @staticmethod
    def backward(ctx, g):
        w = ctx.holder["w"]
        return g * w.reshape(w.shape[0], *([1] * (g.dim() - 1))).to(g.dtype), None


@dataclass
class IWAE(ELBO):
    """-L_K of Burda et al. (2016, eq. 8), K = ``num_samples``, with the ``"iwae"`` (eq. 14) or
    ``"dreg"`` (Tucker et al. 2019, eq. 5) gradient; see the module docstring for the limits.

    ``beta`` tempers the prior/guide ratio (warm-up; 1 = the bound). Call it like
    :class:`~metaprior.inference.elbo.ELBO`: ``IWAE(num_samples=5)(model, guide, x)``.
    """

    num_samples: int = 5
    gradient: str = "iwae"

    def __post_init__(self):
        super().__post_init__()
        if int(self.num_samples) != self.num_samples or int(self.num_samples) < 1:
            raise ValueError(f"iwae_samples (K) must be a positive integer, got {self.num_samples!r}")
        if self.gradient not in GRADIENTS:
            raise ValueError(f"iwae_gradient must be one of {', '.join(GRADIENTS)}, got {self.gradient!r}")
        if self.terms:
            raise ValueError(
                f"the IWAE objective takes no regularizer terms (got {', '.join(self.terms)}): the survey's terms "
                "are defined per ELBO particle; use bound=elbo for this method")
        if int(self.num_particles) != 1:
            raise ValueError("the IWAE objective draws its own K samples (iwae_samples); leave num_particles at 1")
        if self.distortion_weight not in (None, 1.0):
            raise ValueError("the IWAE objective has no distortion_weight; use bound=elbo for this method")

    def __call__(self, model, guide, *args, step: int = 0, dataset_size: int | None = None, **kwargs) -> ELBOResult:
        K = int(self.num_samples)
        B = None
        for a in args:
            if torch.is_tensor(a) and a.dim() > 0:
                B = int(a.shape[0])
                break
        if B is None:
            raise ValueError("the IWAE objective needs a batch tensor argument [B, ...] to repeat K times")
        rargs = tuple(a.repeat_interleave(K, dim=0) if torch.is_tensor(a) and a.dim() > 0 and a.shape[0] == B else a
                      for a in args)
        rows = B * K
        dreg = self.gradient == "dreg"
        guide_trace = poutine.trace(guide).get_trace(*rargs, **kwargs)
        holder: dict[str, torch.Tensor] = {}
        log_q = 0.0
        kl = 0.0
        guide_sites = dict(sample_sites(guide_trace))
        for name, site in guide_sites.items():
            if site["is_observed"]:
                continue
            fn = site["fn"]
            if not getattr(fn, "has_rsample", False):
                raise NotImplementedError(
                    f"guide site {name!r} ({type(fn).__name__}) is not reparameterizable; the IWAE objective needs "
                    "reparameterized latents")
            z = site["value"]
            if dreg and z.requires_grad:
                z = _Scale.apply(z, holder)
                site["value"] = z  # the model replays the hooked value
            log_q = log_q + _row_log_prob(name, detached(fn) if dreg else fn, z, site["mask"], rows)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*rargs, **kwargs)
        log_lik, log_p = 0.0, 0.0
        for name, site in sample_sites(model_trace):
            if site["is_observed"]:
                if type(site["fn"]).__name__ == "Unit":
                    raise ValueError(f"the model declares pyro.factor site {name!r}; the IWAE objective does not "
                                     "take factor sites (use bound=elbo)")
                log_lik = log_lik + _row_log_prob(name, site["fn"], site["value"], site["mask"], rows)
            else:
                if name not in guide_sites:
                    raise ValueError(f"latent site {name!r} of the model has no site in the guide; add one to the guide")
                log_p = log_p + _row_log_prob(name, site["fn"], site["value"], site["mask"], rows)
                kl = kl + self._row_kl(site["fn"], guide_sites[name]["fn"], site["value"])
        for name in guide_sites:
            if not guide_sites[name]["is_observed"] and name not in model_trace.nodes:
                raise ValueError(f"guide site {name!r} has no matching site in the model; rename or remove it")
        if not torch.is_tensor(log_lik):
            raise ValueError("the model has no observed site; the IWAE objective needs a likelihood")
        log_w = (log_lik + (log_p - log_q)).view(B, K)  # beta = 1: the bound
        beta = self.beta(step)
        tempered = log_w if beta == 1.0 else (log_lik + beta * (log_p - log_q)).view(B, K)
        bound = torch.logsumexp(tempered, dim=1) - math.log(K)
        if dreg:
            holder["w"] = torch.softmax(tempered.detach(), dim=1).reshape(rows)
        loss = -bound.mean()
        distortion = -log_lik.detach().mean()
        rate = kl.mean() if torch.is_tensor(kl) else torch.zeros_like(distortion)
        with torch.no_grad():
            iwae = (torch.logsumexp(log_w, dim=1) - math.log(K)).mean()
        parts = {"elbo": -(distortion + rate), "rate": rate, "distortion": distortion, "iwae": iwae,
                 "loss": loss.detach()}
        ctx = TermContext(model_trace, guide_trace, rargs, kwargs, step, B, dataset_size)
        return ELBOResult(loss, parts, ctx)

    def _row_kl(self, p, q, z):
        """Per-row KL(q || p) for logging: analytic where torch knows it, else the one-draw log q - log p."""
        if self.analytic_kl:
            try:
                return kl_divergence(q, p).detach()
            except NotImplementedError:
                pass
        return (q.log_prob(z) - p.log_prob(z)).detach()


def make_objective(bound: str, beta, analytic_kl: bool = True, num_particles: int = 1,
                   iwae_samples: int = 5, iwae_gradient: str = "iwae", terms=None) -> ELBO:
    """The ELBO (``bound="elbo"``) or the IWAE bound (``"iwae"``) with the method's settings; the one
    place the methods turn their ``bound`` setting into a loss."""
    if bound == "elbo":
        return ELBO(beta=beta, terms=terms or {}, analytic_kl=analytic_kl, num_particles=num_particles)
    if bound == "iwae":
        return IWAE(beta=beta, terms=terms or {}, analytic_kl=analytic_kl, num_particles=num_particles,
                    num_samples=iwae_samples, gradient=iwae_gradient)
    raise ValueError(f"bound must be 'elbo' or 'iwae', got {bound!r}")
