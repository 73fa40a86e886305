"""Tests of metaprior.inference.estimators against closed forms and naive oracles."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch.distributions import Normal, kl_divergence

from metaprior.inference.estimators import (
    dimensionwise_kl,
    dip_penalty,
    elbo_decomposition_terms,
    gaussian_kl,
    hsic,
    log_density_matrix,
    mmd,
    mss_log_weights,
    mutual_information,
    total_correlation,
)

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def encodings(m, d, scale=0.5, seed=0, cov=None):
    """loc ~ N(0, cov), a constant encoder scale, and z ~ q(z | x) = N(loc, scale^2)."""
    g = gen(seed)
    loc = torch.randn(m, d, generator=g, dtype=F64)
    if cov is not None:
        loc = loc @ torch.linalg.cholesky(torch.as_tensor(cov, dtype=F64)).T
    s = torch.full_like(loc, scale)
    z = loc + s * torch.randn(m, d, generator=g, dtype=F64)
    return z, loc, s


def gaussian_tc(cov: torch.Tensor) -> float:
    """TC of N(0, cov): -0.5 log det(correlation matrix)."""
    return -0.5 * (torch.logdet(cov) - cov.diagonal().log().sum()).item()


# ----------------------------------------------------------------------- gaussian_kl
def test_gaussian_kl_matches_torch_kl():
    g = gen(1)
    loc = torch.randn(7, 4, generator=g, dtype=F64)
    scale = torch.rand(7, 4, generator=g, dtype=F64) * 2 + 0.05
    expected = kl_divergence(Normal(loc, scale), Normal(0.0, 1.0)).sum(-1)
    assert gaussian_kl(loc, scale).shape == (7,)
    torch.testing.assert_close(gaussian_kl(loc, scale), expected)


def test_gaussian_kl_matches_monte_carlo():
    loc = torch.tensor([[0.7, -1.2, 0.1]], dtype=F64)
    scale = torch.tensor([[0.4, 1.5, 0.9]], dtype=F64)
    q = Normal(loc, scale)
    z = loc + scale * torch.randn(200_000, 3, generator=gen(2), dtype=F64)
    samples = (q.log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(-1)
    se = samples.std().item() / math.sqrt(samples.numel())
    assert abs(samples.mean().item() - gaussian_kl(loc, scale).item()) < 4 * se


# --------------------------------------------------------------- log_density_matrix
def test_log_density_matrix_matches_normal_and_orientation():
    g = gen(3)
    z = torch.randn(5, 3, generator=g, dtype=F64)
    loc = torch.randn(5, 3, generator=g, dtype=F64)
    scale = torch.rand(5, 3, generator=g, dtype=F64) + 0.1
    out = log_density_matrix(z, loc, scale)
    assert out.shape == (5, 5, 3)
    torch.testing.assert_close(out, Normal(loc.unsqueeze(0), scale.unsqueeze(0)).log_prob(z.unsqueeze(1)))
    for i, j, d in itertools.product(range(5), range(5), range(3)):  # [i, j, d]: sample i, component j
        assert math.isclose(out[i, j, d].item(), norm.logpdf(z[i, d].item(), loc[j, d].item(), scale[j, d].item()), rel_tol=1e-9)


# -------------------------------------------------------------- MSS weight matrix
@pytest.mark.parametrize("m,n", [(2, 2), (8, 8), (8, 9), (16, 1000), (64, 60_000)])
def test_mss_weights_rows_sum_to_one_and_diagonal_is_one_over_n(m, n):
    log_w = mss_log_weights(m, n, dtype=F64)
    assert log_w.shape == (m, m)
    torch.testing.assert_close(log_w.exp().sum(1), torch.ones(m, dtype=F64))
    torch.testing.assert_close(log_w.diagonal(), torch.full((m,), -math.log(n), dtype=F64))
    off = log_w[~torch.eye(m, dtype=torch.bool)]
    torch.testing.assert_close(off.exp(), torch.full_like(off, (n - 1) / (n * (m - 1))))


def test_mss_is_unbiased_for_the_aggregate_posterior_and_mws_is_not():
    """Over random minibatches containing x_0 (others drawn without replacement), the
    stratified estimate of q(z_0) averages to the full-data mixture (1/N) sum_n q(z_0|x_n)."""
    n, m, reps = 40, 8, 20_000
    g = gen(4)
    loc = torch.randn(n, 2, generator=g, dtype=F64)
    scale = torch.rand(n, 2, generator=g, dtype=F64) * 0.5 + 0.3
    z0 = loc[:1] + scale[:1] * torch.randn(1, 2, generator=g, dtype=F64)
    log_q = log_density_matrix(z0, loc, scale).sum(-1)[0]  # [N]: log q(z_0 | x_n)
    truth = log_q.exp().mean().item()
    others = torch.rand(reps, n - 1, generator=g).argsort(1)[:, : m - 1] + 1
    batch = torch.cat([torch.zeros(reps, 1, dtype=torch.long), others], 1)  # x_0 is column 0
    for estimator, log_w_row in (("mss", mss_log_weights(m, n, dtype=F64)[0]), ("mws", torch.full((m,), -math.log(m), dtype=F64))):
        est = torch.logsumexp(log_w_row + log_q[batch], dim=1).exp()
        se = est.std().item() / math.sqrt(reps)
        if estimator == "mss":
            assert abs(est.mean().item() - truth) < 4 * se
        else:
            assert est.mean().item() - truth > 10 * se  # MWS over-weights the own component


# ------------------------------------------------------ MI / TC / dimension-wise KL
def naive_plugin_terms(z, loc, scale):
    """The plug-in decomposition of the minibatch mixture, with explicit loops."""
    m, d = z.shape
    mi = tc = dw = 0.0
    for i in range(m):
        comp = [[norm.pdf(z[i, k].item(), loc[j, k].item(), scale[j, k].item()) for k in range(d)] for j in range(m)]
        log_cond = sum(math.log(comp[i][k]) for k in range(d))
        log_joint = math.log(sum(math.prod(comp[j]) for j in range(m)) / m)
        log_marg = sum(math.log(sum(comp[j][k] for j in range(m)) / m) for k in range(d))
        log_prior = sum(norm.logpdf(z[i, k].item()) for k in range(d))
        mi += (log_cond - log_joint) / m
        tc += (log_joint - log_marg) / m
        dw += (log_marg - log_prior) / m
    return {"mi": mi, "tc": tc, "dimwise_kl": dw}


def test_full_batch_estimators_equal_naive_plugin():
    z, loc, scale = encodings(5, 3, scale=0.8, seed=5)
    scale = scale * torch.rand(5, 3, generator=gen(6), dtype=F64).add(0.5)
    oracle = naive_plugin_terms(z, loc, scale)
    for estimator in ("mws", "mss"):
        terms = elbo_decomposition_terms(z, loc, scale, 5, estimator)
        for key, value in oracle.items():
            assert math.isclose(terms[key].item(), value, rel_tol=1e-9, abs_tol=1e-12), (estimator, key)


def test_single_functions_agree_with_the_dict():
    z, loc, scale = encodings(32, 4, seed=7)
    for estimator in ("mws", "mss"):
        terms = elbo_decomposition_terms(z, loc, scale, 1000, estimator)
        assert mutual_information(z, loc, scale, 1000, estimator) == terms["mi"]
        assert total_correlation(z, loc, scale, 1000, estimator) == terms["tc"]
        assert dimensionwise_kl(z, loc, scale, 1000, estimator) == terms["dimwise_kl"]


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_terms_sum_to_the_sampled_kl(estimator):
    """MI + TC + dim-wise KL = mean_i [log q(z_i|x_i) - log p(z_i)] exactly (telescoping)."""
    z, loc, scale = encodings(64, 5, seed=8)
    terms = elbo_decomposition_terms(z, loc, scale, 50_000, estimator)
    sampled_kl = (Normal(loc, scale).log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(-1).mean()
    torch.testing.assert_close(terms["mi"] + terms["tc"] + terms["dimwise_kl"], sampled_kl)


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_identical_encodings_have_zero_tc_and_mi(estimator):
    row = torch.tensor([[0.3, -1.0, 2.0]], dtype=F64)
    loc, scale = row.repeat(16, 1), torch.tensor([[0.5, 1.2, 0.1]], dtype=F64).repeat(16, 1)
    z = (row + 0.2).repeat(16, 1)
    terms = elbo_decomposition_terms(z, loc, scale, 1000, estimator)
    assert abs(terms["tc"].item()) < 1e-12  # every row's weights sum to 1: q(z) = q(z | x)
    assert abs(terms["mi"].item()) < 1e-12


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_posterior_equal_to_prior_gives_all_terms_zero(estimator):
    z = torch.randn(128, 3, generator=gen(9), dtype=F64)
    loc, scale = torch.zeros_like(z), torch.ones_like(z)
    for key, value in elbo_decomposition_terms(z, loc, scale, 10_000, estimator).items():
        assert abs(value.item()) < 1e-12, key


def test_independent_codes_match_population_values():
    """loc ~ N(0, I), scale s: q(z) -> N(0, (1+s^2) I) (factorized, TC = 0),
    MI = D/2 log(1 + 1/s^2), dim-wise KL = D/2 (s^2 - log(1 + s^2))."""
    m, d, s = 2000, 2, 0.5
    z, loc, scale = encodings(m, d, scale=s, seed=10)
    terms = elbo_decomposition_terms(z, loc, scale, m, "mss")
    assert abs(terms["tc"].item()) < 0.03
    assert abs(terms["mi"].item() - d / 2 * math.log(1 + 1 / s**2)) < 0.05
    assert abs(terms["dimwise_kl"].item() - d / 2 * (s**2 - math.log(1 + s**2))) < 0.03


def test_narrow_encoders_make_the_minibatch_mixture_spiky():
    """With encoder scale far below the spacing of the codes the mixture's components do
    not overlap: log q(z_i) ~= log q(z_i | x_i) - log M, so MI ~= log M and TC is large
    although the means are independent -- the estimators describe the finite data set."""
    m, d, s = 1000, 2, 0.003
    z, loc, scale = encodings(m, d, scale=s, seed=11)
    terms = elbo_decomposition_terms(z, loc, scale, m, "mws")
    assert abs(terms["mi"].item() - math.log(m)) < 0.05
    assert terms["tc"].item() > 2.0


def test_correlated_codes_tc_matches_gaussian_value():
    """loc ~ N(0, Sigma) with correlation 0.8, scale s: q(z) = N(0, Sigma + s^2 I) exactly in
    expectation, whose TC is -0.5 log det(corr); s -> 0 gives -0.5 log(1 - 0.64) = 0.511."""
    m, s = 2000, 0.2
    cov = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=F64)
    z, loc, scale = encodings(m, 2, scale=s, seed=12, cov=cov)
    target = gaussian_tc(cov + s**2 * torch.eye(2, dtype=F64))
    assert abs(target - 0.448) < 1e-3 and abs(gaussian_tc(cov) - 0.5108) < 1e-4
    assert abs(total_correlation(z, loc, scale, m).item() - target) < 0.05


# ------------------------------------------------------------------------------ MMD
def rbf_gaussian_expectation(h, s1, s2, mean_gap_sq, d):
    v = h**2 + s1**2 + s2**2
    return (h**2 / v) ** (d / 2) * math.exp(-mean_gap_sq / (2 * v))


@pytest.mark.parametrize("kernel", ["imq", "rbf"])
def test_mmd_unbiased_under_null_while_v_statistic_is_positive(kernel):
    g = gen(13)
    u_stats, v_stats = [], []
    for _ in range(200):
        x = torch.randn(20, 2, generator=g, dtype=F64)
        y = torch.randn(25, 2, generator=g, dtype=F64)
        u_stats.append(mmd(x, y, kernel=kernel, bandwidth=1.0 if kernel == "rbf" else None).item())
        c = 1.0 if kernel == "rbf" else 4.0
        k = (lambda a, b: torch.exp(-torch.cdist(a, b) ** 2 / 2)) if kernel == "rbf" else (lambda a, b: c / (c + torch.cdist(a, b) ** 2))
        v_stats.append((k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()).item())
    u, v = np.array(u_stats), np.array(v_stats)
    se = u.std() / math.sqrt(len(u))
    assert abs(u.mean()) < 3 * se
    assert v.mean() > u.mean() + 10 * se


def test_mmd_median_heuristic_unbiased_under_null():
    g = gen(14)
    u = np.array([mmd(torch.randn(15, 3, generator=g), torch.randn(15, 3, generator=g), kernel="rbf").item() for _ in range(200)])
    assert abs(u.mean()) < 3 * u.std() / math.sqrt(len(u))


def test_rbf_mmd_matches_closed_form_between_gaussians():
    """MMD^2(N(0,I), N(mu,I)) = 2 E_h(0) - 2 E_h(||mu||^2) with the Gaussian expectation of k."""
    d, h, n = 2, 1.0, 800
    mu = torch.tensor([1.0, 0.0], dtype=F64)
    exact = 2 * rbf_gaussian_expectation(h, 1, 1, 0.0, d) - 2 * rbf_gaussian_expectation(h, 1, 1, 1.0, d)
    g = gen(15)
    estimates = [
        mmd(torch.randn(n, d, generator=g, dtype=F64), torch.randn(n, d, generator=g, dtype=F64) + mu, kernel="rbf", bandwidth=h).item()
        for _ in range(4)
    ]
    se = np.std(estimates, ddof=1) / 2
    assert abs(np.mean(estimates) - exact) < max(4 * se, 0.01)


def test_rff_mmd_converges_to_exact_rbf_mmd():
    g = gen(16)
    x = torch.randn(200, 3, generator=g, dtype=F64)
    y = torch.randn(150, 3, generator=g, dtype=F64) + 0.5
    exact = mmd(x, y, kernel="rbf", bandwidth=1.3).item()
    errors = []
    for f in (16, 256, 4096):
        errs = [abs(mmd(x, y, kernel="rbf", bandwidth=1.3, num_features=f, generator=gen(100 + r)).item() - exact) for r in range(3)]
        errors.append(np.mean(errs))
    assert all(a > 2 * b for a, b in zip(errors, errors[1:])), errors  # error ~ F^-1/2
    assert errors[-1] < 0.006
    # the generator makes the features reproducible
    assert mmd(x, y, "rbf", 1.3, 64, gen(1)).item() == mmd(x, y, "rbf", 1.3, 64, gen(1)).item()


def test_mmd_accepts_different_sizes_and_1d_samples():
    g = gen(17)
    x, y = torch.randn(10, generator=g), torch.randn(7, generator=g)
    torch.testing.assert_close(mmd(x, y), mmd(x[:, None], y[:, None]))


# ----------------------------------------------------------------------------- HSIC
def naive_hsic(k: np.ndarray, l: np.ndarray) -> tuple[float, float]:
    """(explicit (n-1)^-2 tr(K H L H), Gretton et al.'s sum form rescaled from 1/n^2)."""
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    product = k @ h @ l @ h
    trace = sum(product[i, i] for i in range(n)) / (n - 1) ** 2
    first = sum(k[i, j] * l[i, j] for i, j in itertools.product(range(n), repeat=2)) / n**2
    second = sum(k[i, j] * l[q, r] for i, j, q, r in itertools.product(range(n), repeat=4)) / n**4
    third = sum(k[i, j] * l[i, q] for i, j, q in itertools.product(range(n), repeat=3)) / n**3
    return trace, (first + second - 2 * third) * n**2 / (n - 1) ** 2


def rbf_gram(a: np.ndarray, h: float) -> np.ndarray:
    return np.exp(-((a[:, None, :] - a[None, :, :]) ** 2).sum(-1) / (2 * h**2))


def test_hsic_matches_naive_trace_and_quadruple_sum():
    g = gen(18)
    x = torch.randn(6, 2, generator=g, dtype=F64)
    y = torch.randn(6, 1, generator=g, dtype=F64) + x[:, :1] ** 2
    trace, quad = naive_hsic(rbf_gram(x.numpy(), 1.0), rbf_gram(y.numpy(), 0.7))
    value = hsic(x, y, bandwidth=(1.0, 0.7)).item()
    assert math.isclose(value, trace, rel_tol=1e-10) and math.isclose(value, quad, rel_tol=1e-10)
    # bandwidth=None: median heuristic per input (15 pairs: an odd count, unambiguous median)
    pd = lambda a: np.sqrt(((a[:, None] - a[None]) ** 2).sum(-1))[np.triu_indices(len(a), 1)]
    hx, hy = np.median(pd(x.numpy())), np.median(pd(y.numpy()))
    trace, _ = naive_hsic(rbf_gram(x.numpy(), hx), rbf_gram(y.numpy(), hy))
    assert math.isclose(hsic(x, y).item(), trace, rel_tol=1e-10)
    assert math.isclose(hsic(x, y.squeeze(1)).item(), trace, rel_tol=1e-10)  # 1-D y is [n, 1]


def test_hsic_near_zero_for_independent_and_positive_for_dependent():
    g = gen(19)
    x = torch.randn(300, 2, generator=g, dtype=F64)
    independent = hsic(x, torch.randn(300, 1, generator=g, dtype=F64)).item()
    dependent = hsic(x, x[:, :1] ** 2 + 0.1 * torch.randn(300, 1, generator=g, dtype=F64)).item()
    assert 0 <= independent < 0.002  # the biased estimator's O(1/n) offset
    assert dependent > 10 * independent


# -------------------------------------------------------------------------- DIP-VAE
def whitened(m, d, seed):
    loc = torch.randn(m, d, generator=gen(seed), dtype=F64)
    loc = loc - loc.mean(0)
    chol = torch.linalg.cholesky(loc.T @ loc / m)
    return torch.linalg.solve_triangular(chol, loc.T, upper=False).T  # sample covariance exactly I


def test_dip_penalty_zero_for_identity_covariance():
    loc = whitened(64, 3, seed=20)
    assert dip_penalty(loc, kind="i").item() < 1e-20
    s = 0.6  # Cov[mu] = (1 - s^2) I plus E[diag(s^2)] = s^2 I gives Cov_q(z) = I
    assert dip_penalty(loc * math.sqrt(1 - s**2), torch.full_like(loc, s), kind="ii").item() < 1e-20


def test_dip_penalty_hand_computed():
    # mean 0; Cov[mu] (1/M) = [[2/3, 2/3], [2/3, 8/3]]
    loc = torch.tensor([[1.0, 2.0], [-1.0, 0.0], [0.0, -2.0]], dtype=F64)
    off, diag = 2 * (2 / 3) ** 2, (2 / 3 - 1) ** 2 + (8 / 3 - 1) ** 2  # 8/9, 26/9
    assert math.isclose(dip_penalty(loc, lambda_od=1.0, lambda_d=1.0).item(), 34 / 9)
    assert math.isclose(dip_penalty(loc).item(), 10 * off + 100 * diag)  # dlib DIP-VAE-I: lambda_d = 10 lambda_od
    scale = torch.ones_like(loc)  # DIP-VAE-II adds E[diag(scale^2)] = I: diag (5/3, 11/3)
    assert math.isclose(dip_penalty(loc, scale, "ii", 1.0, 1.0).item(), 8 / 9 + (2 / 3) ** 2 + (8 / 3) ** 2)
    assert math.isclose(dip_penalty(loc, scale, "ii").item(), 10 * (8 / 9) + 10 * (4 / 9 + 64 / 9))  # lambda_d = lambda_od


# ---------------------------------------------------------------------- bad inputs
M_, D_ = 8, 3
_loc = torch.zeros(M_, D_)
_scale = torch.ones(M_, D_)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: gaussian_kl(torch.zeros(3), torch.ones(3)), r"shape \[M, D\]"),
        (lambda: gaussian_kl(_loc, torch.ones(M_, D_ + 1)), "shape mismatch"),
        (lambda: gaussian_kl(_loc, torch.zeros(M_, D_)), "strictly positive"),
        (lambda: log_density_matrix(torch.zeros(M_, 2), _loc, _scale), "latent dim"),
        (lambda: total_correlation(_loc, _loc, _scale, M_ - 1), "smaller than the batch size"),
        (lambda: total_correlation(_loc, _loc, _scale, 100, "iwae"), "unknown estimator"),
        (lambda: total_correlation(_loc[:4], _loc, _scale, 100), "shape mismatch"),
        (lambda: mutual_information(_loc, _loc, -_scale, 100), "strictly positive"),
        (lambda: dimensionwise_kl(_loc, _loc, _scale, 100.0), "integer"),
        (lambda: elbo_decomposition_terms(_loc[:1], _loc[:1], _scale[:1], 100), "at least 2"),
        (lambda: mss_log_weights(1, 10), "at least 2"),
        (lambda: mss_log_weights(10, 5), "smaller than the batch size"),
        (lambda: mmd(_loc, _loc, kernel="laplace"), "unknown kernel"),
        (lambda: mmd(_loc, torch.zeros(M_, 2)), "same space"),
        (lambda: mmd(_loc[:1], _loc), "at least 2 samples"),
        (lambda: mmd(_loc, _loc, kernel="imq", num_features=10), "kernel='rbf'"),
        (lambda: mmd(_loc, _loc, kernel="rbf", num_features=0), "num_features"),
        (lambda: mmd(_loc, _loc, bandwidth=-1.0), "bandwidth"),
        (lambda: hsic(_loc, _loc[:5]), "paired"),
        (lambda: hsic(_loc, _loc, bandwidth=(1.0, 1.0, 1.0)), "pair"),
        (lambda: dip_penalty(_loc, kind="iii"), "unknown kind"),
        (lambda: dip_penalty(_loc, kind="ii"), "needs the encoder scale"),
        (lambda: dip_penalty(_loc, lambda_od=-1.0), "lambda_od"),
        (lambda: dip_penalty(_loc, lambda_d=-0.5), "lambda_d"),
        (lambda: dip_penalty(_loc[:1]), "at least 2"),
    ],
)
def test_bad_inputs_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------------------ gradients
def test_gradients_flow_and_are_finite():
    g = gen(21)
    loc = torch.randn(16, 3, generator=g, requires_grad=True)
    log_scale = (0.3 * torch.randn(16, 3, generator=g)).requires_grad_()
    scale = log_scale.exp()
    z = loc + scale * torch.randn(16, 3, generator=g)
    losses = [gaussian_kl(loc, scale).mean(), dip_penalty(loc), dip_penalty(loc, scale, "ii")]
    for estimator in ("mws", "mss"):
        losses += list(elbo_decomposition_terms(z, loc, scale, 1000, estimator).values())
    prior = torch.randn(16, 3, generator=g)
    losses += [mmd(z, prior), mmd(z, prior, "rbf"), mmd(z, prior, "rbf", 1.0, 128, gen(0)), hsic(z[:, :1], z[:, 1:])]
    for loss in losses:
        grads = torch.autograd.grad(loss, (loc, log_scale), allow_unused=True, retain_graph=True)
        assert torch.isfinite(loss)
        assert grads[0] is not None and torch.isfinite(grads[0]).all() and grads[0].abs().sum() > 0


def test_dhsic_two_variables_is_hsic_and_matches_the_naive_sums():
    from metaprior.inference.estimators import dhsic, hsic

    g = torch.Generator().manual_seed(0)
    x, y, w = torch.randn(30, 2, generator=g), torch.randn(30, 1, generator=g), torch.randn(30, 3, generator=g)
    y = y + x[:, :1]
    n = 30
    for bw in (None, 1.3):
        assert torch.allclose(dhsic([x, y], "rbf", bw), hsic(x, y, "rbf", bw) * (n - 1) ** 2 / n**2, rtol=1e-5, atol=1e-7)
    # three variables against the defining sums, element by element
    ks = [torch.exp(-((a[:, None] - a[None]) ** 2).sum(-1) / (2 * 1.3**2)) for a in (x, y, w)]
    joint = sum(ks[0][i, j] * ks[1][i, j] * ks[2][i, j] for i in range(n) for j in range(n)) / n**2
    prod = (ks[0].sum() / n**2) * (ks[1].sum() / n**2) * (ks[2].sum() / n**2)
    cross = sum((ks[0][i].sum() / n) * (ks[1][i].sum() / n) * (ks[2][i].sum() / n) for i in range(n)) / n
    assert torch.allclose(dhsic([x, y, w], "rbf", 1.3), joint + prod - 2 * cross, rtol=1e-5)
    with pytest.raises(ValueError, match="at least two"):
        dhsic([x])


def test_dhsic_sees_joint_dependence_that_pairwise_hsic_misses():
    """x, y independent signs and z = x * y: every pair is independent, the triple is not."""
    from metaprior.inference.estimators import dhsic, hsic

    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 2, (400, 1), generator=g).float() * 2 - 1
    y = torch.randint(0, 2, (400, 1), generator=g).float() * 2 - 1
    z = x * y
    pairwise = hsic(x, y, "rbf", 1.0) + hsic(x, z, "rbf", 1.0) + hsic(y, z, "rbf", 1.0)
    joint = dhsic([x, y, z], "rbf", 1.0)
    independent = dhsic([x, y, torch.randint(0, 2, (400, 1), generator=g).float() * 2 - 1], "rbf", 1.0)
    assert joint > 20 * pairwise and joint > 20 * independent and joint > 0.01
