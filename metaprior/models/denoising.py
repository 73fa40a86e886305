"""The denoising autoencoder as a Pyro program (Vincent et al. 2008, sec. 2.3; 2010, sec. 3-4; survey sec. 6).

    x~ ~ C(x~ | x)  (corruption),   z = f(x~),   p(x | z) = likelihood(decoder(z))

The guide encodes a corrupted copy of the batch; the model scores the *clean* batch, so the
reconstruction target is x (Vincent et al. 2010, eq. 3: minimize E[L(x, g(f(x~)))]).
Corruption (:func:`corrupt`) happens only while the module is in training mode
(``pair.train()``, the trainer's default); ``encode(x)`` always sees the clean input, and
so do the guide and the metrics after ``pair.eval()`` (``metaprior.runs.load_run``).

* ``"mask"``: masking noise (their MN): for every example a fraction ``noise`` of its input
  components, chosen at random, is set to 0 (exactly ``round(noise * D)`` of the D
  components, as in Vincent et al. 2010, sec. 4.1: "a fraction nu of the elements ... forced to 0").
* ``"gaussian"``: additive isotropic Gaussian noise (their GS), ``x~ = x + noise * eps``.

The noise is drawn with torch's global RNG, which ``pyro.set_rng_seed`` (the trainer) seeds,
so a run with the same seed sees the same corruption.
"""
from __future__ import annotations

import pyro
import torch

from .autoencoder import Autoencoder

CORRUPTIONS = ("mask", "gaussian")


def check_corruption(kind: str, noise: float) -> None:
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}; choose one of {', '.join(CORRUPTIONS)}")
    noise = float(noise)
    if kind == "mask" and not 0.0 <= noise < 1.0:
        raise ValueError(f"masking noise is the fraction of input components set to 0 and must lie in [0, 1), "
                         f"got noise={noise}")
    if kind == "gaussian" and not (noise >= 0.0 and noise < float("inf")):
        raise ValueError(f"gaussian corruption needs a finite standard deviation noise >= 0, got noise={noise}")


def corrupt(x: torch.Tensor, kind: str, noise: float) -> torch.Tensor:
    """A corrupted copy of the batch ``x`` [B, ...] (see the module docstring)."""
    check_corruption(kind, noise)
    if noise == 0.0:
        return x
    if kind == "gaussian":
        return x + noise * torch.randn_like(x)
    flat = x.reshape(x.shape[0], -1)
    k = int(round(noise * flat.shape[1]))
    if k == 0:
        return x
    idx = torch.rand(flat.shape, device=x.device).argsort(dim=1)[:, :k]  # k random components per example
    keep = torch.ones_like(flat, dtype=torch.bool).scatter_(1, idx, False)
    return (flat * keep).reshape(x.shape)


class DenoisingAutoencoder(Autoencoder):
    """:class:`~metaprior.models.autoencoder.Autoencoder` whose guide encodes ``corrupt(x)`` while training."""

    def __init__(self, *args, corruption: str = "mask", noise: float = 0.25, **kwargs):
        super().__init__(*args, **kwargs)
        check_corruption(corruption, noise)
        self.corruption, self.noise = corruption, float(noise)

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        return corrupt(x, self.corruption, self.noise) if self.training else x

    def guide(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            self.encoder.sample("z", self.encoder_input(x))
