"""The ELBO with rate/distortion reporting and the survey's regularizer hook (eq. 5).

    loss = w_D * D + beta(t) * R + sum_k w_k(t) * T_k - sum_f F_f                  (per example)

with distortion ``D = E_q[-log p(x | z)]`` (observed sites), rate
``R = E_x KL(q(z | x) || p(z))`` (latent sites; analytic where torch knows the KL of
the pair, Monte Carlo ``log q - log p`` otherwise), named regularizer terms ``T_k``
(the R1 / R2 of Tschannen et al. 2018, eq. 5) with weights or schedules ``w_k``, and
any ``pyro.factor`` sites ``F_f`` the model itself declares, each logged by its name.
``w_D`` (``distortion_weight``, default 1, logged when given) lets a method that replaces the pixel
reconstruction by another one (VAE-GAN's feature-space distortion) keep D logged but
down-weighted.
With beta = 1 and no terms this is the negative ELBO of Kingma & Welling (2014, eq. 3);
beta != 1 is the beta-VAE objective (Higgins et al. 2017, eq. 4).

It works on any Pyro model/guide pair with reparameterizable latent sites: it traces
the guide, replays the model against it, and reads every site. Losses are in nats per
example: log-densities are summed over all sites and divided by the size of the plate
named ``data`` (its full size when subsampled, which cancels Pyro's N/B scaling), or by
the batch size when the model has no such plate.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Union

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.subsample_messenger import _Subsample
from torch.distributions import Independent, kl_divergence

from .schedules import Schedule, WeightLike, as_schedule

RESERVED = {"step", "loss", "elbo", "rate", "distortion", "beta"}


@dataclass
class Latent:
    """A guide site: its sampled ``value`` and distribution ``fn`` (``loc``/``scale`` when Gaussian)."""

    value: torch.Tensor
    fn: Any

    @property
    def base(self):
        fn = self.fn
        while isinstance(fn, Independent):
            fn = fn.base_dist
        return fn

    @property
    def loc(self) -> torch.Tensor:
        return self.base.loc

    @property
    def scale(self) -> torch.Tensor:
        return self.base.scale


@dataclass
class TermContext:
    """What a regularizer term sees: the traces of one particle plus bookkeeping.

    ``num_examples`` is the per-example normalizer of the loss; ``dataset_size`` the
    training-set size N (needed by aggregate-posterior estimators); ``step`` the
    0-based optimisation step.
    """

    model_trace: Any
    guide_trace: Any
    args: tuple
    kwargs: dict
    step: int = 0
    num_examples: int = 1
    dataset_size: int | None = None

    def latent(self, name: str = "z") -> Latent:
        site = self.guide_trace.nodes.get(name)
        if site is None or site["type"] != "sample" or isinstance(site["fn"], _Subsample):
            sites = [n for n, _ in sample_sites(self.guide_trace)]
            raise KeyError(f"the guide has no sample site {name!r}; its sample sites are {sites}")
        return Latent(site["value"], site["fn"])

    def prior(self, name: str = "z"):
        return self.model_trace.nodes[name]["fn"]

    def observed(self, name: str = "x") -> Latent:
        site = self.model_trace.nodes[name]
        return Latent(site["value"], site["fn"])


Term = Callable[[TermContext], torch.Tensor]


@dataclass
class ELBOResult:
    loss: torch.Tensor
    parts: dict[str, torch.Tensor]
    context: TermContext


class NonFiniteLoss(FloatingPointError):
    """The objective became NaN or infinite; ``term`` names the part that did."""

    def __init__(self, step: int, term: str, parts: Mapping[str, float]):
        self.step, self.term, self.parts = step, term, dict(parts)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in self.parts.items())
        super().__init__(f"the loss became non-finite at step {step} in term {term!r} ({shown})")


@dataclass
class ELBO:
    """Negative ELBO plus weighted regularizers; call it to get the loss and its named parts.

    ``terms`` maps a name to ``(weight_or_schedule, term)`` where ``term(ctx)`` returns a
    scalar tensor in nats per example (see :class:`TermContext`). Terms that are
    ``AuxiliaryUpdate`` modules (critics) are also stepped by the trainer.
    """

    beta: WeightLike = 1.0
    terms: Mapping[str, tuple[WeightLike, Term]] = field(default_factory=dict)
    analytic_kl: bool = True
    num_particles: int = 1
    data_plate: str = "data"
    distortion_weight: float | None = None

    def __post_init__(self):
        self.beta = as_schedule(self.beta)
        checked = {}
        for name, spec in dict(self.terms).items():
            if name in RESERVED:
                raise ValueError(f"term name {name!r} is reserved ({', '.join(sorted(RESERVED))}); rename it")
            if not (isinstance(spec, tuple) and len(spec) == 2 and callable(spec[1])):
                raise ValueError(f"term {name!r} must be (weight, callable), got {spec!r}")
            checked[name] = (as_schedule(spec[0]), spec[1])
        self.terms = checked
        if int(self.num_particles) < 1:
            raise ValueError(f"num_particles must be >= 1, got {self.num_particles}")
        if self.distortion_weight is not None and not float(self.distortion_weight) >= 0:
            raise ValueError(f"distortion_weight must be >= 0, got {self.distortion_weight}")

    def weights(self, step: int) -> dict[str, float]:
        """The weights at ``step``: ``beta``, ``<term>_weight`` per term (logged beside the terms' values) and
        ``distortion_weight`` when one was given."""
        out = {"beta": self.beta(step), **{f"{k}_weight": w(step) for k, (w, _) in self.terms.items()}}
        if self.distortion_weight is not None:
            out["distortion_weight"] = float(self.distortion_weight)
        return out

    def __call__(self, model, guide, *args, step: int = 0, dataset_size: int | None = None, **kwargs) -> ELBOResult:
        total, parts, ctx = None, {}, None
        for _ in range(int(self.num_particles)):
            loss, p, ctx = self._particle(model, guide, args, kwargs, step, dataset_size)
            total = loss if total is None else total + loss
            for k, v in p.items():
                parts[k] = v if k not in parts else parts[k] + v
        n = float(self.num_particles)
        if n > 1:
            total = total / n
            parts = {k: v / n for k, v in parts.items()}
        parts["loss"] = total.detach()
        return ELBOResult(total, parts, ctx)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        return self(model, guide, *args, **kwargs).loss

    # -- one particle ------------------------------------------------------------------------
    def _particle(self, model, guide, args, kwargs, step, dataset_size):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        log_lik, rate, factors, normalizer = 0.0, 0.0, {}, None
        for name, site in sample_sites(model_trace):
            if site["is_observed"]:
                lp = scale_and_mask(site["fn"].log_prob(site["value"]), site["scale"], site["mask"]).sum()
                if type(site["fn"]).__name__ == "Unit":  # a pyro.factor site
                    factors[name] = lp
                else:
                    log_lik = log_lik + lp
                    if normalizer is None:
                        normalizer = self._normalizer(site)
            else:
                rate = rate + self._site_kl(name, site, guide_trace.nodes.get(name))
        for name, site in sample_sites(guide_trace):
            if not site["is_observed"] and name not in model_trace.nodes:
                raise ValueError(f"guide site {name!r} has no matching site in the model; rename or remove it")
        if normalizer is None:
            normalizer = _batch_size(args)
        distortion, rate = -log_lik / normalizer, rate / normalizer
        if not torch.is_tensor(distortion):
            distortion = torch.zeros(())
        if not torch.is_tensor(rate):
            rate = torch.zeros_like(distortion)
        beta = self.beta(step)
        w_d = self.distortion_weight
        loss = (distortion if w_d is None or w_d == 1.0 else w_d * distortion) + beta * rate
        parts = {"elbo": -(distortion + rate).detach(), "rate": rate.detach(), "distortion": distortion.detach()}
        ctx = TermContext(model_trace, guide_trace, args, kwargs, step, normalizer, dataset_size)
        for name, (weight, term) in self.terms.items():
            value = term(ctx)
            if not torch.is_tensor(value):
                raise TypeError(f"term {name!r} returned {type(value).__name__} {value!r}; a term must return a scalar "
                                "torch tensor (nats per example) computed from the traces, so that its gradient "
                                "reaches the model, e.g. ctx.latent('z').loc.pow(2).sum(-1).mean()")
            if value.dim() != 0:
                raise ValueError(f"term {name!r} must return a scalar (nats per example), got shape {tuple(value.shape)}")
            w = weight(step)
            if w != 0.0:
                loss = loss + w * value
            parts[name] = value.detach()
        for name, value in factors.items():
            value = value / normalizer
            loss = loss - value
            parts[name] = value.detach()
        return loss, parts, ctx

    def _normalizer(self, site) -> int:
        for frame in site["cond_indep_stack"]:
            if frame.name == self.data_plate:
                return int(frame.full_size or frame.size)
        return None

    def _site_kl(self, name, model_site, guide_site) -> torch.Tensor:
        if guide_site is None or guide_site["type"] != "sample":
            raise ValueError(f"latent site {name!r} of the model has no site in the guide; add one to the guide")
        q, p, z = guide_site["fn"], model_site["fn"], guide_site["value"]
        if not getattr(q, "has_rsample", False):
            raise NotImplementedError(
                f"guide site {name!r} ({type(q).__name__}) is not reparameterizable; this objective needs "
                "reparameterized latents -- enumerate discrete sites with TraceEnum_ELBO or relax them"
            )
        kl = None
        if self.analytic_kl:
            try:
                kl = kl_divergence(q, p)
            except NotImplementedError:
                kl = None
        if kl is not None:
            return scale_and_mask(kl, model_site["scale"], model_site["mask"]).sum()
        log_q = scale_and_mask(q.log_prob(z), guide_site["scale"], guide_site["mask"]).sum()
        log_p = scale_and_mask(p.log_prob(z), model_site["scale"], model_site["mask"]).sum()
        return log_q - log_p


def sample_sites(trace):
    """(name, site) of a trace's sample sites, without the plates' subsample sites."""
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not isinstance(site["fn"], _Subsample):
            yield name, site


def _batch_size(args) -> int:
    for a in args:
        if torch.is_tensor(a) and a.dim() > 0:
            return int(a.shape[0])
    return 1


def check_finite(parts: Mapping[str, torch.Tensor], step: int) -> None:
    """Raise :class:`NonFiniteLoss` naming the first non-finite part (loss terms checked in order)."""
    values = {k: float(v) for k, v in parts.items()}
    if all(v == v and abs(v) != float("inf") for v in values.values()):
        return
    order = ["distortion", "rate"] + [k for k in values if k not in ("distortion", "rate", "elbo", "loss")] + ["loss"]
    for k in order:
        v = values.get(k)
        if v is not None and not (v == v and abs(v) != float("inf")):
            raise NonFiniteLoss(step, k, values)
