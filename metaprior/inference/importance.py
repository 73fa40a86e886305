"""Importance-weighted log-likelihood, per example (Burda et al. 2016, eq. 8).

    log p(x) >= L_K(x) = log (1/K) sum_k p(x, z_k) / q(z_k | x),   z_k ~ q(z | x)

L_K increases with K and tends to log p(x). Pyro's ``vectorized_importance_weights`` sums
the data plate and so gives one weight per particle for the whole batch; here every
example gets its own K weights: the batch is repeated K times along the data plate
(any model/guide whose sites all live in that plate works unchanged), in chunks, under
``no_grad``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pyro import poutine

from .elbo import sample_sites


@dataclass
class ImportanceDraws:
    """K guide draws per example and the log-densities that make up their importance weights.

    Every field has leading shape [B, K] (example, draw): ``latents`` maps each latent site
    to its values [B, K, *event_shape]; ``log_likelihood`` = log p(x_b | z_bk) (observed
    sites), ``log_prior`` = log p(z_bk) (latent sites of the model), ``log_guide`` =
    log q(z_bk | x_b). ``log_weights`` = log p(x_b, z_bk) - log q(z_bk | x_b).
    """

    latents: dict[str, torch.Tensor]
    log_likelihood: torch.Tensor
    log_prior: torch.Tensor
    log_guide: torch.Tensor

    @property
    def log_weights(self) -> torch.Tensor:
        return self.log_likelihood + self.log_prior - self.log_guide


def _site_log_prob(name: str, site, rows: int) -> torch.Tensor:
    lp = site["fn"].log_prob(site["value"])
    if site["mask"] is not None:
        lp = lp * site["mask"]
    if lp.shape != (rows,):
        raise ValueError(
            f"site {name!r} has batch shape {tuple(lp.shape)}; the importance-weighted likelihood "
            "needs every site inside the data plate with one value per example"
        )
    return lp


class DeterministicGuide(ValueError):
    """The guide has a point-mass (Delta) site, so importance weighting does not apply."""


def _is_point_mass(fn) -> bool:
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return type(fn).__name__ == "Delta"


def importance_draws(model, guide, x: torch.Tensor, num_samples: int, chunk_size: int = 4096) -> ImportanceDraws:
    """K = ``num_samples`` draws z_bk ~ q(z | x_b) per example and their log-densities (:class:`ImportanceDraws`).

    The batch is repeated along the data plate (rows b*k ... b*k + k - 1 belong to example
    b), at most ``chunk_size`` rows per pass, under ``no_grad``.
    """
    if int(num_samples) < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    B = x.shape[0]
    per_chunk = max(1, int(chunk_size) // max(B, 1))
    parts = {"log_likelihood": [], "log_prior": [], "log_guide": []}
    latents: dict[str, list] = {}
    with torch.no_grad():
        done = 0
        while done < num_samples:
            k = min(per_chunk, num_samples - done)
            xr = x.repeat_interleave(k, dim=0)
            gtr = poutine.trace(guide).get_trace(xr)
            mtr = poutine.trace(poutine.replay(model, trace=gtr)).get_trace(xr)
            lik = torch.zeros(B * k, device=x.device, dtype=x.dtype if x.is_floating_point() else None)
            prior = torch.zeros_like(lik)
            for name, site in sample_sites(mtr):
                lp = _site_log_prob(name, site, B * k)
                if site["is_observed"]:
                    lik = lik + lp
                else:
                    prior = prior + lp
            q = torch.zeros_like(lik)
            for name, site in sample_sites(gtr):
                if _is_point_mass(site["fn"]):
                    raise DeterministicGuide(
                        f"guide site {name!r} is a point mass (a deterministic encoder): log p(x, z) - log q(z | x) "
                        "is then not an importance weight and gives no bound on log p(x); use a stochastic "
                        "encoder (e.g. --set deterministic=false) for elbo/iwae/arviz")
                q = q + _site_log_prob(name, site, B * k)
                v = site["value"]
                latents.setdefault(name, []).append(v.reshape(B, k, *v.shape[1:]))
            for key, val in (("log_likelihood", lik), ("log_prior", prior), ("log_guide", q)):
                parts[key].append(val.view(B, k))
            done += k
    return ImportanceDraws({n: torch.cat(v, dim=1) for n, v in latents.items()},
                           **{n: torch.cat(v, dim=1) for n, v in parts.items()})


def log_importance_weights(model, guide, x: torch.Tensor, num_samples: int, chunk_size: int = 4096) -> torch.Tensor:
    """log w[b, k] = log p(x_b, z_bk) - log q(z_bk | x_b) for K = ``num_samples`` draws; shape [B, K]."""
    return importance_draws(model, guide, x, num_samples, chunk_size).log_weights


def iwae_log_likelihood(model, guide, x: torch.Tensor, num_samples: int = 1000, chunk_size: int = 4096) -> torch.Tensor:
    """The IWAE bound L_K per example (shape [B]), in nats."""
    logw = log_importance_weights(model, guide, x, num_samples, chunk_size)
    return torch.logsumexp(logw, dim=1) - math.log(logw.shape[1])
