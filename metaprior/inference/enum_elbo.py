"""An ELBO with discrete guide sites summed out exactly (Pyro's ``TraceEnum_ELBO``), with honest logging.

The loss is ``TraceEnum_ELBO``'s differentiable estimate of ``-ELBO`` (parallel enumeration
of every guide site marked ``infer={"enumerate": "parallel"}``, reparameterized samples for
the rest), divided by the batch size (nats per example), plus named weighted terms as in
:class:`~metaprior.inference.elbo.ELBO`:

    loss = -ELBO / B + sum_k w_k(t) T_k

The logged parts are computed from the *same* enumerated traces, so they decompose the
loss exactly: with ``q_s`` the guide probabilities of the enumerated sites (an expectation
``E_q[f] = sum over enumerated values of prod_s q_s * f``, the product taken over the
enumerated sites whose plates contain f's site),

* ``distortion`` = ``-E_q[log p(x | ...)]`` over observed sites (except ``label_sites``);
* ``label_nll``  = ``-E_q[log p(y)]`` over the observed ``label_sites`` (labelled y of M2);
* ``rate``       = ``E_q[log q - log p]`` over latent sites: exact for enumerated sites
  (``KL(q(y|x) || p(y))``), the single-sample Monte Carlo estimate for the others;
* any ``pyro.factor`` site by its name (its log-factor);

so ``-ELBO/B = distortion + rate + label_nll - sum factors``. ``num_particles`` averages.
Uses ``TraceEnum_ELBO._get_traces`` and ``pyro.infer.traceenum_elbo._compute_dice_elbo``
(Pyro 1.9) to score the traces it also logs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
from pyro.infer import TraceEnum_ELBO
from pyro.infer.traceenum_elbo import _compute_dice_elbo

from .elbo import RESERVED, ELBOResult, TermContext, _batch_size, sample_sites
from .schedules import as_schedule


@dataclass
class EnumELBO:
    """Negative ELBO with enumerated discrete sites, plus weighted terms; the trainer's objective interface."""

    terms: Mapping[str, tuple] = field(default_factory=dict)
    label_sites: Sequence[str] = ()
    max_plate_nesting: int = 1
    num_particles: int = 1

    def __post_init__(self):
        checked = {}
        for name, spec in dict(self.terms).items():
            if name in RESERVED or name == "label_nll":
                raise ValueError(f"term name {name!r} is reserved; rename it")
            if not (isinstance(spec, tuple) and len(spec) == 2 and callable(spec[1])):
                raise ValueError(f"term {name!r} must be (weight, callable), got {spec!r}")
            checked[name] = (as_schedule(spec[0]), spec[1])
        self.terms = checked
        if int(self.num_particles) < 1:
            raise ValueError(f"num_particles must be >= 1, got {self.num_particles}")
        self._enum = TraceEnum_ELBO(max_plate_nesting=int(self.max_plate_nesting), num_particles=1,
                                    strict_enumeration_warning=False)

    def weights(self, step: int) -> dict[str, float]:
        return {f"{k}_weight": w(step) for k, (w, _) in self.terms.items()}

    def __call__(self, model, guide, *args, step: int = 0, dataset_size: int | None = None, **kwargs) -> ELBOResult:
        n = _batch_size(args)
        total, parts, ctx = 0.0, {}, None
        for _ in range(int(self.num_particles)):
            for model_trace, guide_trace in self._enum._get_traces(model, guide, args, kwargs):
                loss = -_compute_dice_elbo(model_trace, guide_trace) / n
                p = self._parts(model_trace, guide_trace, n)
                ctx = TermContext(model_trace, guide_trace, args, kwargs, step, n, dataset_size)
                for name, (weight, term) in self.terms.items():
                    value = term(ctx)
                    w = weight(step)
                    if w != 0.0:
                        loss = loss + w * value
                    p[name] = value.detach()
                total = total + loss
                for k, v in p.items():
                    parts[k] = parts.get(k, 0.0) + v
        m = float(self.num_particles)
        total = total / m
        parts = {k: v / m for k, v in parts.items()}
        parts["loss"] = total.detach()
        return ELBOResult(total, parts, ctx)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        return self(model, guide, *args, **kwargs).loss

    # -- logging ------------------------------------------------------------------------------
    def _parts(self, model_trace, guide_trace, n: int) -> dict[str, torch.Tensor]:
        enumerated = [(s["log_prob"].detach().exp(), _plates(s)) for _, s in sample_sites(guide_trace)
                      if s["infer"].get("enumerate")]

        def expect(log_prob: torch.Tensor, plates: frozenset) -> torch.Tensor:
            out = log_prob
            for q, q_plates in enumerated:
                if q_plates <= plates:
                    out = out * q
            return out.sum()

        dist_, label, rate, factors = 0.0, 0.0, 0.0, {}
        for name, site in sample_sites(model_trace):
            lp, plates = site["log_prob"].detach(), _plates(site)
            if site["is_observed"]:
                if type(site["fn"]).__name__ == "Unit":
                    factors[name] = expect(lp, plates) / n
                elif name in self.label_sites:
                    label = label - expect(lp, plates)
                else:
                    dist_ = dist_ - expect(lp, plates)
            else:
                g = guide_trace.nodes.get(name)
                if g is None:
                    raise ValueError(f"latent site {name!r} of the model has no site in the guide")
                rate = rate + expect(g["log_prob"].detach() - lp, plates | _plates(g))
        zero = torch.zeros(())
        d = torch.as_tensor(dist_ / n) if torch.is_tensor(dist_) else zero
        r = torch.as_tensor(rate / n) if torch.is_tensor(rate) else zero
        lab = torch.as_tensor(label / n) if torch.is_tensor(label) else zero
        parts = {"elbo": -(d + r + lab), "rate": r, "distortion": d}
        if self.label_sites:
            parts["label_nll"] = lab
        parts.update(factors)
        return parts


def _plates(site) -> frozenset:
    return frozenset(f.name for f in site["cond_indep_stack"] if f.vectorized)
