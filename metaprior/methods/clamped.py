"""DC-IGN: supervision by clamped batches (Kulkarni et al. 2015; survey Tschannen et al. 2018, sec. 3.4).

The survey's section 3.4 lists DC-IGN among the methods that use (weak) supervision to
impose the meta-prior of disentanglement: each mini-batch varies a single generative factor,
and the code units designated to the other factors are clamped to their batch mean before
decoding, so the decoder can only explain the batch's variation through the varying
factor's unit. See :mod:`metaprior.data.clamped` for the batches and
:mod:`metaprior.models.clamped` for the clamping and its gradient.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..data.clamped import ClampedBatches, parse_assignment
from ..inference.regularizers import check_weight
from ..models.clamped import CLAMP_GRADIENTS, ClampedVAE, ClampMap, Invariance
from ..models.likelihoods import make_likelihood
from ..nets.conv import build_encoder_decoder
from . import register
from .base import GaussianVAE


@register("dc_ign")
@dataclass(frozen=True)
class DCIGN(GaussianVAE):
    """DC-IGN (Kulkarni et al. 2015, sec. 3.2-3.3; survey sec. 3.4): the VAE trained on clamped batches.

    Objective: the negative ELBO (SGVB, their sec. 3.1) with the decoder fed the clamped code
    (units of the non-varying factors at their batch mean; rate = KL of the unclamped
    q(z|x)), plus ``invariance`` x the invariance-targeting term (sec. 3.3: clamped units
    pulled towards the batch mean, weight 1/100 in the paper; term ``invariance``).

    ``assignment``: ``"FACTOR:UNIT,..."`` (e.g. ``"shape:0,scale:1"``); default ``""``: the k-th
    factor that varies -> unit k (dSprites: shape, scale, orientation, pos_x, pos_y -> z0..z4),
    the other units intrinsic. ``intrinsic``: add batches in which only the unassigned
    factors vary (needs one). ``clamp_gradient``: ``straight_through`` (default; forward =
    batch mean, backward = identity per example) or ``replace`` (the decoder's gradient does
    not reach clamped units; only the invariance term moves them, the paper's step 7).
    Batches are built by :class:`~metaprior.data.clamped.ClampedBatches` (``prepare_data``);
    the run's data needs ground-truth factors (dsprites). ``encode(x)`` is the plain encoder,
    so ``metaprior evaluate`` / ``plot`` apply unchanged.
    """

    assignment: str = ""
    intrinsic: bool = False
    invariance: float = 0.01
    clamp_gradient: str = "straight_through"

    def __post_init__(self):
        super().__post_init__()
        check_weight("invariance", self.invariance)
        if self.clamp_gradient not in CLAMP_GRADIENTS:
            raise ValueError(f"unknown clamp_gradient {self.clamp_gradient!r}; choose one of {', '.join(CLAMP_GRADIENTS)}")
        parse_assignment(self.assignment)  # syntax checked here, names against the data in prepare_data

    def prepare_data(self, data):
        if isinstance(data, ClampedBatches):
            return data
        return ClampedBatches(data, self.assignment, intrinsic=self.intrinsic, latent_dim=self.latent_dim)

    def build_model(self, data) -> nn.Module:
        data = self.prepare_data(data)
        lik = make_likelihood(self.likelihood, data.observation_shape, data.is_binary, self.obs_scale)
        enc, dec = build_encoder_decoder(self.net, data.observation_shape, 2 * self.latent_dim, self.latent_dim, self.hidden)
        return ClampedVAE(enc, dec, self.latent_dim, lik, data.factor_unit, self.clamp_gradient)

    def terms(self, data) -> dict[str, tuple[Any, Any]]:
        data = self.prepare_data(data)
        return {"invariance": (self.invariance, Invariance(ClampMap(data.factor_unit, self.latent_dim)))}
