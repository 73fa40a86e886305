"""Regressions for bugs that other libraries implementing these objectives have shipped.

Each test is named for the bug it rules out and checks the property the bug breaks, with an
oracle that does not come from the code under test.
"""
from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch
from scipy.stats import norm

from metaprior.data import load
from metaprior.inference.estimators import dip_penalty, elbo_decomposition_terms, mss_log_weights
from metaprior.methods import METHODS, configure

F64 = torch.float64


def encodings(m, d, seed):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(m, d, generator=g, dtype=F64)
    scale = 0.4 + 0.8 * torch.rand(m, d, generator=g, dtype=F64)
    return loc + scale * torch.randn(m, d, generator=g, dtype=F64), loc, scale


# ------------------------------------------------------------------------ MSS weights
@pytest.mark.parametrize("m,n", [(3, 10), (6, 50), (8, 8)])
def test_mss_stride_bug_weight_rows_sum_to_one_with_the_own_weight_on_the_diagonal(m, n):
    """The reference beta-TCVAE code builds the stratified weight matrix with a strided fill that puts 1/N in
    column 0 (and the odd weight (N-M+1)/(NM) one row off) instead of on each sample's own component; copied into
    several libraries. Here every row sums to 1, row i has 1/N exactly at column i, and -- what the stride bug
    breaks -- the estimates do not depend on the order of the batch."""
    w = mss_log_weights(m, n, dtype=F64).exp()
    torch.testing.assert_close(w.sum(1), torch.ones(m, dtype=F64))
    torch.testing.assert_close(w.diagonal(), torch.full((m,), 1.0 / n, dtype=F64))
    if n > m:
        assert float(w[1:, 0].max()) > 1.0 / n  # column 0 holds no 1/N outside row 0
    z, loc, scale = encodings(m, 3, seed=m * n)
    perm = torch.randperm(m, generator=torch.Generator().manual_seed(1))
    a = elbo_decomposition_terms(z, loc, scale, n, "mss")
    b = elbo_decomposition_terms(z[perm], loc[perm], scale[perm], n, "mss")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-12, atol=1e-12)


def test_importance_weight_enters_log_qz_once_not_per_latent_dimension():
    """A common slip adds the log importance weight to every dimension's log-density before summing over the D
    dimensions, so the joint log q(z) carries the weight D times. With every encoder equal, q(z) = q(z | x) exactly
    (the weights of a row sum to 1): MI and TC must be 0 at any N, D; and at distinct encoders log q(z_i) must
    equal the brute-force log sum_j w_ij prod_d q(z_id | x_j)."""
    m, d, n = 6, 5, 40
    row_loc = torch.tensor([[0.3, -1.0, 2.0, 0.5, -0.2]], dtype=F64)
    row_scale = torch.tensor([[0.5, 1.2, 0.3, 0.8, 1.0]], dtype=F64)
    z = row_loc + row_scale * torch.randn(m, d, generator=torch.Generator().manual_seed(0), dtype=F64)
    terms = elbo_decomposition_terms(z, row_loc.repeat(m, 1), row_scale.repeat(m, 1), n, "mss")
    assert abs(terms["mi"].item()) < 1e-12 and abs(terms["tc"].item()) < 1e-12
    z, loc, scale = encodings(m, d, seed=2)
    w = np.full((m, m), (n - 1) / (n * (m - 1)))
    np.fill_diagonal(w, 1.0 / n)
    log_qz = []
    for i in range(m):
        comps = [np.prod(norm.pdf(z[i].numpy(), loc[j].numpy(), scale[j].numpy())) for j in range(m)]
        log_qz.append(math.log(sum(w[i, j] * comps[j] for j in range(m))))
    log_cond = norm.logpdf(z.numpy(), loc.numpy(), scale.numpy()).sum(1)
    mi = float(np.mean(log_cond - np.array(log_qz)))
    assert elbo_decomposition_terms(z, loc, scale, n, "mss")["mi"].item() == pytest.approx(mi, rel=1e-10)


# ------------------------------------------------------------------------- FactorVAE
def test_factor_vae_critic_loss_gives_the_encoder_exactly_zero_gradient():
    """FactorVAE's discriminator loss must not train the encoder (Kim & Mnih 2018, Alg. 2 updates the VAE only with
    its own loss): implementations that reuse the batch's codes without detaching them leak the critic's gradient
    into the encoder. The update's loss reaches no parameter of the model/guide pair, while the TC term does."""
    digits = load("digits")
    pyro.set_rng_seed(0)
    pair, objective = configure(METHODS["factor_vae"], {"latent_dim": 4, "hidden": (16,), "critic_hidden": (8,)}).build(digits)
    critic = objective.terms["tc"][1]
    x = torch.as_tensor(digits.batch(0, 16, 0))
    res = objective(pair.model, pair.guide, x)
    params = list(pair.parameters())
    out = critic.update(res.context)
    grads = torch.autograd.grad(out["loss"], params + list(critic.parameters()), allow_unused=True, retain_graph=True)
    enc_grads, critic_grads = grads[: len(params)], grads[len(params):]
    assert all(g is None or float(g.abs().max()) == 0.0 for g in enc_grads)
    assert any(g is not None and float(g.abs().max()) > 0 for g in critic_grads)  # ... it does train the critic
    tc_grads = torch.autograd.grad(critic(res.context), list(pair.encoder.parameters()), allow_unused=True)
    assert any(g is not None and float(g.abs().max()) > 0 for g in tc_grads)


# -------------------------------------------------------------------------- DIP-VAE
def test_dip_vae_centres_the_means_across_the_batch_not_across_dimensions():
    """Cov[mu] centres each latent dimension by its mean over the batch (Kumar et al. 2018, eq. 6); centring each
    code by its mean over its own dimensions (mean over the wrong axis) is a bug seen in ports. The penalty is
    invariant to shifting every code by one vector and equals the hand covariance."""
    g = torch.Generator().manual_seed(3)
    loc = torch.randn(12, 3, generator=g, dtype=F64) @ torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 0.7]],
                                                                     dtype=F64)
    shift = torch.tensor([[2.0, -5.0, 0.5]], dtype=F64)
    centred = loc.numpy() - loc.numpy().mean(0, keepdims=True)
    cov = centred.T @ centred / len(loc)
    off = (cov ** 2).sum() - (np.diag(cov) ** 2).sum()
    diag = ((np.diag(cov) - 1) ** 2).sum()
    for lod, ld in ((1.0, 0.0), (0.0, 1.0), (3.0, 2.0)):
        want = lod * off + ld * diag
        assert dip_penalty(loc, kind="i", lambda_od=lod, lambda_d=ld).item() == pytest.approx(want, rel=1e-10)
        assert dip_penalty(loc + shift, kind="i", lambda_od=lod, lambda_d=ld).item() == pytest.approx(want, rel=1e-10)


# --------------------------------------------------------------------------- VQ-VAE
@pytest.mark.parametrize("update", ["ema", "loss"])
def test_vq_vae_commitment_loss_scaled_as_eq_3(update):
    """van den Oord et al. (2017) eq. 3: beta ||z_e(x) - sg[e]||^2 with beta = 0.25, the squared norm summed over the
    code's dimensions, per example. Seen in ports: beta on the codebook term instead, a mean over dimensions, or
    the commitment term's gradient reaching the codebook. The factor's gradient on z_e is 2 beta (z_e - e)."""
    digits = load("digits")
    pyro.set_rng_seed(0)
    cfg = {"latent_dim": 3, "codes": 2, "codebook_size": 5, "hidden": (16,), "codebook_update": update}
    pair, objective = configure(METHODS["vq_vae"], cfg).build(digits)
    pair.eval()  # no EMA update, no data-dependent re-initialization during this check
    x = torch.as_tensor(digits.batch(0, 8, 0))
    res = objective(pair.model, pair.guide, x)
    z_e = res.context.latent("z").value
    vec = z_e.reshape(8, 2, 3)
    book = pair.quantizer.codebook
    e = book.detach()[((vec.detach().unsqueeze(2) - book.detach()).pow(2).sum(-1)).argmin(-1)]
    sq = (vec.detach() - e).pow(2).sum((1, 2))
    assert res.parts["commitment"].item() == pytest.approx(-0.25 * sq.mean().item(), rel=1e-5)
    assert ("codebook" in res.parts) == (update == "loss")
    tr = res.context.model_trace
    comm = -tr.nodes["commitment"]["fn"].log_prob(tr.nodes["commitment"]["value"]).sum()
    g_z, = torch.autograd.grad(comm, [z_e], retain_graph=True)
    torch.testing.assert_close(g_z.reshape(8, 2, 3), 2 * 0.25 * (vec.detach() - e), rtol=1e-5, atol=1e-7)
    if update == "loss":
        g_book = torch.autograd.grad(comm, [book], allow_unused=True)[0]
        assert g_book is None or float(g_book.abs().max()) == 0.0
