"""Every objective at non-neutral settings against a hand computation from its terms.

Each test recomputes a recipe's loss (or an estimator's value) from first principles on a
fixed batch -- explicit loops over scipy densities for the aggregate-posterior estimators,
the U-statistic written out for MMD, the covariance by hand for DIP -- and compares it with
what the library returns, at weights chosen so that swapping, dropping or rescaling any one
of them changes the answer. Each test names the bug class it pins (see issue 16); every one
was checked by planting that bug and watching it fail.
"""
from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch
from scipy.stats import norm

from metaprior.data import load
from metaprior.inference.elbo import ELBO, TermContext
from metaprior.inference.estimators import dip_penalty, elbo_decomposition_terms, mmd, total_correlation
from metaprior.inference.regularizers import MMDToPrior
from metaprior.methods import METHODS, configure
from metaprior.methods.adversarial import WAE_IMQ_SCALES

F64 = torch.float64
TINY = {"latent_dim": 4, "hidden": (16,), "likelihood": "gaussian", "obs_scale": 1.0}


@pytest.fixture(scope="module")
def digits():
    return load("digits")


# ----------------------------------------------------------------------------- oracles
def brute_decomposition(z, loc, scale, n, estimator="mss", groups=None):
    """MI, TC (and its split over ``groups``), dimension-wise KL with explicit loops.

    The stratified estimate of the aggregate posterior at z_i, written from its derivation
    (Chen et al. 2018, app. C): the example that produced z_i has weight 1/N, the remaining
    N-1 examples of the data set are represented by the average of the other M-1 members of
    the batch, with total weight (N-1)/N. ``"mws"`` is the plain minibatch average.
    """
    z, loc, scale = (np.asarray(t, np.float64) for t in (z, loc, scale))
    m, d = z.shape
    groups = groups or [tuple(range(d))]
    mi = tc = dimkl = within = 0.0
    for i in range(m):
        comp = np.array([[norm.pdf(z[i, k], loc[j, k], scale[j, k]) for k in range(d)] for j in range(m)])  # [j, k]

        def mixture(values):
            if estimator == "mws":
                return sum(values) / m
            others = [values[j] for j in range(m) if j != i]
            return values[i] / n + (n - 1) / n * sum(others) / (m - 1)

        q_joint = mixture([comp[j].prod() for j in range(m)])
        q_dims = [mixture([comp[j, k] for j in range(m)]) for k in range(d)]
        q_groups = [mixture([comp[j, list(g)].prod() for j in range(m)]) for g in groups]
        log_prior = norm.logpdf(z[i]).sum()
        mi += (np.log(comp[i]).sum() - math.log(q_joint)) / m
        tc += (math.log(q_joint) - np.log(q_dims).sum()) / m
        dimkl += (np.log(q_dims).sum() - log_prior) / m
        within += sum(math.log(q_groups[g]) - sum(math.log(q_dims[k]) for k in grp)
                      for g, grp in enumerate(groups)) / m
    return {"mi": mi, "tc": tc, "dimwise_kl": dimkl, "tc_within": within, "tc_between": tc - within}


def brute_mmd_imq(x, y, c):
    """The unbiased MMD^2 U-statistic (Gretton et al. 2012, Lemma 6) with k = C / (C + |a-b|^2), by loops."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    k = lambda a, b: c / (c + ((a - b) ** 2).sum())  # noqa: E731
    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2 * kxy


def brute_cov(loc):
    loc = np.asarray(loc, np.float64)
    mean = loc.mean(0)
    m, d = loc.shape
    return np.array([[sum((loc[i, a] - mean[a]) * (loc[i, b] - mean[b]) for i in range(m)) / m for b in range(d)]
                     for a in range(d)])


def dip_parts(cov):
    off = sum(cov[a, b] ** 2 for a in range(len(cov)) for b in range(len(cov)) if a != b)
    diag = sum((cov[a, a] - 1) ** 2 for a in range(len(cov)))
    return off, diag


def encodings(m, d, seed, scale_lo=0.4, scale_hi=1.2):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(m, d, generator=g, dtype=F64)
    scale = scale_lo + (scale_hi - scale_lo) * torch.rand(m, d, generator=g, dtype=F64)
    z = loc + scale * torch.randn(m, d, generator=g, dtype=F64)
    return z, loc, scale


# ------------------------------------------------------------ recipes on a fixed batch
def run(name, data, m=8, seed=0, step=0, **settings):
    """A recipe's objective on the first ``m`` digits: (pair, result, x)."""
    pyro.set_rng_seed(0)
    pair, objective = configure(METHODS[name], {**TINY, **settings}).build(data)
    spread(pair)
    x = torch.as_tensor(data.batch(0, m, 0))
    pyro.set_rng_seed(seed)
    res = objective(pair.model, pair.guide, x, step=step, dataset_size=data.num_examples)
    return pair, res, x


def spread(pair, scale=0.4):
    """Perturb every weight by a fixed N(0, scale^2) draw: codes far from the prior and from each other (rates of
    several nats, correlated dimensions), so that every term of every objective carries weight in the loss."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in pair.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def hand_distortion(pair, x, z, sigma=1.0):
    """-log N(x; G(z), sigma^2 I) per example: ||x - G(z)||^2 / (2 sigma^2) + (P/2) log(2 pi sigma^2)."""
    mean = pair.decode(z).reshape(x.shape)
    sq = (x - mean).pow(2).flatten(1).sum(1)
    p = x[0].numel()
    return (sq / (2 * sigma**2) + 0.5 * p * math.log(2 * math.pi * sigma**2)).mean()


def hand_rate(loc, scale):
    """KL(N(loc, scale^2) || N(0, I)) per example (Kingma & Welling 2014, app. B), by its formula."""
    return (0.5 * (loc.pow(2) + scale.pow(2) - 1 - torch.log(scale.pow(2))).sum(-1)).mean()


def gaussian_codes(res):
    lat = res.context.latent("z")
    return lat.value.detach(), lat.loc.detach(), lat.scale.detach()


def close(a, b, rel=2e-5, abs_=1e-6):
    a, b = (t.detach() if torch.is_tensor(t) else t for t in (a, b))
    return float(a) == pytest.approx(float(b), rel=rel, abs=abs_)


# ===================================================== estimators at N != M (MSS weights)
@pytest.mark.parametrize("estimator", ["mss", "mws"])
@pytest.mark.parametrize("m,n", [(6, 50), (5, 7), (4, 100_000)])
def test_decomposition_at_n_not_m_equals_brute_force(estimator, m, n):
    """Kills: MSS evaluated with plug-in weights that ignore N (the decomposition's own weights)."""
    z, loc, scale = encodings(m, 3, seed=m + n)
    got = elbo_decomposition_terms(z, loc, scale, n, estimator)
    want = brute_decomposition(z, loc, scale, n, estimator)
    for key in ("mi", "tc", "dimwise_kl"):
        assert got[key].item() == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
    if estimator == "mss":  # the oracle separates: N matters here
        plug_in = brute_decomposition(z, loc, scale, m, estimator)
        assert abs(plug_in["mi"] - want["mi"]) > 0.05


def test_beta_tcvae_parts_use_the_training_set_size(digits):
    """Kills: the recipe's KL decomposition evaluated with the batch size instead of N (MSS, N = 1617, M = 8)."""
    _, res, _ = run("beta_tcvae", digits, alpha=2.0, beta=5.0, gamma=3.0)
    z, loc, scale = gaussian_codes(res)
    want = brute_decomposition(z, loc, scale, digits.num_examples, "mss")
    for key in ("mi", "tc", "dimwise_kl"):
        assert close(res.parts[key], want[key], rel=1e-4, abs_=1e-5), key


# ================================================================ beta-TCVAE / HFVAE weights
@pytest.mark.parametrize("alpha,beta,gamma", [(2.0, 5.0, 3.0), (0.5, 4.0, 2.0), (3.0, 0.25, 1.5)])
@pytest.mark.parametrize("estimator", ["mss", "mws"])
def test_beta_tcvae_loss_is_d_plus_weighted_parts(digits, alpha, beta, gamma, estimator):
    """loss = D + b R + (alpha-b) MI + (beta-b) TC + (gamma-b) dimKL with b = min(alpha, beta, gamma)."""
    pair, res, x = run("beta_tcvae", digits, alpha=alpha, beta=beta, gamma=gamma, estimator=estimator)
    z, loc, scale = gaussian_codes(res)
    parts = brute_decomposition(z, loc, scale, digits.num_examples, estimator)
    d, r, b = hand_distortion(pair, x, z), hand_rate(loc, scale), min(alpha, beta, gamma)
    want = d + b * r + (alpha - b) * parts["mi"] + (beta - b) * parts["tc"] + (gamma - b) * parts["dimwise_kl"]
    assert close(res.loss, want, rel=1e-5)
    assert close(res.parts["distortion"], d) and close(res.parts["rate"], r)


@pytest.mark.parametrize("alpha,beta,gamma", [(2.0, 5.0, 3.0), (0.5, 3.0, 2.0), (1.5, 2.0, 0.25)])
def test_hfvae_two_tc_weights(digits, alpha, beta, gamma):
    """Kills: HFVAE's between- and within-group TC weights swapped (distinct values), or the common weight mis-set.

    loss = D + b R + (alpha-b) MI + (beta-b) TC_between + (gamma-b) TC_within + (1-b) dimKL, b = min(alpha, beta, gamma, 1).
    """
    groups = [(0, 1), (2, 3)]
    pair, res, x = run("hfvae", digits, alpha=alpha, beta=beta, gamma=gamma, groups="0,1;2,3")
    z, loc, scale = gaussian_codes(res)
    p = brute_decomposition(z, loc, scale, digits.num_examples, "mss", groups)
    d, r, b = hand_distortion(pair, x, z), hand_rate(loc, scale), min(alpha, beta, gamma, 1.0)
    want = (d + b * r + (alpha - b) * p["mi"] + (beta - b) * p["tc_between"] + (gamma - b) * p["tc_within"]
            + (1 - b) * p["dimwise_kl"])
    assert close(res.loss, want, rel=1e-5)
    for key in ("mi", "tc_between", "tc_within", "dimwise_kl"):
        assert close(res.parts[key], p[key], rel=1e-4, abs_=1e-5), key
    assert abs(p["tc_between"] - p["tc_within"]) * abs(beta - gamma) > 1e-3  # a swap would show


# ============================================================== information dropout TC weight
@pytest.mark.parametrize("beta", [1.0, 2.5])
def test_information_dropout_loss_is_d_plus_beta_rate_plus_beta_tc(digits, beta):
    """Kills: information dropout's TC weight set to 0 (or not tied to beta): loss = D + beta (R + TC)."""
    pair, res, x = run("info_dropout", digits, beta=beta)
    z, loc, scale = gaussian_codes(res)  # the latent site is log z
    tc = brute_decomposition(z, loc, scale, digits.num_examples, "mss")["tc"]
    d, r = hand_distortion(pair, x, z), hand_rate(loc, scale)
    assert close(res.loss, d + beta * r + beta * tc, rel=1e-5)
    assert close(res.parts["tc"], tc, rel=1e-4, abs_=1e-5)
    assert abs(tc) > 1e-3  # the TC term is not negligible on this batch


# ======================================================================= DIP-VAE lambdas
def test_dip_penalty_default_lambda_d_per_kind():
    """Kills: DIP-VAE's default lambda_d factor changed (I: 10 x lambda_od, II: 1 x lambda_od; disentanglement_lib)."""
    _, loc, scale = encodings(16, 3, seed=3)
    off_i, diag_i = dip_parts(brute_cov(loc))
    cov_ii = brute_cov(loc) + np.diag((scale.numpy() ** 2).mean(0))
    off_ii, diag_ii = dip_parts(cov_ii)
    assert dip_penalty(loc, kind="i").item() == pytest.approx(10 * off_i + 100 * diag_i, rel=1e-10)
    assert dip_penalty(loc, scale, kind="ii").item() == pytest.approx(10 * off_ii + 10 * diag_ii, rel=1e-10)
    assert dip_penalty(loc, scale, kind="ii", lambda_od=3.0).item() == pytest.approx(3 * off_ii + 3 * diag_ii, rel=1e-10)
    assert dip_penalty(loc, kind="i", lambda_od=2.0, lambda_d=7.0).item() == pytest.approx(2 * off_i + 7 * diag_i, rel=1e-10)
    assert min(off_i, diag_i, off_ii, diag_ii) > 1e-3


@pytest.mark.parametrize("name,settings,lam_od,lam_d", [
    ("dip_vae_i", {}, 10.0, 100.0),
    ("dip_vae_ii", {}, 10.0, 10.0),
    ("dip_vae_ii", {"lambda_od": 3.0, "lambda_d_factor": 4.0}, 3.0, 12.0),
    ("dip_vae_i", {"lambda_od": 2.0, "lambda_d_factor": 0.5}, 2.0, 1.0),
])
def test_dip_vae_recipes_at_their_defaults_and_others(digits, name, settings, lam_od, lam_d):
    """loss = D + R + lambda_od sum_{i!=j} C_ij^2 + lambda_d sum_i (C_ii - 1)^2; C = Cov[mu] (I) or Cov[mu] + E diag s^2 (II)."""
    pair, res, x = run(name, digits, m=16, **settings)
    z, loc, scale = gaussian_codes(res)
    cov = brute_cov(loc)
    if name == "dip_vae_ii":
        cov = cov + np.diag((scale.numpy().astype(np.float64) ** 2).mean(0))
    off, diag = dip_parts(cov)
    want = hand_distortion(pair, x, z) + hand_rate(loc, scale) + lam_od * off + lam_d * diag
    assert close(res.loss, want, rel=1e-5)
    assert close(res.parts["dip_offdiag"], off, rel=1e-4) and close(res.parts["dip_diag"], diag, rel=1e-4)


# ============================================================== IMQ kernel and WAE's scales
def test_imq_default_constant_is_2d():
    """Kills: the IMQ kernel's default constant changed (C = 2 d sigma^2 with sigma = 1, Tolstikhin et al. 2018)."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(7, 3, generator=g, dtype=F64), 0.5 + torch.randn(6, 3, generator=g, dtype=F64)
    assert mmd(x, y, kernel="imq").item() == pytest.approx(brute_mmd_imq(x, y, 6.0), rel=1e-10)
    assert mmd(x, y, kernel="imq", bandwidth=0.7).item() == pytest.approx(brute_mmd_imq(x, y, 0.7), rel=1e-10)
    assert abs(brute_mmd_imq(x, y, 6.0) - brute_mmd_imq(x, y, 3.0)) > 1e-3  # the constant matters here


class _FixedPrior:
    """Stands in for ctx.prior(site): its ``sample()`` is a fixed draw (so a hand computation can use it)."""

    def __init__(self, sample):
        self._sample = sample

    def sample(self):
        return self._sample


class _Ctx:
    def __init__(self, z, p):
        self.z, self.p = z, p

    def latent(self, name="z"):
        return type("L", (), {"value": self.z})()

    def prior(self, name="z"):
        return _FixedPrior(self.p)


def test_wae_mmd_sums_the_imq_kernel_over_seven_scales(digits):
    """Kills: WAE's multi-scale kernel sum reduced to one scale (or other scales): sum over
    C in {0.1, 0.2, 0.5, 1, 2, 5, 10} x 2d of the IMQ MMD^2 (Tolstikhin et al. 2018, sec. 4)."""
    assert WAE_IMQ_SCALES == (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
    g = torch.Generator().manual_seed(2)
    z, p = 0.3 + torch.randn(8, 4, generator=g, dtype=F64), torch.randn(8, 4, generator=g, dtype=F64)
    want = sum(brute_mmd_imq(z, p, s * 8.0) for s in WAE_IMQ_SCALES)
    weight, term = configure(METHODS["wae"], dict(TINY, lambda2=7.0)).terms(digits)["mmd"]
    assert weight == 7.0
    assert term(_Ctx(z, p)).item() == pytest.approx(want, rel=1e-9)
    assert MMDToPrior("imq", 1.5, (1.0, 3.0))(_Ctx(z, p)).item() == pytest.approx(
        brute_mmd_imq(z, p, 1.5) + brute_mmd_imq(z, p, 4.5), rel=1e-9)


@pytest.fixture
def fixed_prior_samples(monkeypatch):
    """Patch TermContext.prior so the prior draws of MMD terms are a known tensor P (the ELBO's own rate does not
    use ctx.prior); returns a dict whose "P" the test sets before calling the objective."""
    box = {}
    real = TermContext.prior

    def prior(self, name="z"):
        fn = real(self, name)
        return _FixedPrior(box["P"]) if "P" in box else fn

    monkeypatch.setattr(TermContext, "prior", prior)
    return box


def test_wae_recipe_loss_is_50_squared_error_plus_lambda_mmd(digits, fixed_prior_samples):
    """WAE-MMD: loss = D + lambda2 sum_C MMD^2 with D = 50 ||x - G(f(x))||^2 + const at sigma 0.1, rate weight 0."""
    fixed_prior_samples["P"] = torch.randn(8, 4, generator=torch.Generator().manual_seed(5))
    pair, res, x = run("wae", digits, lambda2=7.0, obs_scale=0.1)
    z = res.context.latent("z").value.detach()
    mmd_sum = sum(brute_mmd_imq(z, fixed_prior_samples["P"], s * 8.0) for s in WAE_IMQ_SCALES)
    d = hand_distortion(pair, x, z, sigma=0.1)
    sq = (x - pair.decode(z).reshape(x.shape)).pow(2).flatten(1).sum(1).mean()
    assert close(d - 0.5 * 64 * math.log(2 * math.pi * 0.01), 50.0 * sq, rel=1e-6)  # the cost is 50 ||x - G(z)||^2
    assert close(res.loss, d + 7.0 * mmd_sum, rel=1e-5)
    assert close(res.parts["mmd"], mmd_sum, rel=1e-4)


def test_info_vae_mmd_loss(digits, fixed_prior_samples):
    """InfoVAE: loss = D + (1 - alpha) R + lambda2 MMD^2 (IMQ at a given C)."""
    fixed_prior_samples["P"] = torch.randn(8, 4, generator=torch.Generator().manual_seed(6))
    pair, res, x = run("info_vae", digits, alpha=0.25, lambda2=7.0, kernel="imq", bandwidth=2.5)
    z, loc, scale = gaussian_codes(res)
    want = hand_distortion(pair, x, z) + 0.75 * hand_rate(loc, scale) + 7.0 * brute_mmd_imq(z, fixed_prior_samples["P"], 2.5)
    assert close(res.loss, want, rel=1e-5)


# ================================================================ the ELBO's logged quantities
@pytest.mark.parametrize("beta", [0.25, 4.0])
def test_logged_elbo_rate_distortion_at_beta_not_one(digits, beta):
    """Kills: the logged ``elbo`` computed with beta on the rate. elbo = -(D + R) whatever beta is;
    loss = D + beta R; rate and distortion by their definitions."""
    pair, res, x = run("beta_vae", digits, beta=beta)
    z, loc, scale = gaussian_codes(res)
    d, r = hand_distortion(pair, x, z), hand_rate(loc, scale)
    assert close(res.parts["distortion"], d) and close(res.parts["rate"], r)
    assert close(res.parts["elbo"], -(d + r))
    assert close(res.loss, d + beta * r) and close(res.parts["loss"], d + beta * r)
    assert abs((beta - 1) * r) > 0.1  # beta on the rate would show


def test_term_weights_and_values_are_logged_separately(digits):
    """A weighted term contributes weight x value to the loss; the value (not weight x value) is logged."""
    obj = ELBO(beta=2.0, terms={"a": (3.0, lambda ctx: ctx.latent("z").value.pow(2).mean()),
                                "b": (0.0, lambda ctx: ctx.latent("z").value.mean())})
    pyro.set_rng_seed(0)
    pair, _ = configure(METHODS["vae"], TINY).build(digits)
    x = torch.as_tensor(digits.batch(0, 8, 0))
    res = obj(pair.model, pair.guide, x)
    z, loc, scale = gaussian_codes(res)
    d, r = hand_distortion(pair, x, z), hand_rate(loc, scale)
    assert close(res.parts["a"], z.pow(2).mean()) and close(res.parts["b"], z.mean())
    assert close(res.loss, d + 2 * r + 3 * z.pow(2).mean())
    assert close(res.parts["elbo"], -(d + r))
    assert obj.weights(0) == {"beta": 2.0, "a_weight": 3.0, "b_weight": 0.0}


# ====================================================================== other penalties
def test_annealed_vae_capacity_and_gamma(digits):
    """loss = D + gamma |R - C(t)|, C(t) = c_max min(t / c_steps, 1), rate weight 0."""
    for step, c in ((30, 6.0), (500, 20.0)):
        pair, res, x = run("annealed_vae", digits, step=step, gamma=7.0, c_max=20.0, c_steps=100)
        z, loc, scale = gaussian_codes(res)
        d, r = hand_distortion(pair, x, z), hand_rate(loc, scale)
        assert close(res.loss, d + 7.0 * abs(r - c), rel=1e-5)
        assert close(res.parts["capacity"], c)


def test_hsic_vae_loss(digits):
    """loss = D + R + lambda2 HSIC(z_G1, z_G2), biased HSIC (Gretton et al. 2005) with an RBF kernel at a given h."""
    pair, res, x = run("hsic_vae", digits, lambda2=50.0, bandwidth=1.3)
    z, loc, scale = gaussian_codes(res)
    a, b = z[:, :2].numpy().astype(np.float64), z[:, 2:].numpy().astype(np.float64)
    n = len(a)
    kern = lambda u: np.array([[math.exp(-((u[i] - u[j]) ** 2).sum() / (2 * 1.3**2)) for j in range(n)]  # noqa: E731
                               for i in range(n)])
    h = np.eye(n) - 1.0 / n
    hsic = np.trace(kern(a) @ h @ kern(b) @ h) / (n - 1) ** 2
    assert close(res.loss, hand_distortion(pair, x, z) + hand_rate(loc, scale) + 50.0 * hsic, rel=1e-5)


def test_vib_on_x_is_d_plus_beta_rate(digits):
    pair, res, x = run("vib", digits, beta=0.05)
    z, loc, scale = gaussian_codes(res)
    assert close(res.loss, hand_distortion(pair, x, z) + 0.05 * hand_rate(loc, scale))


def trace_distortion(res, x):
    """-log p(x | z) per example from the model trace's own likelihood (for recipes whose decoder input is not z)."""
    site = res.context.model_trace.nodes["x"]
    return -site["fn"].log_prob(x).sum().detach() / len(x)


def test_joint_vae_two_capacities(digits):
    """loss = D + gamma |KL_z - C_z(t)| + gamma |KL_c - C_c(t)|, C_c capped at log K; KL_c = sum_k q_k log(K q_k)."""
    k = 3
    pair, res, x = run("joint_vae", digits, step=40, categories=k, gamma=7.0, capacity_z=8.0, capacity_c=5.0,
                       capacity_steps=100)
    z, loc, scale = gaussian_codes(res)
    q = torch.softmax(res.context.latent("c").fn.logits.detach(), -1)
    kl_c = (q * torch.log(k * q)).sum(-1).mean()
    kl_z = hand_rate(loc, scale)
    c_z, c_c = 8.0 * 0.4, math.log(k) * 0.4
    want = trace_distortion(res, x) + 7.0 * abs(kl_z - c_z) + 7.0 * abs(kl_c - c_c)
    assert close(res.loss, want, rel=1e-5)
    assert close(res.parts["kl_c"], kl_c) and close(res.parts["capacity_c"], c_c) and close(res.parts["capacity_z"], c_z)


# ------------------------------------------------------------------ critics as terms
@pytest.mark.parametrize("name,term,weight_key,fn", [
    ("factor_vae", "tc", "gamma", lambda logit: logit.mean()),
    ("pixelgan_ae", "prior_kl", "lambda2", lambda logit: (-logit).mean()),
    ("aae", "adversarial", "lambda2", lambda logit: torch.nn.functional.softplus(-logit).mean()),
    ("wae", "adversarial", "lambda2", lambda logit: torch.nn.functional.softplus(-logit).mean()),
    ("info_vae", "prior_kl", "lambda2", lambda logit: (-logit).mean()),
])
def test_critic_recipes_loss(digits, name, term, weight_key, fn):
    """FactorVAE: D + R + gamma mean logit (TC); PixelGAN-AE: D + lambda2 mean(-logit) (KL(q(z)||p(z)), rate weight 0);
    AAE / WAE-GAN: D + lambda2 mean softplus(-logit) (non-saturating); adversarial InfoVAE: D + (1-alpha) R + lambda2 KL."""
    settings = {weight_key: 3.5, "critic_hidden": (8,)}
    settings.update({"wae": {"divergence": "gan"}, "info_vae": {"divergence": "adversarial", "alpha": 0.5}}.get(name, {}))
    pair, res, x = run(name, digits, **settings)
    z = res.context.latent("z").value.detach()
    objective_critic = _critic(name, digits, settings)
    value = fn(objective_critic.logit(z)).detach()
    rate_weight = {"factor_vae": 1.0, "info_vae": 0.5}.get(name, 0.0)
    rate = res.parts["rate"]
    if rate_weight:
        _, loc, scale = gaussian_codes(res)
        rate = hand_rate(loc, scale)
    want = trace_distortion(res, x) + rate_weight * rate + 3.5 * value
    assert close(res.loss, want, rel=1e-5)
    assert close(res.parts[term], value)


def _critic(name, data, settings):
    """The same recipe's critic rebuilt from the same seed (its initial weights), after the same spread."""
    pyro.set_rng_seed(0)
    pair, objective = configure(METHODS[name], {**TINY, **settings}).build(data)
    spread(pair)
    (weight, critic), = [t for t in objective.terms.values() if hasattr(t[1], "logit")]
    return critic


# ----------------------------------------------------------------------------- M2
def test_m2_classification_term_gradient_reaches_the_classifier(digits):
    """Kills: M2's classification term detached from the classifier. The gradient of the loss at alpha minus the
    loss at alpha = 0 (same weights, same noise) is w * grad of the labelled cross-entropy, computed here by hand
    from the classifier's logits, with w the term's weight (the recipe's alpha on the scale of eq. 9's data-set
    weighting)."""
    from metaprior.data.semi_supervised import SemiSupervised

    ssl = SemiSupervised(digits, labels_per_class=2, labelled_fraction=0.5)
    x, y, m = (torch.as_tensor(a) for a in ssl.batch(0, 8, 0))
    grads = {}
    for alpha in (0.0, 3.0):
        pyro.set_rng_seed(0)
        pair, objective = configure(METHODS["m2"], {"latent_dim": 4, "hidden": (16,), "alpha": alpha}).build(ssl)
        params = list(pair.classifier.parameters())
        pyro.set_rng_seed(1)
        res = objective(pair.model, pair.guide, x, y, m)
        grads[alpha] = torch.autograd.grad(res.loss, params)
        if alpha:
            w = objective.weights(0)["classification_weight"]  # alpha, as the recipe maps it onto eq. 9's scale
            assert w > 0
            ce = torch.nn.functional.cross_entropy(pair.classifier(x[m.bool()]), y[m.bool()].long())
            hand = torch.autograd.grad(ce, params)
            assert close(res.parts["classification"], ce)
    for g3, g0, h in zip(grads[3.0], grads[0.0], hand):
        torch.testing.assert_close(g3 - g0, w * h, rtol=1e-3, atol=1e-6)
    assert max(float((w * h).abs().max()) for h in hand) > 1e-4  # far above the tolerance: a detached term shows


# ------------------------------------------------------------------------- VQ-VAE
@pytest.mark.parametrize("commitment", [0.25, 0.7])
def test_vq_vae_loss_is_eq_3(digits, commitment):
    """van den Oord et al. (2017) eq. 3 per example: D + ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2 (+ the constant
    rate M log K), squared norms summed over the code vectors and their dimensions; the codebook term moves only
    the codebook, the commitment term only the encoder."""
    pyro.set_rng_seed(0)
    cfg = {"latent_dim": 3, "codes": 2, "codebook_size": 5, "hidden": (16,), "likelihood": "gaussian",
           "obs_scale": 1.0, "codebook_update": "loss", "commitment": commitment}
    pair, objective = configure(METHODS["vq_vae"], cfg).build(digits)
    x = torch.as_tensor(digits.batch(0, 8, 0))
    res = objective(pair.model, pair.guide, x)
    z_e = pair.encoder.code(x) if hasattr(pair.encoder, "code") else res.context.latent("z").value
    vec = z_e.reshape(8, 2, 3)
    book = pair.quantizer.codebook
    idx = ((vec.unsqueeze(2) - book.detach()).pow(2).sum(-1)).argmin(-1)  # nearest entry, by hand
    e = book[idx]
    sq = (vec.detach() - e.detach()).pow(2).sum((1, 2))  # per example
    d = trace_distortion(res, x)
    want = d + 2 * math.log(5) + sq.mean() + commitment * sq.mean()
    assert close(res.loss, want, rel=1e-5)
    assert close(res.parts["commitment"], -commitment * sq.mean()) and close(res.parts["codebook"], -sq.mean())
    # gradients of the two factors: codebook term -> codebook only; commitment -> encoder output only
    tr = res.context.model_trace
    f_code = -tr.nodes["codebook"]["fn"].log_prob(tr.nodes["codebook"]["value"]).sum() / 8
    f_comm = -tr.nodes["commitment"]["fn"].log_prob(tr.nodes["commitment"]["value"]).sum() / 8
    z_site = res.context.latent("z").value
    g_book, g_z = torch.autograd.grad(f_comm, [book, z_site], allow_unused=True, retain_graph=True)
    assert g_book is None or float(g_book.abs().max()) == 0.0
    torch.testing.assert_close(g_z.reshape(8, 2, 3), 2 * commitment * (vec - e).detach() / 8, rtol=1e-4, atol=1e-7)
    g_book, g_z = torch.autograd.grad(f_code, [book, z_site], allow_unused=True)
    assert g_z is None or float(g_z.abs().max()) == 0.0
    want_book = torch.zeros_like(book).index_put_((idx.flatten(),), (2 * (e - vec).detach() / 8).reshape(-1, 3),
                                                  accumulate=True)
    torch.testing.assert_close(g_book, want_book, rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------------- GMM-SVAE
@pytest.mark.parametrize("rho", [0.3, 0.8])
def test_gmm_svae_natural_gradient_step_is_a_convex_combination(rho):
    """Kills: the GMM-SVAE natural-gradient step size ignored. After one step with natgrad_step = rho, each global
    natural parameter is (1 - rho) old + rho (eta0 + (N/B) sum_n t_n), the target computed here by hand from the
    step's local factors (responsibilities r_nk and the moments of q(z_n)) -- Hoffman et al. 2013, eq. 32."""
    import jax
    import jax.numpy as jnp

    from metaprior.svae.expfam import gaussian_natural_to_standard
    from metaprior.svae.gmm import GMMSVAE, gmm_svae_elbo, gmm_train_step

    rng = np.random.default_rng(0)
    spec = GMMSVAE(obs_dim=2, num_components=3, latent_dim=2, hidden=(4,), meanfield_iters=2, natgrad_step=rho)
    x = jnp.asarray(rng.normal(size=(6, 2)), jnp.float32)
    state = spec.init_state(jax.random.PRNGKey(0), np.asarray(x))
    key, n = jax.random.PRNGKey(1), 40.0
    _, local = gmm_svae_elbo(spec, state, x, key, n, return_local=True)
    new, _ = gmm_train_step(spec, state, x, key, 1e-3, n)
    r = np.asarray(local.r, np.float64)  # (B, K)
    mean, cov = (np.asarray(a, np.float64) for a in gaussian_natural_to_standard(local.J, local.h))
    ezz = cov + mean[:, :, None] * mean[:, None, :]
    scale = n / len(r)
    prior, old = state["prior"], state["globals"]
    target_dir = np.asarray(prior["dirichlet"]) + scale * r.sum(0)
    A0, b0, c0, n0 = (np.asarray(a, np.float64) for a in prior["niw"])
    target_niw = (A0 + scale * np.einsum("nk,nij->kij", r, ezz), b0 + scale * r.T @ mean,
                  c0 + scale * r.sum(0), n0 + scale * r.sum(0))
    np.testing.assert_allclose(new["globals"]["dirichlet"], (1 - rho) * np.asarray(old["dirichlet"]) + rho * target_dir,
                               rtol=2e-5)
    for got, was, want in zip(new["globals"]["niw"], old["niw"], target_niw):
        np.testing.assert_allclose(got, (1 - rho) * np.asarray(was, np.float64) + rho * want, rtol=2e-4, atol=2e-4)
    assert np.abs(target_dir - np.asarray(old["dirichlet"])).max() > 1.0  # the step moves the globals


# -------------------------------------------------------- hierarchies, mixture prior, schedules
def _normal_kl(q_loc, q_scale, p_loc, p_scale):
    """KL(N(q_loc, q_scale^2) || N(p_loc, p_scale^2)) summed over the last axis, by its formula."""
    return (torch.log(p_scale / q_scale) + (q_scale**2 + (q_loc - p_loc) ** 2) / (2 * p_scale**2) - 0.5).sum(-1)


def _base(fn):
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn


@pytest.mark.parametrize("name", ["ladder_vae", "hierarchical_vae"])
@pytest.mark.parametrize("step,weight", [(30, 0.6), (250, 2.0)])
def test_hierarchical_loss_is_d_plus_warmed_up_beta_times_the_layers_kl(digits, name, step, weight):
    """loss = D + beta min(t / T, 1) sum_l KL(q(z_l | .) || p(z_l | z_{l+1})) (Sonderby et al. 2016, KL warm-up),
    each layer's KL by the Gaussian formula from the traced parameters, and each logged as kl_z<l>."""
    pair, res, x = run(name, digits, step=step, layers=2, latent_dim=3, hidden=(16, 8), beta=2.0,
                       beta_schedule="linear:100", batch_norm=False)
    gt, mt = res.context.guide_trace, res.context.model_trace
    kls = []
    for l in (1, 2):
        q, p = _base(gt.nodes[f"z{l}"]["fn"]), _base(mt.nodes[f"z{l}"]["fn"])
        kls.append(_normal_kl(q.loc, q.scale, p.loc, p.scale).mean().detach())
        assert close(res.parts[f"kl_z{l}"], kls[-1], rel=1e-5, abs_=1e-6)
    assert close(res.loss, trace_distortion(res, x) + weight * sum(kls), rel=1e-5)
    assert close(res.parts["rate"], sum(kls), rel=1e-5)


def test_gmm_vae_rate_is_the_monte_carlo_kl_to_the_mixture(digits):
    """loss = D + beta (log q(z|x) - log sum_k pi_k N(z; mu_k, s_k^2)) at the sampled z (no closed form)."""
    pair, res, x = run("gmm_vae", digits, beta=2.5, components=3)
    z, loc, scale = gaussian_codes(res)
    prior = pair.mixture
    log_pi = torch.log_softmax(prior.logits.detach(), -1)
    comp = torch.stack([torch.distributions.Normal(prior.means[k].detach(), prior.scales[k].detach()).log_prob(z).sum(-1)
                        for k in range(3)], -1)
    log_p = torch.logsumexp(log_pi + comp, -1)
    log_q = (-0.5 * ((z - loc) / scale) ** 2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)).sum(-1)
    r = (log_q - log_p).mean()
    assert close(res.parts["rate"], r, rel=1e-5)
    assert close(res.loss, trace_distortion(res, x) + 2.5 * r, rel=1e-5)


@pytest.mark.parametrize("schedule,step,weight", [("linear:40", 10, 0.75), ("linear:40", 100, 3.0),
                                                  ("cyclic:20:0.5", 25, 1.5), ("cyclic:20:0.5", 38, 3.0)])
def test_beta_schedules_weigh_the_rate(digits, schedule, step, weight):
    """linear:T: beta min(t/T, 1); cyclic:P:r (Fu et al. 2019): beta min((t mod P) / (P r), 1)."""
    pair, res, x = run("beta_vae", digits, step=step, beta=3.0, beta_schedule=schedule)
    z, loc, scale = gaussian_codes(res)
    assert close(res.loss, hand_distortion(pair, x, z) + weight * hand_rate(loc, scale), rel=1e-5)
    assert close(res.parts["elbo"], -(hand_distortion(pair, x, z) + hand_rate(loc, scale)), rel=1e-5)


# ---------------------------------------------------------------------- importance weighting
def _linear_gaussian():
    """z ~ N(0, I_2), x | z ~ N(W z + b, 0.5^2 I_3); guide N(A x + c, diag s^2), deliberately not the posterior."""
    import pyro.distributions as dist

    g = torch.Generator().manual_seed(7)
    W, b = torch.randn(3, 2, generator=g, dtype=F64), torch.randn(3, generator=g, dtype=F64)
    post_cov = torch.linalg.inv(torch.eye(2, dtype=F64) + W.T @ W / 0.25)  # the exact posterior is N(A* (x - b), post_cov)
    A = 0.9 * post_cov @ W.T / 0.25  # a shrunk mean and a diagonal, 1.3x wider scale: close to it, not equal
    c = -A @ b
    s = 1.3 * post_cov.diagonal().sqrt()

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2, dtype=F64), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + b, 0.5).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ A.T + c, s.expand(x.shape[0], 2)).to_event(1))

    log_px = lambda x: torch.distributions.MultivariateNormal(b, W @ W.T + 0.25 * torch.eye(3, dtype=F64)).log_prob(x)  # noqa: E731
    return model, guide, (W, b, A, c, s), log_px


def test_iwae_bound_on_the_same_draws_and_against_the_closed_form_likelihood():
    """Burda et al. (2016, eq. 8): L_K = logsumexp_k log w_k - log K with log w = log p(x|z) + log p(z) - log q(z|x).
    On the same draws mean_k log w_k <= L_K <= max_k log w_k exactly; the weights' parts equal their densities by
    hand; L_1 averages to the ELBO and L_K (K = 3000) to the closed-form log p(x) = log N(x; b, W W^T + s^2 I)."""
    from metaprior.inference.importance import importance_draws, iwae_log_likelihood

    model, guide, (W, b, A, c, s), log_px = _linear_gaussian()
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(8), dtype=F64)
    torch.manual_seed(0)
    draws = importance_draws(model, guide, x, 64)
    z = draws.latents["z"]  # [B, K, 2]
    normal = torch.distributions.Normal
    torch.testing.assert_close(draws.log_likelihood, normal(z @ W.T + b, 0.5).log_prob(x[:, None]).sum(-1))
    torch.testing.assert_close(draws.log_prior, normal(0.0, 1.0).log_prob(z).sum(-1).to(F64))
    torch.testing.assert_close(draws.log_guide, normal((x @ A.T + c)[:, None], s).log_prob(z).sum(-1))
    lw = draws.log_weights
    l_k = torch.logsumexp(lw, 1) - math.log(64)
    assert bool((lw.mean(1) <= l_k).all()) and bool((l_k <= lw.max(1).values).all())
    torch.manual_seed(0)
    torch.testing.assert_close(iwae_log_likelihood(model, guide, x, 64), l_k)
    # against the closed form: the gap to log p(x) shrinks with K
    truth = log_px(x)
    torch.manual_seed(1)
    big = iwae_log_likelihood(model, guide, x, 3000)
    torch.manual_seed(1)
    one = importance_draws(model, guide, x, 3000).log_weights  # K = 1 bounds, 3000 of them per example
    elbo = one.mean(1)
    assert bool((elbo < truth - 0.05).all())  # the guide is not the posterior: the ELBO is visibly below log p(x)
    w = (one - one.max(1, keepdim=True).values).exp()
    se = w.std(1) / (w.mean(1) * math.sqrt(3000))  # delta-method standard error of L_K (K = 3000) per example
    assert bool(((truth - big).abs() < 5 * se + 1e-3).all()) and bool((big > elbo + 0.04).all())
    assert float(se.max()) < 0.05  # ... and the error is small enough to separate L_K from the ELBO


def test_particles_average_and_the_monte_carlo_rate(digits):
    """num_particles = 3 averages three single-particle objectives drawn in sequence (same RNG stream);
    analytic_kl = false makes the rate log q(z|x) - log p(z) at the sampled z, by hand."""
    pyro.set_rng_seed(0)
    pair, _ = configure(METHODS["vae"], TINY).build(digits)
    spread(pair)
    x = torch.as_tensor(digits.batch(0, 8, 0))
    pyro.set_rng_seed(4)
    many = ELBO(beta=2.0, num_particles=3)(pair.model, pair.guide, x)
    pyro.set_rng_seed(4)
    singles = [ELBO(beta=2.0)(pair.model, pair.guide, x) for _ in range(3)]
    assert close(many.loss, sum(r.loss for r in singles) / 3, rel=1e-6)
    assert close(many.parts["distortion"], sum(r.parts["distortion"] for r in singles) / 3, rel=1e-6)
    assert abs(float(singles[0].parts["distortion"] - singles[1].parts["distortion"])) > 1e-3  # distinct draws
    pyro.set_rng_seed(5)
    mc = ELBO(beta=2.0, analytic_kl=False)(pair.model, pair.guide, x)
    z, loc, scale = gaussian_codes(mc)
    log_q = (-0.5 * ((z - loc) / scale) ** 2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_p = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
    r = (log_q - log_p).mean()
    assert close(mc.parts["rate"], r, rel=1e-5)
    assert close(mc.loss, hand_distortion(pair, x, z) + 2.0 * r, rel=1e-5)
    assert abs(float(r - hand_rate(loc, scale))) > 1e-3  # the sampled KL is not the analytic one


# ================================================== estimators: defaults, boundaries and errors
def _hand_hsic(kx, ky):
    n = len(kx)
    h = np.eye(n) - 1.0 / n
    return float(np.trace(kx @ h @ ky @ h)) / (n - 1) ** 2


def _gram(u, kernel, c):
    u = np.asarray(u, np.float64)
    sq = ((u[:, None] - u[None]) ** 2).sum(-1)
    return np.exp(-sq / (2 * c**2)) if kernel == "rbf" else c / (c + sq)


def test_hsic_and_dhsic_defaults_by_hand():
    """hsic's IMQ default is C = 2 a for x [n, a] and 2 b for y [n, b]; dhsic's default kernel is the RBF and
    for two variables dHSIC = (n - 1)^2 / n^2 HSIC (Pfister et al. 2016, V-statistic normalization)."""
    from metaprior.inference.estimators import dhsic, hsic

    g = torch.Generator().manual_seed(11)
    x = torch.randn(9, 2, generator=g, dtype=F64)
    y = x[:, :1] ** 2 + 0.3 * torch.randn(9, 3, generator=g, dtype=F64)
    want = _hand_hsic(_gram(x, "imq", 4.0), _gram(y, "imq", 6.0))
    assert hsic(x, y, kernel="imq").item() == pytest.approx(want, rel=1e-10)
    want = _hand_hsic(_gram(x, "rbf", 1.3), _gram(y, "rbf", 1.3))
    assert dhsic([x, y], bandwidth=1.3).item() == pytest.approx(64 / 81 * want, rel=1e-10)
    want = _hand_hsic(_gram(x, "imq", 4.0), _gram(y, "imq", 6.0))
    assert dhsic([x, y], kernel="imq").item() == pytest.approx(64 / 81 * want, rel=1e-10)


def test_median_heuristic_falls_back_to_one_when_most_pairs_coincide():
    """More than half the pooled pairs at distance 0 make the median 0; the bandwidth is then 1, not 0 (no NaN)."""
    x = torch.zeros(4, 1, dtype=F64)
    y = torch.tensor([[0.0], [1.0]], dtype=F64)
    k = lambda a, b: math.exp(-((a - b) ** 2) / 2)  # noqa: E731  (h = 1)
    want = 1.0 + k(0, 1) * 2 / 2 - 2 * (4 * 1 + 4 * k(0, 1)) / 8  # kxx off-diag all 1; kyy: k(0,1); kxy
    assert mmd(x, y, kernel="rbf").item() == pytest.approx(want, rel=1e-12)


def test_dip_penalty_at_the_smallest_batch():
    """Two codes are enough for a covariance (M = 2); one is refused naming the count."""
    loc = torch.tensor([[0.5, -1.0], [1.5, 2.0]], dtype=F64)
    off, diag = dip_parts(brute_cov(loc))
    assert dip_penalty(loc, kind="i", lambda_od=2.0, lambda_d=3.0).item() == pytest.approx(2 * off + 3 * diag, rel=1e-12)
    with pytest.raises(ValueError, match="at least 2 codes to form a covariance, got 1"):
        dip_penalty(loc[:1])


def test_estimator_errors_name_the_argument():
    from metaprior.inference.estimators import dhsic, gaussian_kl, hsic

    a, s = torch.randn(4, 2, dtype=F64), torch.ones(4, 2, dtype=F64)
    cases = [
        (lambda: gaussian_kl(a[0], s), r"^loc must have shape \[M, D\]"),
        (lambda: gaussian_kl(a, s[0]), r"^scale must have shape \[M, D\]"),
        (lambda: gaussian_kl(a, -s), r"^scale must be strictly positive"),
        (lambda: mmd(a[:1], a), r"^x needs at least 2 samples"),
        (lambda: mmd(a, a[:1]), r"^y needs at least 2 samples"),
        (lambda: mmd(a, a, kernel="gauss"), r"^unknown kernel 'gauss'"),
        (lambda: mmd(a, a, kernel="rbf", bandwidth=0.0), r"^bandwidth must be a positive finite number, got 0"),
        (lambda: hsic(a[:1], a), r"^x needs at least 2 samples"),
        (lambda: hsic(a, a[:1]), r"^y needs at least 2 samples"),
        (lambda: hsic(a, a[:3]), r"^x has 4 rows but y has 3"),
        (lambda: hsic(a, a, kernel="gauss"), r"^unknown kernel 'gauss'"),
        (lambda: dhsic([a, a[:1]]), r"^samples\[1\] needs at least 2 samples"),
        (lambda: dhsic([a, a[:3]]), r"row counts \[4, 3\] differ"),
        (lambda: dhsic([a, a], kernel="gauss"), r"^unknown kernel 'gauss'"),
        (lambda: dip_penalty(a[0]), r"^loc must have shape \[M, D\]"),
        (lambda: dip_penalty(a, kind="ii"), r"^dip_penalty\(kind='ii'\) needs the encoder scale: pass scale=\[M, D\]"),
        (lambda: dip_penalty(a, s[0], kind="ii"), r"^scale must have shape \[M, D\]"),
        (lambda: dip_penalty(a, s[:, :1], kind="ii"), r"shape mismatch: loc \(4, 2\), scale \(4, 1\)"),
        (lambda: dip_penalty(a, lambda_od=-1.0), r"^lambda_od must be a finite number >= 0"),
        (lambda: dip_penalty(a, lambda_d=float("inf")), r"^lambda_d must be a finite number >= 0"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_decomposition_errors_name_the_argument_and_zero_lambdas_are_allowed():
    a, s = torch.randn(4, 2, dtype=F64), torch.ones(4, 2, dtype=F64)
    for args, message in (((a[0], a, s), r"^z must have shape"), ((a, a[0], s), r"^loc must have shape"),
                          ((a, a, s[0]), r"^scale must have shape"),
                          ((a, torch.ones(4, 3, dtype=F64), s), r"shape mismatch: z \(4, 2\), loc \(4, 3\), scale \(4, 2\)"),
                          ((a, a, torch.ones(4, 3, dtype=F64)), r"shape mismatch: z \(4, 2\), loc \(4, 2\), scale \(4, 3\)")):
        with pytest.raises(ValueError, match=message):
            total_correlation(*args, 10)
    with pytest.raises(ValueError, match=r"unknown estimator 'MSS'; choose one of 'mws', 'mss'"):
        total_correlation(a, a, s, 10, "MSS")
    off, diag = dip_parts(brute_cov(a))
    assert dip_penalty(a, lambda_od=0.0, lambda_d=0.5).item() == pytest.approx(0.5 * diag, rel=1e-12)
    assert dip_penalty(a, lambda_od=0.25, lambda_d=0.0).item() == pytest.approx(0.25 * off, rel=1e-12)


def test_a_tensor_bandwidth_is_accepted():
    g = torch.Generator().manual_seed(12)
    x, y = torch.randn(6, 2, generator=g, dtype=F64), torch.randn(5, 2, generator=g, dtype=F64)
    assert mmd(x, y, kernel="imq", bandwidth=torch.tensor(0.7, dtype=F64)).item() == pytest.approx(
        brute_mmd_imq(x, y, 0.7), rel=1e-10)


def test_hsic_penalty_with_a_sensitive_site_and_joint_groups():
    """HSICPenalty: sum_{G<G'} HSIC(z_G, z_G') + HSIC(z, s) with s an observed site of the model (Lopez et al. 2018);
    joint=True: the d-variable HSIC of all groups (V-statistic); a site that is not observed is refused."""
    import pyro.distributions as dist

    from metaprior.inference.estimators import dhsic
    from metaprior.inference.regularizers import HSICPenalty

    g = torch.Generator().manual_seed(13)
    x = torch.randn(10, 2, generator=g, dtype=F64)
    s_obs = x[:, :1] + 0.5 * torch.randn(10, 1, generator=g, dtype=F64)
    loc, scale = x @ torch.tensor([[1.0, 0.5, -0.3], [0.2, 1.0, 0.8]], dtype=F64), 0.5 * torch.ones(10, 3, dtype=F64)

    def model(x, s):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x), 3, dtype=F64), 1.0).to_event(1))
            pyro.sample("s", dist.Normal(z[:, :1], 1.0).to_event(1), obs=s)
            pyro.sample("x", dist.Normal(z[:, 1:], 1.0).to_event(1), obs=x)

    def guide(x, s):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    terms = {"pairs": (2.0, HSICPenalty(((0,), (1, 2)), "rbf", 1.1, sensitive="s")),
             "joint": (0.0, HSICPenalty(((0,), (1,), (2,)), "rbf", 1.1, joint=True)),
             "only_s": (0.0, HSICPenalty(((0, 1, 2),), "imq", 2.0, sensitive="s"))}
    pyro.set_rng_seed(0)
    res = ELBO(terms=terms)(model, guide, x, s_obs)
    z = res.context.latent("z").value.numpy()
    pairs = _hand_hsic(_gram(z[:, :1], "rbf", 1.1), _gram(z[:, 1:], "rbf", 1.1)) + \
        _hand_hsic(_gram(z, "rbf", 1.1), _gram(s_obs, "rbf", 1.1))
    assert res.parts["pairs"].item() == pytest.approx(pairs, rel=1e-10)
    assert res.parts["only_s"].item() == pytest.approx(_hand_hsic(_gram(z, "imq", 2.0), _gram(s_obs, "imq", 2.0)), rel=1e-10)
    grams = [_gram(z[:, [k]], "rbf", 1.1) for k in range(3)]
    n = len(z)
    joint = (np.prod(grams, 0).sum() / n**2 + np.prod([k.sum() / n**2 for k in grams])
             - 2 / n * np.prod([k.sum(1) / n for k in grams], 0).sum())
    assert res.parts["joint"].item() == pytest.approx(joint, rel=1e-10)
    assert res.parts["joint"].item() == pytest.approx(
        dhsic([torch.as_tensor(z[:, [k]]) for k in range(3)], "rbf", 1.1).item(), rel=1e-12)
    d = torch.as_tensor(pairs)
    assert close(res.loss, res.parts["distortion"] + res.parts["rate"] + 2.0 * d, rel=1e-9)
    with pytest.raises(ValueError, match=r"sensitive='z' names no observed site of the model"):
        ELBO(terms={"h": (1.0, HSICPenalty(((0,), (1, 2)), sensitive="z"))})(model, guide, x, s_obs)
    with pytest.raises(ValueError, match=r"sensitive='nope' names no observed site"):
        ELBO(terms={"h": (1.0, HSICPenalty(((0,), (1, 2)), sensitive="nope"))})(model, guide, x, s_obs)


def test_regularizer_terms_defaults_and_kernels():
    """rate() reads site "z" by default; MMDToPrior keeps its kernel in both branches (RBF with the median
    heuristic, RBF at given scales) and reads its own site; CapacityGap starts at C(0) = 0; decomposed_rate names a
    bad weight."""
    from metaprior.inference.regularizers import CapacityGap, KLDecomposition, decomposed_rate, rate

    g = torch.Generator().manual_seed(14)
    z, p = 0.5 + torch.randn(7, 2, generator=g, dtype=F64), torch.randn(7, 2, generator=g, dtype=F64)

    def rbf_mmd(h):
        x, y = z.numpy(), p.numpy()
        k = lambda a, b: math.exp(-((a - b) ** 2).sum() / (2 * h**2))  # noqa: E731
        m = len(x)
        kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
        kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
        return kxx + kyy - 2 * sum(k(a, b) for a in x for b in y) / m**2

    pooled = torch.cat([z, p])
    med = float(torch.pdist(pooled).median())
    assert MMDToPrior("rbf")(_Ctx(z, p)).item() == pytest.approx(rbf_mmd(med), rel=1e-9)
    assert MMDToPrior("rbf", 1.5, (1.0, 2.0))(_Ctx(z, p)).item() == pytest.approx(rbf_mmd(1.5) + rbf_mmd(3.0), rel=1e-9)

    class SiteCtx(_Ctx):
        def latent(self, name="z"):
            assert name == "w", name
            return super().latent(name)

    assert MMDToPrior("imq", 1.0, site="w")(SiteCtx(z, p)).item() == pytest.approx(brute_mmd_imq(z, p, 1.0), rel=1e-9)
    gap = CapacityGap(10.0, 4)
    assert [gap.c(t) for t in (0, 1, 4, 9)] == [0.0, 2.5, 10.0, 10.0]
    with pytest.raises(ValueError, match=r"^mi must be a finite number >= 0"):
        decomposed_rate({"mi": -1.0, "tc": 1.0, "dimwise_kl": 1.0}, KLDecomposition())
    digits = load("digits")
    pyro.set_rng_seed(0)
    pair, _ = configure(METHODS["vae"], TINY).build(digits)
    res = ELBO()(pair.model, pair.guide, torch.as_tensor(digits.batch(0, 8, 0)))
    _, loc, scale = gaussian_codes(res)
    assert close(rate(res.context), hand_rate(loc, scale), rel=1e-5)


def test_kl_decomposition_size_and_estimator_reach_every_part(digits):
    """A term's own dataset_size wins over the context's; without either the error says how to pass it; the
    within-group TC uses the term's estimator (mws here), as the brute force at N = 50 shows."""
    from metaprior.inference.regularizers import KLDecomposition

    pyro.set_rng_seed(0)
    pair, _ = configure(METHODS["vae"], TINY).build(digits)
    spread(pair)
    x = torch.as_tensor(digits.batch(0, 8, 0))
    res = ELBO()(pair.model, pair.guide, x, dataset_size=1000)
    z, loc, scale = gaussian_codes(res)
    groups = [(0, 1), (2, 3)]
    for estimator in ("mws", "mss"):
        parts = KLDecomposition(estimator, dataset_size=50, groups=groups).parts(res.context)
        want = brute_decomposition(z, loc, scale, 50, estimator, groups)
        for key in ("mi", "tc_between", "tc_within", "dimwise_kl"):
            assert close(parts[key], want[key], rel=1e-4, abs_=1e-5), (estimator, key)
    res.context.dataset_size = None
    with pytest.raises(ValueError, match=r"^the aggregate-posterior estimators need the training-set size: pass "
                                         r"dataset_size to the term or to ELBO\(\.\.\.\)\(\.\.\., dataset_size=N\) "
                                         r"\(the Trainer passes data\.num_examples\)$"):
        KLDecomposition().parts(res.context)
