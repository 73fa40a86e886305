"""Held-out ELBO, rate, distortion and importance-weighted log-likelihood of a trained model."""
from __future__ import annotations

import numpy as np
import torch

from ..inference.elbo import ELBO
from ..inference.importance import log_importance_weights


@torch.no_grad()
def heldout_elbo(pair, x: torch.Tensor, batch_size: int = 256, seed: int = 0, progress=None) -> dict[str, float]:
    """Mean per-example ELBO, rate and distortion (beta = 1, no regularizers) on ``x``, one sample each.
    ``progress(n)`` is called after each batch with its number of examples."""
    torch.manual_seed(seed)
    elbo = ELBO()
    sums, n = {"elbo": 0.0, "rate": 0.0, "distortion": 0.0}, 0
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        parts = elbo(pair.model, pair.guide, xb).parts
        for k in sums:
            sums[k] += float(parts[k]) * len(xb)
        n += len(xb)
        if progress is not None:
            progress(len(xb))
    return {k: v / n for k, v in sums.items()}


@torch.no_grad()
def heldout_log_weights(pair, x: torch.Tensor, num_samples: int = 100, batch_size: int = 64, seed: int = 0,
                        progress=None) -> torch.Tensor:
    """log w[b, k] = log p(x_b, z_bk) - log q(z_bk | x_b), K = ``num_samples`` guide draws per example, [B, K];
    seeded, in batches (``progress(n)`` after each)."""
    torch.manual_seed(seed)
    out = []
    for i in range(0, len(x), batch_size):
        out.append(log_importance_weights(pair.model, pair.guide, x[i:i + batch_size], num_samples))
        if progress is not None:
            progress(len(out[-1]))
    return torch.cat(out)


def iwae_summary(log_weights) -> dict[str, float]:
    """Mean and standard error over examples of L_K = logsumexp_k log w - log K (Burda et al. 2016, eq. 8)."""
    lw = torch.as_tensor(log_weights)
    vals = (torch.logsumexp(lw, dim=1) - np.log(lw.shape[1])).cpu().numpy()
    return {"iwae_log_likelihood": float(vals.mean()), "iwae_stderr": float(vals.std(ddof=1) / np.sqrt(len(vals))) if len(vals) > 1 else 0.0}


def heldout_iwae(pair, x: torch.Tensor, num_samples: int = 100, batch_size: int = 64, seed: int = 0,
                 progress=None) -> dict[str, float]:
    """Mean and standard error of the IWAE bound log p(x) >= L_K (Burda et al. 2016, eq. 8) over ``x``."""
    return iwae_summary(heldout_log_weights(pair, x, num_samples, batch_size, seed, progress))
