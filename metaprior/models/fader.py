"""Attribute-conditioned autoencoders: FaderNetworks and the two-step disentanglement model.

FaderNetworks (Lample et al. 2017, sec. 3; survey Tschannen et al. 2018, eq. 18)::

    q(z | x)    = delta(z - E(x))                      deterministic encoder (site "z")
    p(x | z, y) = likelihood(D(concat(z, y)))          decoder conditioned on the attribute y

and a latent critic P(y | z) (:mod:`metaprior.methods.fader`) that the encoder learns to
fool, so that z carries no information about y and the decoder must take y from its
input: decoding ``E(x)`` with another ``y`` edits the attribute (:meth:`FaderNetwork.edit`).

Two-step disentanglement (Hadad, Wolf & Shahar 2018, "A Two-Step Disentanglement
Method", sec. 3)::

    s = E1(x)   the "specified" code, trained only to predict y through a classifier head (step 1)
    z = E2(x)   the "unspecified" code, trained for reconstruction against a critic on z (step 2)
    p(x | s, z) = likelihood(D(concat(s, z)))

Both codes are ``Delta`` sites (``"s"`` and ``"z"``) with standard-normal priors, so the
library's ELBO reports ``distortion = E[-log p(x | ...)]`` and, as for
:class:`~metaprior.models.autoencoder.Autoencoder`, a ``rate`` that is the prior
cross-entropy of the codes (logged with weight 0). The guide's ``s`` is ``E1(x)``
*detached*: no reconstruction (or critic) gradient ever reaches E1, which only the
recipe's ``classification`` term trains (see :class:`~metaprior.methods.fader.TwoStep`).

The programs take the ``(x, y)`` batches of :class:`~metaprior.data.attributes.WithAttribute`.
"""
from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..guides.deterministic import DeterministicEncoder
from .autoencoder import Autoencoder
from .likelihoods import Likelihood
from .priors import Prior


def _check_attribute(y, width: int, batch: int | None, what: str) -> torch.Tensor:
    """``y`` as a float tensor [B, width]: a row [width] (or a number when width == 1) is repeated over the batch."""
    y = torch.as_tensor(y, dtype=torch.get_default_dtype())
    if y.dim() == 0 and width == 1:
        y = y.reshape(1, 1)
    if y.dim() == 1:
        y = y.unsqueeze(0) if y.shape[0] == width else y.unsqueeze(-1)
    if y.dim() != 2 or y.shape[1] != width:
        raise ValueError(f"{what} needs attributes y of width {width} (shape [B, {width}] or [{width}]), "
                         f"got shape {tuple(y.shape)}")
    if batch is not None and y.shape[0] not in (1, batch):
        raise ValueError(f"{what}: y has {y.shape[0]} rows for a batch of {batch} examples; pass one row or one per example")
    if batch is not None and y.shape[0] == 1:
        y = y.expand(batch, width)
    if not torch.isfinite(y).all():
        raise ValueError(f"{what}: y holds NaN or infinite values")
    return y


class FaderNetwork(Autoencoder):
    """Encoder ``E(x)`` (site ``"z"``, deterministic by default) and decoder ``D(concat(z, y))``.

    ``decoder`` must take ``latent_dim + attribute_dim`` inputs. ``model(x, y)`` / ``guide(x, y)``.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int, attribute_dim: int,
                 likelihood: Likelihood, prior: Prior | None = None, deterministic: bool = True):
        super().__init__(encoder, decoder, latent_dim, likelihood, prior, deterministic)
        self.attribute_dim = int(attribute_dim)
        if self.attribute_dim < 1:
            raise ValueError(f"attribute_dim must be >= 1, got {attribute_dim}")

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        if y is None:
            raise ValueError("FaderNetwork.model needs the attribute y: train on (x, y) batches "
                             "(metaprior.data.attributes.WithAttribute)")
        y = _check_attribute(y, self.attribute_dim, x.shape[0], "FaderNetwork.model")
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x.shape[0], x))
            pyro.sample("x", self.likelihood(self.decoder(torch.cat([z, y.to(z)], -1))), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        with pyro.plate("data", x.shape[0]):
            self.encoder.sample("z", x)

    def decode(self, z: torch.Tensor, y) -> torch.Tensor:
        """Mean of ``p(x | z, y)``; ``y`` [B, attribute_dim] or one row for the whole batch."""
        y = _check_attribute(y, self.attribute_dim, z.shape[0], "FaderNetwork.decode").to(z)
        return self.likelihood.mean(self.decoder(torch.cat([z, y], -1)))

    @torch.no_grad()
    def edit(self, x: torch.Tensor, y_new) -> torch.Tensor:
        """The decoded mean of ``x`` with its attribute set to ``y_new``: ``mean p(x | E(x), y_new)``.

        ``y_new`` is any vector of width ``attribute_dim`` (values in [0, 1]: a continuous
        attribute, or a one-hot row, or a mixture of categories for intermediate edits),
        one row for the whole batch or one per example.
        """
        self.check_input(x)
        loc, _ = self.encode(x)
        return self.decode(loc, y_new)


class TwoStepAutoencoder(Autoencoder):
    """Hadad et al.'s model: ``s = E1(x)`` + classifier head, ``z = E2(x)``, decoder ``D(concat(s, z))``.

    ``specified`` is the E1 net (x -> ``specified_dim`` numbers), ``classifier`` maps s to the
    attribute's logits; ``encoder`` is the E2 net (x -> ``latent_dim``); ``decoder`` takes
    ``specified_dim + latent_dim`` inputs.
    """

    def __init__(self, specified: nn.Module, specified_dim: int, classifier: nn.Module, encoder: nn.Module,
                 decoder: nn.Module, latent_dim: int, likelihood: Likelihood, prior: Prior | None = None):
        super().__init__(encoder, decoder, latent_dim, likelihood, prior, deterministic=True)
        self.specified_dim = int(specified_dim)
        self.specified = DeterministicEncoder(specified, self.specified_dim)
        self.classifier = classifier
        self.prior_s = Prior("normal", self.specified_dim)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        with pyro.plate("data", x.shape[0]):
            s = pyro.sample("s", self.prior_s(x.shape[0], x))
            z = pyro.sample("z", self.prior(x.shape[0], x))
            pyro.sample("x", self.likelihood(self.decoder(torch.cat([s, z], -1))), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("s", dist.Delta(self.specified.code(x).detach(), event_dim=1))  # E1 is trained by its classifier only
            self.encoder.sample("z", x)

    # -- helpers for evaluation, plots and editing ---------------------------------------------
    def codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s, z) = (E1(x), E2(x))``."""
        self.check_input(x)
        return self.specified.code(x), self.encoder.code(x)

    def class_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The step-1 classifier's logits of the attribute, with gradients into E1."""
        return self.classifier(self.specified.code(x))

    def decode(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Mean of ``p(x | s, z)``."""
        if s.shape[-1] != self.specified_dim or z.shape[-1] != self.latent_dim or s.shape[0] != z.shape[0]:
            raise ValueError(f"decode needs s [B, {self.specified_dim}] and z [B, {self.latent_dim}], "
                             f"got {tuple(s.shape)} and {tuple(z.shape)}")
        return self.likelihood.mean(self.decoder(torch.cat([s, z], -1)))

    @torch.no_grad()
    def swap(self, x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
        """Decode the specified part of ``x_b`` with the unspecified part of ``x_a``: ``D(E1(x_b), E2(x_a))``."""
        if x_a.shape != x_b.shape:
            raise ValueError(f"swap needs two batches of the same shape, got {tuple(x_a.shape)} and {tuple(x_b.shape)}")
        _, z_a = self.codes(x_a)
        s_b, _ = self.codes(x_b)
        return self.decode(s_b, z_a)

    @torch.no_grad()
    def interpolate(self, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 5) -> torch.Tensor:
        """``D((1 - t) E1(x_a) + t E1(x_b), E2(x_a))`` for ``steps`` values of t in [0, 1]: [B, steps, ...]."""
        if int(steps) < 2:
            raise ValueError(f"interpolate needs steps >= 2, got {steps}")
        if x_a.shape != x_b.shape:
            raise ValueError(f"interpolate needs two batches of the same shape, got {tuple(x_a.shape)} and {tuple(x_b.shape)}")
        s_a, z_a = self.codes(x_a)
        s_b, _ = self.codes(x_b)
        ts = torch.linspace(0, 1, int(steps), dtype=s_a.dtype, device=s_a.device)
        out = [self.decode((1 - t) * s_a + t * s_b, z_a) for t in ts]
        return torch.stack(out, 1)
