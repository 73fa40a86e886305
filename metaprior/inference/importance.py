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

import torch
from pyro import poutine

from .elbo import sample_sites


def log_importance_weights(model, guide, x: torch.Tensor, num_samples: int, chunk_size: int = 4096) -> torch.Tensor:
    """log w[b, k] = log p(x_b, z_bk) - log q(z_bk | x_b) for K = ``num_samples`` draws; shape [B, K]."""
    if int(num_samples) < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    B = x.shape[0]
    per_chunk = max(1, int(chunk_size) // max(B, 1))
    out = []
    with torch.no_grad():
        done = 0
        while done < num_samples:
            k = min(per_chunk, num_samples - done)
            xr = x.repeat_interleave(k, dim=0)  # rows b*k ... b*k + k - 1 belong to example b
            gtr = poutine.trace(guide).get_trace(xr)
            mtr = poutine.trace(poutine.replay(model, trace=gtr)).get_trace(xr)
            logw = torch.zeros(B * k, device=x.device)
            for tr, sign in ((mtr, 1.0), (gtr, -1.0)):
                for name, site in sample_sites(tr):
                    lp = site["fn"].log_prob(site["value"])
                    if site["mask"] is not None:
                        lp = lp * site["mask"]
                    if lp.shape != (B * k,):
                        raise ValueError(
                            f"site {name!r} has batch shape {tuple(lp.shape)}; the importance-weighted likelihood "
                            "needs every site inside the data plate with one value per example"
                        )
                    logw = logw + sign * lp
            out.append(logw.view(B, k))
            done += k
    return torch.cat(out, dim=1)


def iwae_log_likelihood(model, guide, x: torch.Tensor, num_samples: int = 1000, chunk_size: int = 4096) -> torch.Tensor:
    """The IWAE bound L_K per example (shape [B]), in nats."""
    logw = log_importance_weights(model, guide, x, num_samples, chunk_size)
    return torch.logsumexp(logw, dim=1) - math.log(logw.shape[1])
