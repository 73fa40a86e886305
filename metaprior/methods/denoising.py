"""The denoising autoencoder (Vincent et al. 2008; 2010; survey Tschannen et al. 2018, sec. 6)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..models.denoising import DenoisingAutoencoder, check_corruption
from . import register
from .adversarial import _Autoencoder


@register("dae")
@dataclass(frozen=True)
class DAE(_Autoencoder):
    """Denoising autoencoder (Vincent et al. 2010, eq. 3 / sec. 3.3; survey sec. 6, "other approaches").

    Minimize ``D = E[-log p(x | f(x~))]`` with ``x~`` a corrupted copy of ``x``: the encoder
    sees ``x~``, the decoder's target is the clean ``x`` (:mod:`metaprior.models.denoising`).
    ``corruption="mask"`` zeroes a random fraction ``noise`` (in [0, 1)) of the input
    components of each example (their masking noise); ``"gaussian"`` adds N(0, noise^2).
    Corruption happens only in training; ``encode(x)`` (metrics, plots) uses the clean
    input. Deterministic encoder and logged prior cross-entropy ``rate`` (weight ``beta = 0``)
    as for ``ae``; ``deterministic=false`` gives a Gaussian encoder (a denoising VAE's
    corruption step, Im et al. 2017, without its objective).
    """

    corruption: str = "mask"
    noise: float = 0.25

    def __post_init__(self):
        super().__post_init__()
        check_corruption(self.corruption, self.noise)

    def autoencoder(self, *args) -> nn.Module:
        return DenoisingAutoencoder(*args, corruption=self.corruption, noise=self.noise)
