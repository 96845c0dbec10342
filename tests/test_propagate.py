"""Layer-by-layer moment propagation (netmoments.propagate): exact where it should be, clear errors otherwise."""
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch import nn

import netmoments as nm
from netmoments import propagate

f64 = dict(dtype=torch.float64)
CLOSURES = propagate.CLOSURES


def _bonferroni_z(n_checks, alpha=1e-3):
    return float(stats.norm.isf(alpha / (2 * n_checks)))


def _jacobian(net, shape):
    """The matrix of an affine network, by autograd (an independent route to W Sigma W^T)."""
    x = torch.zeros(1, *shape, **f64)
    jac = torch.autograd.functional.jacobian(lambda z: net(z).reshape(-1), x)
    return jac.reshape(jac.shape[0], -1)


def _small_cnn(gen, pool_first=True):
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        *( [nn.MaxPool2d(2), nn.ReLU()] if pool_first else [nn.ReLU(), nn.MaxPool2d(2)] ),
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 6),
        nn.ReLU(),
        nn.Linear(6, 3),
    ).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, **f64) * 0.7)
    return net


@pytest.mark.numerics
@pytest.mark.parametrize("closure", CLOSURES)
def test_affine_stacks_are_exact(closure, gen):
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, stride=2), nn.AvgPool2d(2, padding=1, count_include_pad=False),
        nn.Flatten(), nn.Linear(3 * 2 * 2, 5), nn.Identity(), nn.Linear(5, 4),
    ).double().eval()  # fmt: skip
    shape = (2, 6, 6)
    W = _jacobian(net, shape)
    mean = torch.randn(3, *shape, generator=gen, **f64)
    factor = torch.randn(3, 72, 30, generator=gen, **f64)
    cov = factor @ factor.mT  # rank 30 < 72
    out_mean, out_cov = propagate.moments(net, mean, cov, closure=closure)
    with torch.no_grad():
        torch.testing.assert_close(out_mean, net(mean), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out_cov, W @ cov @ W.T, rtol=1e-12, atol=1e-12)
        _, out_var = propagate.moments(net, mean, cov, closure=closure, output="var")
        torch.testing.assert_close(out_var, torch.diagonal(W @ cov @ W.T, dim1=-2, dim2=-1), rtol=1e-12, atol=1e-12)


def test_lowrank_rank_zero_on_a_diagonal_input_is_exact_through_an_affine_stack(gen):
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.Linear(4, 3)).double().eval()
    W = _jacobian(net, (6,))
    var = torch.rand(6, generator=gen, **f64) + 0.1
    mean = torch.randn(2, 6, generator=gen, **f64)
    _, cov = propagate.moments(net, mean, torch.diag_embed(var), closure="lowrank", rank=0)
    with torch.no_grad():
        torch.testing.assert_close(cov, ((W * var) @ W.T).expand(2, 3, 3), rtol=1e-12, atol=1e-12)
        _, full = propagate.moments(net, mean, torch.diag_embed(var), closure="lowrank")
        torch.testing.assert_close(full, cov, rtol=1e-12, atol=1e-12)


def _one_hidden_layer(gen, n=5, m=8, p=3):
    net = nn.Sequential(nn.Linear(n, m), nn.ReLU(), nn.Linear(m, p)).double().eval()
    with torch.no_grad():
        net[0].bias.copy_(1.5 * torch.randn(m, generator=gen, **f64))
    reference = nm.AffineReLUAffine(*(t.detach() for t in (net[0].weight, net[0].bias, net[2].weight, net[2].bias)))
    return net, reference


@pytest.mark.numerics
def test_one_hidden_relu_layer_full_is_the_exact_covariance_and_every_mean_is_exact(gen):
    net, reference = _one_hidden_layer(gen)
    mean = torch.randn(4, 5, generator=gen, **f64)
    cov = nm.random_spd(5, trace=5.0, generator=gen)
    exact_mean, exact_cov = reference.moments(mean, cov)
    with torch.no_grad():
        out_mean, out_cov = propagate.moments(net, mean, cov, closure="full")
        torch.testing.assert_close(out_cov, exact_cov, rtol=1e-12, atol=1e-12)
        for closure in CLOSURES:
            out_mean, _ = propagate.moments(net, mean, cov, closure=closure)
            torch.testing.assert_close(out_mean, exact_mean, rtol=1e-12, atol=1e-12)
        # the closures below "full" are approximations here: they must not coincide with the exact covariance
        _, low = propagate.moments(net, mean, cov, closure="lowrank")
        assert (low - exact_cov).abs().max() > 1e-6


def test_full_passes_the_relu_formula_through(gen):
    net, reference = _one_hidden_layer(gen)
    mean = torch.randn(2, 5, generator=gen, **f64)
    cov = nm.random_spd(5, trace=5.0, generator=gen)
    with torch.no_grad():
        for method in ("hybrid", "series"):
            _, out = propagate.moments(net, mean, cov, closure="full", method=method, terms=7)
            torch.testing.assert_close(out, reference.moments(mean, cov, method=method, terms=7)[1], rtol=1e-12, atol=1e-12)


def _two_unit_max_by_quadrature(m1, m2, v1, v2, c12):
    """E and Var of max(y1, y2) by 1-D quadrature over d = y2 - y1 (max = y1 + relu(d))."""
    md, vd = m2 - m1, v1 + v2 - 2 * c12
    sd = math.sqrt(vd)
    beta = (c12 - v1) / vd  # y1 = m1 + beta (d - md) + independent noise
    pdf = lambda d: stats.norm.pdf(d, md, sd)  # noqa: E731
    e_r = integrate.quad(lambda d: d * pdf(d), 0, np.inf, epsabs=1e-14, epsrel=1e-13)[0]
    e_r2 = integrate.quad(lambda d: d * d * pdf(d), 0, np.inf, epsabs=1e-14, epsrel=1e-13)[0]
    e_dr = integrate.quad(lambda d: (d - md) * d * pdf(d), 0, np.inf, epsabs=1e-14, epsrel=1e-13)[0]
    mean = m1 + e_r
    # Var(y1 + r) = v1 + Var(r) + 2 Cov(y1, r), Cov(y1, r) = beta E[(d - md) r]
    var = v1 + (e_r2 - e_r**2) + 2 * beta * e_dr
    return mean, var


@pytest.mark.numerics
@pytest.mark.parametrize("closure", CLOSURES)
def test_max_of_two_units_is_clark_exactly(closure, gen):
    pool = nn.Sequential(nn.MaxPool2d((1, 2))).eval()
    mean = torch.tensor([[[[0.3, -0.2]]]], **f64)
    cov = torch.tensor([[1.0, 0.0], [0.0, 0.5]], **f64) if closure == "diag" else torch.tensor([[1.0, 0.6], [0.6, 0.5]], **f64)
    expect_mean, expect_var = _two_unit_max_by_quadrature(0.3, -0.2, cov[0, 0].item(), cov[1, 1].item(), cov[0, 1].item())
    out_mean, out_var = propagate.moments(pool, mean, cov, closure=closure, output="var")
    assert abs(out_mean.item() - expect_mean) < 1e-10
    assert abs(out_var.item() - expect_var) < 1e-10
    draws = nm.sample_gaussian(mean.reshape(2), cov, 400_000, generator=gen).max(-1).values
    se_mean = draws.std() / math.sqrt(len(draws))
    centred = (draws - draws.mean()) ** 2
    se_var = centred.std() / math.sqrt(len(draws))
    z = _bonferroni_z(2)
    assert abs(draws.mean() - out_mean.item()) < z * se_mean
    assert abs(draws.var() - out_var.item()) < z * se_var


def test_clark_max_degenerate_pairs_give_exact_limits():
    # identical units (rho = 1, equal means): the max is that unit
    mean = torch.tensor([0.4, 0.4], **f64, requires_grad=True)
    cov = torch.tensor([[0.3, 0.3], [0.3, 0.3]], **f64, requires_grad=True)
    m, v, coef = propagate.clark_max(mean, cov)
    assert abs(m.item() - 0.4) < 1e-15 and abs(v.item() - 0.3) < 1e-15
    (m + v).backward()
    assert torch.isfinite(mean.grad).all() and torch.isfinite(cov.grad).all()
    # rho = 1 with different means: the larger one, always
    m, v, coef = propagate.clark_max(torch.tensor([1.0, 0.2], **f64), torch.tensor([[0.3, 0.3], [0.3, 0.3]], **f64))
    assert abs(m.item() - 1.0) < 1e-15 and abs(v.item() - 0.3) < 1e-15
    assert coef.tolist() == [1.0, 0.0]
    # zero variance on both: the max of the means
    m, v, _ = propagate.clark_max(torch.tensor([-1.0, 0.5], **f64), torch.zeros(2, 2, **f64))
    assert m.item() == 0.5 and v.item() == 0.0


@pytest.mark.parametrize("closure", CLOSURES)
def test_zero_noise_gives_the_network_output_with_zero_covariance(closure, gen):
    net = _small_cnn(gen)
    mean = torch.randn(2, 1, 8, 8, generator=gen, **f64).requires_grad_(True)
    sigma2 = torch.tensor(0.0, **f64, requires_grad=True)
    out_mean, out_cov = propagate.moments(net, mean, sigma2, closure=closure)
    torch.testing.assert_close(out_mean, net(mean), rtol=1e-12, atol=1e-12)
    assert out_cov.abs().max() == 0
    (out_mean.sum() + out_cov.sum()).backward()
    assert torch.isfinite(mean.grad).all() and torch.isfinite(sigma2.grad).all()


@pytest.mark.parametrize(
    "pool",
    [nn.MaxPool2d(3, stride=2, padding=1), nn.MaxPool2d(2, ceil_mode=True), nn.MaxPool2d(2, stride=1, dilation=2),
     nn.MaxPool2d((2, 3), stride=(1, 2))],
)  # fmt: skip
def test_pooling_windows_match_torch_on_a_point(pool, gen):
    # with no noise Clark's maximum is the plain maximum, so every window's membership is checked
    net = nn.Sequential(pool).eval()
    mean = torch.randn(2, 2, 7, 7, generator=gen, **f64)
    for closure in CLOSURES:
        out_mean, out_var = propagate.moments(net, mean, 0.0, closure=closure, output="var")
        torch.testing.assert_close(out_mean, pool(mean).reshape(2, -1), rtol=0, atol=0)
        assert out_var.abs().max() == 0


@pytest.mark.parametrize("closure", CLOSURES)
def test_relu_before_a_max_pool_is_the_same_network_and_the_same_moments(closure, gen):
    first = _small_cnn(torch.Generator().manual_seed(5), pool_first=True)
    second = _small_cnn(torch.Generator().manual_seed(5), pool_first=False)
    mean = torch.randn(2, 1, 8, 8, generator=gen, **f64)
    with torch.no_grad():
        torch.testing.assert_close(first(mean), second(mean), rtol=0, atol=0)
        a = propagate.moments(first, mean, 0.04, closure=closure)
        b = propagate.moments(second, mean, 0.04, closure=closure)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("closure", CLOSURES)
def test_batches_shared_and_isotropic_covariances_agree(closure, gen):
    net = _small_cnn(gen)
    mean = torch.randn(3, 1, 8, 8, generator=gen, **f64)
    with torch.no_grad():
        iso = propagate.moments(net, mean, 0.09, closure=closure)
        shared = propagate.moments(net, mean, 0.09 * torch.eye(64, **f64), closure=closure)
        batched = propagate.moments(net, mean, 0.09 * torch.eye(64, **f64).expand(3, 64, 64), closure=closure)
        one = propagate.moments(net, mean[1:2], 0.09, closure=closure)
    torch.testing.assert_close(iso, shared, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(iso, batched, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close((iso[0][1:2], iso[1][1:2]), one, rtol=1e-12, atol=1e-13)


def test_a_small_cnn_against_monte_carlo(gen):
    """The exact part (the first max-pool of Gaussian conv outputs, k = 2) within z SE; the rest as a report."""
    exact_part = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d((1, 2))).double().eval()
    with torch.no_grad():
        for p in exact_part.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, **f64))
    mean = torch.randn(1, 1, 4, 4, generator=gen, **f64)
    cov = nm.random_spd(16, trace=8.0, generator=gen)
    draws = nm.sample_gaussian(mean.reshape(16), cov, 200_000, generator=gen)
    with torch.no_grad():
        values = exact_part(draws.reshape(-1, 1, 4, 4)).reshape(len(draws), -1)
        mc_mean, mc_var = values.mean(0), values.var(0)
        se_mean = (mc_var / len(draws)).sqrt()
        se_var = (((values - mc_mean) ** 2).var(0) / len(draws)).sqrt()
        z = _bonferroni_z(2 * values.shape[1] * 2)
        for closure in ("lowrank", "full"):
            out_mean, out_var = propagate.moments(exact_part, mean, cov, closure=closure, output="var")
            assert ((out_mean[0] - mc_mean).abs() / se_mean).max() < z
            assert ((out_var[0] - mc_var).abs() / se_var).max() < z
        # before its first nonlinearity the diagonal closure still holds the input's correlations, so on this
        # network (one pool, nothing after it) it is exact too
        _, diag_var = propagate.moments(exact_part, mean, cov, closure="diag", output="var")
        _, low_var = propagate.moments(exact_part, mean, cov, closure="lowrank", output="var")
        torch.testing.assert_close(diag_var, low_var)  # diag keeps the input's correlations up to the first nonlinearity


def _gradcheck_net(gen):
    net = nn.Sequential(
        nn.Conv2d(1, 2, 2), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2)
    ).double().eval()  # fmt: skip
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, **f64))
    return net


@pytest.mark.parametrize("closure", CLOSURES)
def test_gradcheck(closure, gen):
    net = _gradcheck_net(gen)
    mean = torch.randn(1, 1, 3, 3, generator=gen, **f64, requires_grad=True)
    factor = (0.5 * torch.randn(9, 3, generator=gen, **f64)).requires_grad_(True)

    def fn(mean, factor):
        out_mean, out_cov = propagate.moments(net, mean, factor @ factor.mT, closure=closure)
        return out_mean, out_cov

    assert torch.autograd.gradcheck(fn, (mean, factor), eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def test_unscented_is_exact_for_affine_networks_and_follows_its_definition(gen):
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Linear(3, 2)).double().eval()
    W = _jacobian(net, (4,))
    mean = torch.randn(2, 4, generator=gen, **f64)
    cov = nm.random_spd(4, trace=3.0, generator=gen)
    with torch.no_grad():
        out_mean, out_cov = propagate.unscented(net, mean, cov)
        torch.testing.assert_close(out_mean, net(mean), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out_cov, (W @ cov @ W.T).expand(2, 2, 2), rtol=1e-12, atol=1e-12)
        # one input, a ReLU: points mu and mu +- sqrt(1 + kappa) sigma, weights kappa/(1+kappa), 1/(2(1+kappa))
        relu = nn.Sequential(nn.ReLU()).eval()
        mu, sigma, kappa = 0.3, 0.8, 2.0
        pts = np.maximum([mu, mu + math.sqrt(3) * sigma, mu - math.sqrt(3) * sigma], 0)
        w = np.array([kappa / 3, 1 / 6, 1 / 6])
        m = (w * pts).sum()
        v = (w * (pts - m) ** 2).sum()
        um, uv = propagate.unscented(relu, torch.tensor([[mu]], **f64), sigma**2, output="var", kappa=kappa)
        assert abs(um.item() - m) < 1e-14 and abs(uv.item() - v) < 1e-14


def test_float32_follows_and_agrees_with_float64(gen):
    net = _small_cnn(gen)
    mean = torch.randn(2, 1, 8, 8, generator=gen, **f64)
    with torch.no_grad():
        m64, v64 = propagate.moments(net, mean, 0.05, closure="lowrank", output="var")
        m32, v32 = propagate.moments(net.float(), mean.float(), 0.05, closure="lowrank", output="var")
    assert m32.dtype == torch.float32 and v32.dtype == torch.float32
    torch.testing.assert_close(m32.double(), m64, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(v32.double(), v64, rtol=1e-4, atol=1e-6)


def test_bad_inputs_name_the_argument(gen):
    net, _ = _one_hidden_layer(gen)
    mean = torch.randn(2, 5, **f64)
    cov = torch.eye(5, **f64)
    with pytest.raises(ValueError, match="closure"):
        propagate.moments(net, mean, cov, closure="exact")
    with pytest.raises(ValueError, match="output"):
        propagate.moments(net, mean, cov, output="std")
    with pytest.raises(ValueError, match="rank"):
        propagate.moments(net, mean, cov, closure="full", rank=3)
    with pytest.raises(ValueError, match="rank"):
        propagate.moments(net, mean, cov, closure="lowrank", rank=-1)
    net.train()
    with pytest.raises(ValueError, match="training mode"):
        propagate.moments(net, mean, cov)
    net.eval()
    with pytest.raises(TypeError, match=r"model\[1\] is a Tanh"):
        propagate.moments(nn.Sequential(nn.Linear(5, 3), nn.Tanh()).double().eval(), mean, cov)
    with pytest.raises(TypeError, match="nn.Sequential"):
        propagate.moments(nn.Linear(5, 3), mean, cov)
    with pytest.raises(ValueError, match="batch dimension"):
        propagate.moments(net, mean[0], cov)
    with pytest.raises(ValueError, match="cov"):
        propagate.moments(net, mean, torch.eye(4, **f64))
    with pytest.raises(ValueError, match="cov.*positive semi-definite"):
        propagate.moments(net, mean, -torch.eye(5, **f64))
    with pytest.raises(ValueError, match="cov"):
        propagate.moments(net, mean, torch.eye(5, **f64).expand(3, 5, 5))
    with pytest.raises(ValueError, match="cov.*>= 0"):
        propagate.moments(net, mean, -0.1)
    with pytest.raises(ValueError, match="mean contains NaN"):
        propagate.moments(net, torch.full((2, 5), float("nan"), **f64), cov)
    with pytest.raises(TypeError, match="mean.*float16"):
        propagate.moments(net, mean.half(), cov.half())
    with pytest.raises(TypeError, match="dtype"):
        propagate.moments(net, mean, cov.float())
    with pytest.raises(TypeError, match="cov must be"):
        propagate.moments(net, mean, "0.1")
    with pytest.raises(ValueError, match="empty batch"):
        propagate.moments(net, mean[:0], cov)
    with pytest.raises(TypeError, match="padding_mode"):
        propagate.moments(nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect")).eval(), torch.zeros(1, 1, 4, 4), 0.1)


def test_full_refuses_a_dense_covariance_too_large_to_hold(monkeypatch):
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 50), nn.ReLU(), nn.Linear(50, 2)).double().eval()
    monkeypatch.setattr(propagate, "DENSE_LIMIT_BYTES", 50 * 50 * 8 - 1)
    with pytest.raises(ValueError, match=r"dense 50 x 50 covariance at model\[2\] \(ReLU\).*lowrank"):
        propagate.moments(net, torch.zeros(1, 4, **f64), 0.1, closure="full")


@pytest.mark.parametrize("closure", CLOSURES)
def test_rank_deficient_covariances_have_finite_exact_gradients(closure, gen):
    # diag(1, 1, 0) has a repeated eigenvalue, where an eigen-decomposition's derivative is undefined
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double().eval()
    mean = torch.randn(1, 3, generator=gen, **f64)
    cov = torch.diag(torch.tensor([1.0, 1.0, 0.0], **f64)).requires_grad_(True)
    out_mean, out_cov = propagate.moments(net, mean, cov, closure=closure)
    (out_mean.sum() + out_cov.sum()).backward()
    assert torch.isfinite(cov.grad).all()
    # against a central difference along a symmetric direction that leaves the support (into the zero eigenvalue)
    direction = torch.zeros(3, 3, **f64)
    direction[2, 2] = 1.0
    direction[0, 1] = direction[1, 0] = 0.3
    h = 1e-6
    with torch.no_grad():
        up = propagate.moments(net, mean, cov + h * direction, closure=closure)
        down = propagate.moments(net, mean, cov + 0 * direction, closure=closure)
    numeric = ((up[0].sum() + up[1].sum()) - (down[0].sum() + down[1].sum())) / h
    assert abs((cov.grad * direction).sum().item() - numeric.item()) < 1e-4 * max(1.0, abs(numeric.item()))


@pytest.mark.parametrize(
    "conv", [nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2))]
)
def test_full_fuses_a_convolution_and_its_max_pool_without_changing_the_result(conv, gen):
    layers = [nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(), conv,
              nn.MaxPool2d(2, stride=1, padding=1), nn.ReLU(), nn.Flatten()]  # fmt: skip
    fused = nn.Sequential(*layers).double().eval()
    with torch.no_grad():
        for p in fused.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, **f64))
    # an Identity between the second convolution and its pool takes the unfused path
    plain = nn.Sequential(*fused[:4], nn.Identity(), *fused[4:]).eval()
    mean = torch.randn(2, 1, 6, 6, generator=gen, **f64)
    cov = nm.random_spd(36, trace=3.0, generator=gen)
    with torch.no_grad():
        a = propagate.moments(fused, mean, cov, closure="full")
        b = propagate.moments(plain, mean, cov, closure="full")
    torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)


def test_clark_max_gradient_at_an_exact_tie_is_the_derivative():
    """Equal means are common (a blank background ties every unit of a window); the max is smooth there."""
    cov = torch.tensor([[1.0, 0.2], [0.2, 0.5]], **f64)

    def total(mean):
        m, v, coef = propagate.clark_max(mean, cov)
        return m + v + coef[0]

    mean = torch.tensor([0.3, 0.3], **f64, requires_grad=True)
    total(mean).backward()
    h = 1e-6
    for i in range(2):
        step = torch.zeros(2, **f64)
        step[i] = h
        numeric = (total(mean.detach() + step) - total(mean.detach() - step)) / (2 * h)
        assert abs(mean.grad[i].item() - numeric.item()) < 1e-6


def test_string_padding_and_wide_layers_under_full(gen, monkeypatch):
    numeric = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=0), nn.MaxPool2d(2),
                            nn.Flatten()).double().eval()  # fmt: skip
    with torch.no_grad():
        for p in numeric.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, **f64))
    valid = nn.Sequential(*numeric[:2], nn.Conv2d(2, 2, 3, padding="valid"), *numeric[3:]).double().eval()
    with torch.no_grad():
        valid[2].weight.copy_(numeric[2].weight)
        valid[2].bias.copy_(numeric[2].bias)
    mean = torch.randn(1, 1, 6, 6, generator=gen, **f64)
    with torch.no_grad():
        torch.testing.assert_close(propagate.moments(valid, mean, 0.05, closure="full"),
                                   propagate.moments(numeric, mean, 0.05, closure="full"), rtol=1e-11, atol=1e-13)
    with pytest.raises(TypeError, match=r"model\[0\] is a MaxPool2d with return_indices"):
        propagate.moments(nn.Sequential(nn.MaxPool2d(2, return_indices=True)).eval(), mean, 0.05)
    # a dense state widened by a layer past the limit is refused with the same clear message
    wide = nn.Sequential(nn.Flatten(), nn.Linear(36, 50), nn.ReLU(), nn.Linear(50, 60)).double().eval()
    monkeypatch.setattr(propagate, "DENSE_LIMIT_BYTES", 60 * 60 * 8 - 1)
    with pytest.raises(ValueError, match="dense 60 x 60 covariance at the output of Linear"):
        propagate.moments(wide, mean, 0.05, closure="full")


def test_a_rank_at_least_the_dimension_is_the_exact_factor(gen):
    net, _ = _one_hidden_layer(gen)
    mean = torch.randn(2, 5, generator=gen, **f64)
    cov = (0.09 * torch.eye(5, **f64)).requires_grad_(True)  # tied eigenvalues: no eigen-derivative exists
    out = propagate.moments(net, mean, cov, closure="lowrank", rank=5)
    (out[0].sum() + out[1].sum()).backward()
    assert torch.isfinite(cov.grad).all()
    with torch.no_grad():
        torch.testing.assert_close(out, propagate.moments(net, mean, cov, closure="lowrank"), rtol=0, atol=0)
