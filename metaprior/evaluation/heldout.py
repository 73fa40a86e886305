"""Held-out ELBO, rate, distortion and importance-weighted log-likelihood of a trained model."""
from __future__ import annotations

import numpy as np
import torch

from ..inference.elbo import ELBO
from ..inference.importance import iwae_log_likelihood


@torch.no_grad()
def heldout_elbo(pair, x: torch.Tensor, batch_size: int = 256, seed: int = 0) -> dict[str, float]:
    """Mean per-example ELBO, rate and distortion (beta = 1, no regularizers) on ``x``, one sample each."""
    torch.manual_seed(seed)
    elbo = ELBO()
    sums, n = {"elbo": 0.0, "rate": 0.0, "distortion": 0.0}, 0
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        parts = elbo(pair.model, pair.guide, xb).parts
        for k in sums:
            sums[k] += float(parts[k]) * len(xb)
        n += len(xb)
    return {k: v / n for k, v in sums.items()}


@torch.no_grad()
def heldout_iwae(pair, x: torch.Tensor, num_samples: int = 100, batch_size: int = 64, seed: int = 0) -> dict[str, float]:
    """Mean and standard error of the IWAE bound log p(x) >= L_K (Burda et al. 2016, eq. 8) over ``x``."""
    torch.manual_seed(seed)
    vals = torch.cat([iwae_log_likelihood(pair.model, pair.guide, x[i:i + batch_size], num_samples)
                      for i in range(0, len(x), batch_size)]).cpu().numpy()
    return {"iwae_log_likelihood": float(vals.mean()), "iwae_stderr": float(vals.std(ddof=1) / np.sqrt(len(vals))) if len(vals) > 1 else 0.0}
