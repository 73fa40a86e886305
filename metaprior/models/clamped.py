"""DC-IGN's clamped code (Kulkarni et al. 2015, "Deep Convolutional Inverse Graphics Network", sec. 3.2-3.3).

Training batches come from :class:`~metaprior.data.clamped.ClampedBatches`: one factor
varies, the others are held fixed, and ``which`` [B] names the varying factor (-1: only the
intrinsic factors vary). The units that may change in such a batch are the varying
factor's unit (or, in an intrinsic batch, the intrinsic units: those assigned to no
factor); every other unit is *clamped*: before the code enters the decoder its value is
replaced by its mean over the examples of the batch (of the same ``which``).

    p(z) = N(0, I),   z_dec = clamp(z, which),   p(x | z) = likelihood(decoder(z_dec)),   q(z | x) = N(mu(x), sigma(x)^2)

The replacement happens in the model on the sampled ``z`` (the replayed guide sample), right
before the decoder; the sample site ``"z"`` itself is untouched, so model and guide see the
same ``z`` and the rate is the KL of the original q(z|x), as in the paper (SGVB on the full
code). Evaluation (``encode``, traversals, metrics) and ``model(x)`` without ``which`` use the
code as it is.

Gradient of the clamped units (``clamp_gradient``):

* ``"straight_through"`` (default): ``z_i + (mean - z_i).detach()``. Forward value: the batch
  mean; backward: the identity onto each example's own unit, i.e. the decoder's gradient at
  example i's (clamped) input is handed to ``z_i`` as if ``z_i`` had been decoded itself.
  The true derivative of the mean would spread ``1/B`` of every example's gradient over the
  whole batch, so all examples would receive the *same* update (the batch-average
  gradient) and the encoder would learn nothing about how a clamped unit should depend on
  its own input; straight-through keeps the per-example signal of SGVB while the decoder
  can rely only on what the batch shares.
* ``"replace"``: the paper's step 7 read literally: the decoder's gradient does not reach
  the clamped units at all (``mean.detach()``); their only training signal is the
  invariance term below.

  Caveat of straight-through, measured in ``experiments/clamped_batches.py``: a unit that is
  clamped in *every* batch (an intrinsic unit when no factor is intrinsic) still receives
  per-example decoder gradients, so it learns to encode factors although the decoder never
  sees its per-example value: those units held most of the rate and the top mutual
  information with shape, scale and pos_x there. ``"replace"`` has no such leak.

Invariance targeting (sec. 3.3): the clamped units of every example receive a gradient equal
to their difference from the batch mean, scaled by 1/100 in the paper. That is the gradient
of :func:`invariance_penalty` ``= mean_i 0.5 sum_{clamped d} (z_id - mean_d)^2`` (mean
detached), used as the ELBO term ``invariance`` with weight 0.01 by the ``dc_ign`` recipe.
"""
from __future__ import annotations

import pyro
import torch
from torch import nn

from .vae import VAE

CLAMP_GRADIENTS = ("straight_through", "replace")


class ClampMap(nn.Module):
    """Which units are clamped in a batch, from ``which`` (factor index per example, -1 = intrinsic).

    ``factor_unit`` [K + 1] holds the unit of each factor (-1 for unassigned ones) and a final
    -1 so that ``factor_unit[which]`` also reads -1 for ``which = -1``.
    """

    def __init__(self, factor_unit, latent_dim: int):
        super().__init__()
        fu = torch.as_tensor(factor_unit, dtype=torch.long)
        if fu.dim() != 1 or fu[-1] != -1:
            raise ValueError("factor_unit must be a vector of units per factor ending with -1")
        assigned = torch.zeros(int(latent_dim), dtype=torch.bool)
        units = fu[fu >= 0]
        if len(units) and int(units.max()) >= latent_dim:
            raise ValueError(f"factor_unit names unit {int(units.max())} but the code has {latent_dim} units")
        assigned[units] = True
        self.register_buffer("factor_unit", fu, persistent=False)
        self.register_buffer("assigned", assigned, persistent=False)  # [D] units designated to a factor
        self.latent_dim = int(latent_dim)
        self.num_factors = len(fu) - 1

    def forward(self, which: torch.Tensor) -> torch.Tensor:
        """Boolean mask [B, D]: True where the unit is clamped (held at the batch mean)."""
        which = torch.as_tensor(which, device=self.factor_unit.device).long().reshape(-1)
        if ((which < -1) | (which >= self.num_factors)).any():
            raise ValueError(f"which must name a factor in 0..{self.num_factors - 1} or be -1 (intrinsic); got "
                             f"{sorted(set(which.tolist()))}")
        unit = self.factor_unit[which]  # [B], -1 for intrinsic batches or unassigned factors
        free = torch.nn.functional.one_hot(unit.clamp(min=0), self.latent_dim).bool() & (unit >= 0)[:, None]
        intrinsic = (which == -1)[:, None] & ~self.assigned[None, :]  # intrinsic batches: unassigned units vary
        return ~(free | intrinsic)


def group_mean(z: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """Per example, the mean of ``z`` over the examples with the same ``which`` ([B, D])."""
    _, inverse = torch.unique(which, return_inverse=True)
    onehot = torch.nn.functional.one_hot(inverse).to(z.dtype)  # [B, G]
    means = (onehot.T @ z) / onehot.sum(0)[:, None]
    return onehot @ means


def clamp_to_mean(z: torch.Tensor, clamp: torch.Tensor, which: torch.Tensor,
                  gradient: str = "straight_through") -> torch.Tensor:
    """``z`` with the ``clamp``-ed entries replaced by their batch (group) mean; see the module docstring."""
    mean = group_mean(z, which)
    if gradient == "straight_through":
        clamped = z + (mean - z).detach()
    elif gradient == "replace":
        clamped = mean.detach()
    else:
        raise ValueError(f"unknown clamp_gradient {gradient!r}; choose one of {', '.join(CLAMP_GRADIENTS)}")
    return torch.where(clamp, clamped, z)


def invariance_penalty(z: torch.Tensor, clamp: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """Kulkarni et al.'s invariance targeting (sec. 3.3): ``mean_i 0.5 sum_{clamped d} (z_id - mean_d)^2``.

    The batch mean is detached, so d/dz_id = (z_id - mean_d) / B: each clamped unit is pulled
    towards the batch mean by its difference from it (the paper's gradient, per example).
    """
    mean = group_mean(z, which).detach()
    return 0.5 * ((z - mean).pow(2) * clamp).sum(-1).mean()


class ClampedVAE(VAE):
    """The Gaussian VAE whose decoder input is clamped per batch (DC-IGN); ``model(x, which)``, ``guide(x, which)``."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int, likelihood, factor_unit,
                 clamp_gradient: str = "straight_through"):
        super().__init__(encoder, decoder, latent_dim, likelihood)
        if clamp_gradient not in CLAMP_GRADIENTS:
            raise ValueError(f"unknown clamp_gradient {clamp_gradient!r}; choose one of {', '.join(CLAMP_GRADIENTS)}")
        self.clamp_map = ClampMap(factor_unit, latent_dim)
        self.clamp_gradient = clamp_gradient

    def decoder_input(self, z: torch.Tensor, which: torch.Tensor | None) -> torch.Tensor:
        if which is None:
            return z
        return clamp_to_mean(z, self.clamp_map(which), which.reshape(-1), self.clamp_gradient)

    def model(self, x: torch.Tensor, which: torch.Tensor | None = None) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x.shape[0], x))
            pyro.sample("x", self.likelihood(self.decoder(self.decoder_input(z, which))), obs=x)

    def guide(self, x: torch.Tensor, which: torch.Tensor | None = None) -> None:
        with pyro.plate("data", x.shape[0]):
            self.encoder.sample("z", x)


class Invariance:
    """ELBO term: :func:`invariance_penalty` on the sampled codes of a clamped batch (0 without ``which``)."""

    def __init__(self, clamp_map: ClampMap, site: str = "z"):
        self.clamp_map, self.site = clamp_map, site

    def __call__(self, ctx) -> torch.Tensor:
        z = ctx.latent(self.site).value
        if len(ctx.args) < 2 or ctx.args[1] is None:
            return z.new_zeros(())
        which = ctx.args[1].reshape(-1)
        return invariance_penalty(z, self.clamp_map.to(z.device)(which), which)
