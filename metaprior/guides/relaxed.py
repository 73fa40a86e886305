"""Relaxed one-hot categorical (Concrete / Gumbel-softmax) latents.

A sample of the Concrete distribution (Maddison et al. 2017, sec. 3; Jang et al. 2017,
sec. 2) with logits ``alpha`` and temperature ``lambda`` is

    y = softmax((alpha + g) / lambda),     g_k = -log(-log u_k),  u_k ~ U(0, 1),

a reparameterized point of the simplex that tends to the one-hot vector of
``argmax_k (alpha_k + g_k)`` (a draw of Cat(softmax(alpha)), the Gumbel-max trick) as
lambda -> 0. :class:`GumbelSoftmax` is torch's ``RelaxedOneHotCategorical`` with two changes:

* the sample is kept strictly inside the simplex (no component below the smallest
  normal float), so ``log_prob`` stays finite at low temperature (torch's sample,
  ``exp`` of a log-softmax, underflows to exact zeros: Pyro issue 3304);
* ``kl_divergence(GumbelSoftmax, GumbelSoftmax)`` is registered as the KL of the
  underlying categoricals, ``sum_k q_k log(q_k / p_k)``. No closed form exists for two
  Concrete densities; the categorical KL is the surrogate of Jang et al. (2017, sec. 3)
  and of JointVAE (Dupont 2018, sec. 3), and it is the exact KL of the discrete variable
  the relaxation stands for. An ELBO that uses analytic KLs therefore reports the
  discrete code's rate in nats, bounded by ``log K`` against a uniform prior.
"""
from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import register_kl
from torch.nn import functional as F


def check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not (t > 0 and t < float("inf")):
        raise ValueError(f"the relaxation temperature must be a finite number > 0, got {temperature!r}")
    return t


class GumbelSoftmax(dist.RelaxedOneHotCategorical):
    """Concrete / Gumbel-softmax distribution with an underflow-safe ``rsample`` (see module docstring)."""

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(GumbelSoftmax, _instance)
        return super().expand(batch_shape, _instance=new)

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        logits = self.logits
        shape = self._extended_shape(sample_shape)
        finfo = torch.finfo(logits.dtype)
        u = torch.rand(shape, dtype=logits.dtype, device=logits.device).clamp(finfo.tiny, 1.0 - finfo.eps)
        gumbel = -torch.log(-torch.log(u))
        y = torch.softmax((logits + gumbel) / self.temperature, dim=-1).clamp_min(finfo.tiny)
        return y / y.sum(-1, keepdim=True)


@register_kl(GumbelSoftmax, GumbelSoftmax)
def _kl_gumbel_softmax(q: GumbelSoftmax, p: GumbelSoftmax) -> torch.Tensor:
    """KL(Cat(q) || Cat(p)) of the underlying categoricals (the surrogate of the module docstring)."""
    log_q = torch.log_softmax(q.logits, -1)
    log_p = torch.log_softmax(p.logits, -1)
    return (log_q.exp() * (log_q - log_p)).sum(-1)


def one_hot_argmax(logits: torch.Tensor) -> torch.Tensor:
    """The one-hot vector of the most probable category (the discrete code at evaluation time)."""
    return F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)


class JointEncoder(torch.nn.Module):
    """q(z, c | x) = N(z; mu(x), diag sigma(x)^2) * Concrete(c; alpha(x), lambda) (Dupont 2018, sec. 3).

    Wraps a net emitting ``2 * latent_dim + categories`` numbers: mean, log-variance and the
    logits of the discrete code.
    """

    def __init__(self, net: torch.nn.Module, latent_dim: int, categories: int, temperature: float):
        super().__init__()
        if int(categories) < 2:
            raise ValueError(f"a discrete code needs categories >= 2, got {categories}")
        self.net, self.latent_dim, self.categories = net, int(latent_dim), int(categories)
        self.temperature = check_temperature(temperature)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.net(x)
        d = self.latent_dim
        return out[..., :d], torch.exp(0.5 * out[..., d:2 * d]), out[..., 2 * d:]

    def sample(self, x: torch.Tensor, z_name: str = "z", c_name: str = "c") -> tuple[torch.Tensor, torch.Tensor]:
        """Sample sites ``z_name`` and ``c_name``; call inside the guide's data plate."""
        loc, scale, logits = self(x)
        z = pyro.sample(z_name, dist.Normal(loc, scale, validate_args=False).to_event(1))
        t = torch.tensor(self.temperature, dtype=logits.dtype, device=logits.device)
        c = pyro.sample(c_name, GumbelSoftmax(t, logits=logits, validate_args=False))
        return z, c
