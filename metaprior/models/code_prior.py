"""An autoregressive prior over VQ-VAE code maps, trained after the autoencoder (van den Oord et al. 2017, sec. 3.2).

VQ-VAE trains with a uniform prior over codes; to generate, "we fit an autoregressive
distribution over z, p(z), so that we can generate x via ancestral sampling". Here the
code map of an example (M codes, laid out as ``(h, w)``; an MLP encoder's M codes are a
``(1, M)`` row) is modelled by a PixelCNN over one-hot codes with the full causal field
(:class:`~metaprior.nets.masked.WindowPixelCNN` with a window covering the map):

    p(k) = prod_m Cat(k_m; softmax(f(k_{<m}))_m)

:func:`fit_code_prior` trains it by maximum likelihood on the codes of the training set with
the autoencoder frozen; :meth:`CodePixelCNN.sample` draws code maps in raster order, which
:meth:`~metaprior.models.vq_vae.VQVAE.decode_codes` turns into images.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..nets.masked import WindowPixelCNN


class CodePixelCNN(nn.Module):
    def __init__(self, codebook_size: int, shape: Sequence[int], channels: int = 64, layers: int = 2):
        super().__init__()
        if int(codebook_size) < 1:
            raise ValueError(f"codebook_size must be >= 1, got {codebook_size}")
        self.size, self.shape = int(codebook_size), tuple(int(s) for s in shape)
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise ValueError(f"the code map shape must be (h, w) with positive sizes, got {tuple(shape)}")
        self.net = WindowPixelCNN(self.size, self.size, max(self.shape) - 1, channels, layers)

    def logits(self, idx: torch.Tensor) -> torch.Tensor:
        """``[B, K, h, w]`` logits of each code given the earlier ones; ``idx`` is ``[B, h, w]`` (or ``[B, M]``)."""
        idx = idx.reshape((-1,) + self.shape)
        onehot = F.one_hot(idx.long(), self.size).permute(0, 3, 1, 2).to(torch.get_default_dtype())
        return self.net(onehot)

    def log_prob(self, idx: torch.Tensor) -> torch.Tensor:
        """``log p(k)`` per code map, in nats (shape ``[B]``)."""
        idx = idx.reshape((-1,) + self.shape).long()
        return -F.cross_entropy(self.logits(idx), idx, reduction="none").sum((-1, -2))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` code maps ``[n, h, w]`` drawn in raster order."""
        dev = next(self.parameters()).device
        idx = torch.zeros((n,) + self.shape, dtype=torch.long, device=dev)
        for r in range(self.shape[0]):
            for c in range(self.shape[1]):
                p = torch.softmax(self.logits(idx)[:, :, r, c], -1)
                idx[:, r, c] = torch.multinomial(p.cpu(), 1, generator=generator).squeeze(1).to(dev)
        return idx


def fit_code_prior(pair, data, steps: int = 2000, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                   channels: int = 64, layers: int = 2, log_every: int = 0) -> tuple[CodePixelCNN, list[float]]:
    """Train a :class:`CodePixelCNN` on the codes of ``data``'s training batches, ``pair`` (a VQVAE) frozen.

    Returns the prior and the per-step mean NLL (nats per code map); the uniform prior's is
    ``M log K``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    torch.manual_seed(seed)
    prior = CodePixelCNN(pair.quantizer.size, (1, pair.codes), channels, layers)
    dev = next(pair.parameters()).device
    prior.to(dev)
    opt = torch.optim.Adam(prior.parameters(), lr=lr)
    was = pair.training
    pair.eval()
    losses = []
    for step in range(steps):
        x = torch.as_tensor(np.ascontiguousarray(data.batch(step, batch_size, seed))).to(dev)
        with torch.no_grad():
            codes = pair.codes_of(x)
        loss = -prior.log_prob(codes).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if log_every and (step + 1) % log_every == 0:
            print(f"code prior step {step + 1}: {np.mean(losses[-log_every:]):.3f} nats "
                  f"(uniform: {pair.codes * math.log(pair.quantizer.size):.3f})", flush=True)
    pair.train(was)
    return prior, losses
