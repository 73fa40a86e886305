"""VQ-VAE (van den Oord et al. 2017, "Neural Discrete Representation Learning"; survey eq. 19).

An encoder ``z_e(x)`` emits M code vectors of dimension D; each is replaced by its nearest
codebook entry,

    z_q(x)_m = e_k,   k = argmin_j || z_e(x)_m - e_j ||_2          (van den Oord et al., eq. 1-2)

and the decoder reconstructs x from ``z_q``. Training (their eq. 3, per example)

    L = -log p(x | z_q(x)) + || sg[z_e(x)] - e ||^2 + beta_c || z_e(x) - sg[e] ||^2

with the straight-through estimator: the decoder's input is ``z_e + sg[z_q - z_e]`` (value
z_q, gradient copied to z_e). The codebook term can be replaced by exponential moving
averages (their appendix A.1): with ``n_k`` the number and ``s_k`` the sum of the batch's
vectors assigned to code k,

    N_k <- gamma N_k + (1 - gamma) n_k,   m_k <- gamma m_k + (1 - gamma) s_k,   e_k <- m_k / N_k,

a k-means step on the code vectors (the survey's description); with gamma = 0, ``e_k`` is
the mean of its cluster. Codes with ``N_k = 0`` keep their value.

As a Pyro program. The guide has one site, ``"z"`` = Delta(z_e(x)) (the deterministic
encoder, reparameterized). The *model* quantizes: its latent ``"z"`` has the prior
:class:`CodebookPrior` (the code indices uniform over the K^M code maps, van den Oord et
al. sec. 3.1), it snaps the replayed ``z_e`` to the codebook, and declares the codebook and
commitment terms as ``pyro.factor`` sites (``has_rsample=True``) because only the model's
sites enter the objective and only the model holds both ``z_e`` and ``z_q``. The
library's ELBO then reports

* ``rate`` = ``KL(q || p)`` = ``M log K`` nats, the constant of van den Oord et al. sec. 3.1
  (Pyro's ``KL(Delta || p) = -log p(z_e)``, and ``log p = -M log K`` for every code map);
* ``distortion`` = ``-log p(x | z_q(x))``;
* ``codebook`` and ``commitment``: the log-factors, i.e. the *negated* losses
  ``-||sg[z_e] - e||^2`` and ``-beta_c ||z_e - sg[e]||^2`` per example (summed over the M
  vectors and D dimensions); ``codebook`` is absent with EMA updates.

EMA updates run only in training mode with gradients enabled (a training step), never
under ``torch.no_grad`` (evaluation, the trainer's set-up pass) or in ``eval()`` mode; use
one particle per step.
"""
from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution
from torch import nn

from ..guides.deterministic import DeterministicEncoder
from .likelihoods import Likelihood

CODEBOOK_UPDATES = ("ema", "loss")


class VectorQuantizer(nn.Module):
    """A codebook of ``size`` K vectors of dimension D with nearest-neighbour quantization.

    ``update="loss"``: the codebook is a parameter trained by the codebook loss.
    ``update="ema"``: a buffer updated by :meth:`ema_update` with ``decay`` gamma.
    ``data_init``: the first training batch's code vectors (K drawn at random) become the
    initial codebook (fewer dead codes than a random initialisation).
    """

    def __init__(self, size: int, dim: int, update: str = "ema", decay: float = 0.99, data_init: bool = True):
        super().__init__()
        if int(size) < 1:
            raise ValueError(f"the codebook size must be >= 1, got {size}")
        if int(dim) < 1:
            raise ValueError(f"the code dimension must be >= 1, got {dim}")
        if update not in CODEBOOK_UPDATES:
            raise ValueError(f"unknown codebook update {update!r}; valid: {', '.join(CODEBOOK_UPDATES)}")
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"the EMA decay must be in [0, 1), got {decay}")
        self.size, self.dim, self.update, self.decay = int(size), int(dim), update, float(decay)
        init = torch.empty(self.size, self.dim).uniform_(-1.0 / self.size, 1.0 / self.size)  # van den Oord et al.
        if update == "loss":
            self.codebook = nn.Parameter(init)
        else:
            self.register_buffer("codebook", init)
            self.register_buffer("ema_count", torch.zeros(self.size))
            self.register_buffer("ema_sum", torch.zeros(self.size, self.dim))
        self.register_buffer("initialized", torch.tensor(not data_init))

    def assign(self, z_e: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook vector for each vector of ``z_e`` [..., D]."""
        with torch.no_grad():
            flat = z_e.reshape(-1, self.dim)
            d2 = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.t()
                  + self.codebook.pow(2).sum(1)[None])
            return d2.argmin(1).reshape(z_e.shape[:-1])

    def forward(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_q, indices)``: the nearest codebook vectors (differentiable in the codebook) and their indices."""
        idx = self.assign(z_e)
        return self.codebook[idx], idx

    @torch.no_grad()
    def init_from(self, z_e: torch.Tensor) -> None:
        flat = z_e.detach().reshape(-1, self.dim)
        pick = torch.randint(len(flat), (self.size,), device=flat.device)
        self.codebook.copy_(flat[pick])
        self.initialized.fill_(True)

    @torch.no_grad()
    def ema_update(self, z_e: torch.Tensor, idx: torch.Tensor) -> None:
        """One exponential-moving-average step (van den Oord et al. 2017, appendix A.1, eqs. 6-8)."""
        if self.update != "ema":
            raise RuntimeError("ema_update needs a quantizer built with update='ema'")
        flat = z_e.detach().reshape(-1, self.dim)
        onehot = torch.nn.functional.one_hot(idx.reshape(-1), self.size).to(flat.dtype)
        g = self.decay
        self.ema_count.mul_(g).add_((1 - g) * onehot.sum(0))
        self.ema_sum.mul_(g).add_((1 - g) * onehot.t() @ flat)
        used = self.ema_count > 0
        self.codebook[used] = self.ema_sum[used] / self.ema_count[used, None]

    @torch.no_grad()
    def perplexity(self, idx: torch.Tensor) -> torch.Tensor:
        """``exp H`` of the codes' empirical distribution over the batch (1..K: how many codes are in use)."""
        p = torch.bincount(idx.reshape(-1), minlength=self.size).to(torch.get_default_dtype())
        p = p / p.sum()
        return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())


class CodebookPrior(TorchDistribution):
    """Uniform prior over code maps: M code vectors, each one of K codebook entries with probability 1/K.

    ``log_prob`` is ``-M log K`` for every value (a density with respect to counting
    measure on the quantization cells: every ``z_e`` of a cell has the mass of its code);
    ``sample`` draws M uniform codes and returns their codebook vectors, flattened to
    ``[..., M * D]``.
    """

    arg_constraints = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, codebook: torch.Tensor, codes: int, batch_shape=torch.Size(), validate_args=None):
        self.codebook, self.codes = codebook, int(codes)
        super().__init__(torch.Size(batch_shape), torch.Size([self.codes * codebook.shape[1]]), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return CodebookPrior(self.codebook, self.codes, batch_shape)

    def sample(self, sample_shape=torch.Size()):
        shape = torch.Size(sample_shape) + self.batch_shape
        k = torch.randint(self.codebook.shape[0], shape + (self.codes,), device=self.codebook.device)
        return self.codebook.detach()[k].reshape(shape + self.event_shape)

    def log_prob(self, value):
        return value.new_full(value.shape[:-1], -self.codes * math.log(self.codebook.shape[0]))


class VQVAE(nn.Module):
    """VQ-VAE model/guide pair: guide site ``"z"`` = Delta(z_e(x)) of size ``codes * dim``; see the module docstring."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, codes: int, dim: int, likelihood: Likelihood,
                 quantizer: VectorQuantizer, commitment: float = 0.25):
        super().__init__()
        if int(codes) < 1:
            raise ValueError(f"codes (code vectors per example) must be >= 1, got {codes}")
        if not commitment >= 0:
            raise ValueError(f"the commitment weight must be >= 0, got {commitment}")
        if quantizer.dim != int(dim):
            raise ValueError(f"the codebook holds {quantizer.dim}-dimensional vectors, the encoder emits {dim}")
        self.codes, self.dim = int(codes), int(dim)
        self.latent_dim = self.codes * self.dim
        self.encoder = DeterministicEncoder(encoder, self.latent_dim)
        self.decoder, self.likelihood, self.quantizer = decoder, likelihood, quantizer
        self.commitment = float(commitment)
        self.observation_shape = likelihood.observation_shape

    def _vectors(self, z: torch.Tensor) -> torch.Tensor:
        return z.reshape(z.shape[:-1] + (self.codes, self.dim))

    def quantize(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(z_st, z_q, idx)`` for flat codes ``z_e`` [..., M * D]; ``z_st = z_e + sg[z_q - z_e]``."""
        v = self._vectors(z_e)
        if self.training and torch.is_grad_enabled() and not bool(self.quantizer.initialized):
            self.quantizer.init_from(v)
        z_q, idx = self.quantizer(v)
        z_q = z_q.reshape(z_e.shape)
        return z_e + (z_q - z_e).detach(), z_q, idx

    def model(self, x: torch.Tensor) -> None:
        b = x.shape[0]
        with pyro.plate("data", b):
            z_e = pyro.sample("z", CodebookPrior(self.quantizer.codebook, self.codes, (b,)))
            z_st, z_q, idx = self.quantize(z_e)
            if self.quantizer.update == "loss":
                pyro.factor("codebook", -(z_e.detach() - z_q).pow(2).sum(-1), has_rsample=True)
            pyro.factor("commitment", -self.commitment * (z_e - z_q.detach()).pow(2).sum(-1), has_rsample=True)
            if self.quantizer.update == "ema" and self.training and torch.is_grad_enabled():
                self.quantizer.ema_update(self._vectors(z_e), idx)
            pyro.sample("x", self.likelihood(self.decoder(z_st)), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            self.encoder.sample("z", x)

    # evaluation helpers
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_e, 0)``: the encoder output (the interface of the Gaussian encoder with scale 0)."""
        return self.encoder(x)

    def codes_of(self, x: torch.Tensor) -> torch.Tensor:
        """The code indices [B, M] of ``x``."""
        return self.quantizer.assign(self._vectors(self.encoder.code(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean of p(x | z_q(z)): ``z`` is quantized first."""
        _, z_q, _ = self.quantize(z)
        return self.likelihood.mean(self.decoder(z_q))

    def decode_codes(self, idx: torch.Tensor) -> torch.Tensor:
        """Mean of p(x | e_idx) for code indices [B, M]."""
        z_q = self.quantizer.codebook[idx].reshape(idx.shape[:-1] + (self.latent_dim,))
        return self.likelihood.mean(self.decoder(z_q))


def codebook_perplexity(ctx, model: VQVAE, site: str = "z") -> torch.Tensor:
    """Term (weight 0): the perplexity of the batch's code usage (how many of the K codes are used)."""
    return model.quantizer.perplexity(model.quantizer.assign(model._vectors(ctx.latent(site).value)))
