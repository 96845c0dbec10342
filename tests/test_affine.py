import math

import pytest
import torch

import netmoments as nm

f64 = dict(dtype=torch.float64)


def _network(gen, n=5, m=12, p=3, bias_scale=1.5, dtype=torch.float64):
    A = torch.randn(m, n, generator=gen, dtype=dtype) / math.sqrt(n)
    c1 = bias_scale * torch.randn(m, generator=gen, dtype=dtype)
    B = torch.randn(p, m, generator=gen, dtype=dtype) / math.sqrt(m)
    c2 = torch.randn(p, generator=gen, dtype=dtype)
    return nm.AffineReLUAffine(A, c1, B, c2)


def _bonferroni_z(n_checks, alpha=1e-3):
    # two-sided normal quantile for a family-wise error rate alpha over n_checks comparisons
    return math.sqrt(2) * torch.special.erfinv(torch.tensor(1 - alpha / n_checks, **f64)).item()


@pytest.mark.numerics
def test_affine_moments_exact(gen):
    mean = torch.randn(4, generator=gen, **f64)
    cov = nm.random_spd(4, 4.0, generator=gen)
    W = torch.randn(3, 4, generator=gen, **f64)
    b = torch.randn(3, generator=gen, **f64)
    m, c = nm.affine_moments(mean, cov, W, b)
    torch.testing.assert_close(m, W @ mean + b, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(c, W @ cov @ W.T, rtol=1e-14, atol=1e-14)
    _, v = nm.affine_moments(mean, cov, W, b, output="var")
    torch.testing.assert_close(v, torch.diagonal(W @ cov @ W.T), rtol=1e-14, atol=1e-14)


def test_network_moments_match_monte_carlo_with_nonzero_preactivation_means(gen):
    net = _network(gen)
    mean = torch.randn(5, generator=gen, **f64)
    cov = nm.random_spd(5, trace=5.0, generator=gen)
    mc = nm.monte_carlo_moments(net, mean, cov, n_samples=400_000, batch_size=100_000, generator=gen, covariance=True)
    out_mean, out_cov = net.moments(mean, cov)
    # the pre-activation means really are far from zero here, so the zero-mean shortcut cannot pass by luck
    y_mean, y_cov = net.hidden_moments(mean, cov)
    assert (y_mean.abs() / torch.diagonal(y_cov).sqrt()).median() > 0.5
    z = _bonferroni_z(3 + 3 + 9)
    z_mean, z_var = mc.z_scores(out_mean, torch.diagonal(out_cov))
    assert z_mean.max() < z and z_var.max() < z
    z_cov = (out_cov - mc.cov).abs() / mc.cov_se
    assert z_cov.max() < z


def test_hybrid_2018_estimate_fails_the_same_check(gen):
    net = _network(gen, bias_scale=2.0)
    mean = torch.randn(5, generator=gen, **f64)
    cov = nm.random_spd(5, trace=5.0, generator=gen)
    mc = nm.monte_carlo_moments(net, mean, cov, n_samples=400_000, batch_size=100_000, generator=gen, covariance=True)
    _, hybrid_cov = net.moments(mean, cov, method="hybrid")
    _, exact_cov = net.moments(mean, cov, method="exact")
    z = _bonferroni_z(9)
    assert ((exact_cov - mc.cov).abs() / mc.cov_se).max() < z
    assert ((hybrid_cov - mc.cov).abs() / mc.cov_se).max() > 3 * z


def test_moments_output_var_is_diagonal_of_cov(gen):
    net = _network(gen)
    mean = torch.randn(5, generator=gen, **f64)
    cov = nm.random_spd(5, 2.0, generator=gen)
    for method in nm.relu.RELU_COVARIANCE_METHODS:
        m1, c = net.moments(mean, cov, method=method)
        m2, v = net.moments(mean, cov, method=method, output="var")
        torch.testing.assert_close(m1, m2, rtol=0, atol=0)
        torch.testing.assert_close(v, torch.diagonal(c), rtol=1e-13, atol=1e-14)


@pytest.mark.numerics
def test_rank_deficient_input_covariance_and_parallel_rows(gen):
    A = torch.randn(6, 3, generator=gen, **f64)
    A[4] = -A[3]  # rho = -1
    A[5] = 0.0  # zero variance unit
    net = nm.AffineReLUAffine(A, torch.randn(6, generator=gen, **f64), torch.randn(2, 6, generator=gen, **f64), torch.zeros(2, **f64))
    u = torch.randn(3, 1, generator=gen, **f64)
    cov = (u @ u.T).requires_grad_()  # rank one
    mean = torch.randn(3, generator=gen, **f64).requires_grad_()
    out_mean, out_cov = net.moments(mean, cov)
    assert torch.isfinite(out_mean).all() and torch.isfinite(out_cov).all()
    (out_mean.sum() + out_cov.sum()).backward()
    assert torch.isfinite(mean.grad).all() and torch.isfinite(cov.grad).all()
    mc = nm.monte_carlo_moments(net, mean.detach(), cov.detach(), n_samples=200_000, batch_size=100_000, generator=gen)
    z = _bonferroni_z(4)
    z_mean, z_var = mc.z_scores(out_mean.detach(), torch.diagonal(out_cov.detach()))
    assert z_mean.max() < z and z_var.max() < z


@pytest.mark.numerics
def test_batched_weights_and_inputs_equal_per_item(gen):
    nets = [_network(gen) for _ in range(3)]
    batched = nm.AffineReLUAffine(*(torch.stack([getattr(n, k) for n in nets]) for k in ("A", "c1", "B", "c2")))
    means = torch.randn(3, 5, generator=gen, **f64)
    covs = torch.stack([nm.random_spd(5, 3.0, generator=gen) for _ in range(3)])
    bm, bc = batched.moments(means, covs)
    x = torch.randn(7, 3, 5, generator=gen, **f64)
    y = batched(x)
    for i, net in enumerate(nets):
        m, c = net.moments(means[i], covs[i])
        torch.testing.assert_close(bm[i], m, rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(bc[i], c, rtol=1e-13, atol=1e-14)
        torch.testing.assert_close(y[:, i], net(x[:, i]), rtol=1e-14, atol=1e-14)


def test_float32_close_to_float64_and_dtype_device_follow(gen):
    net64 = _network(gen)
    mean = torch.randn(5, generator=gen, **f64)
    cov = nm.random_spd(5, 2.0, generator=gen)
    m64, c64 = net64.moments(mean, cov)
    net32 = net64.to(torch.float32)
    m32, c32 = net32.moments(mean.float(), cov.float())
    assert m32.dtype == c32.dtype == torch.float32 and m32.device == mean.device
    torch.testing.assert_close(m32.double(), m64, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(c32.double(), c64, rtol=1e-3, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(gen):
    net = _network(gen)
    mean = torch.randn(5, generator=gen, **f64)
    cov = nm.random_spd(5, 2.0, generator=gen)
    m_cpu, c_cpu = net.moments(mean, cov)
    m_gpu, c_gpu = net.to("cuda").moments(mean.cuda(), cov.cuda())
    assert m_gpu.device.type == "cuda"
    torch.testing.assert_close(m_gpu.cpu(), m_cpu, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c_gpu.cpu(), c_cpu, rtol=1e-12, atol=1e-12)


def test_gradcheck_through_network_moments(gen):
    net = _network(gen, n=3, m=5, p=2)
    mean = torch.randn(3, generator=gen, **f64).requires_grad_()
    factor = torch.randn(3, 3, generator=gen, **f64).requires_grad_()

    def fn(mu, f):
        m, c = net.moments(mu, f @ f.T)
        return m, c

    assert torch.autograd.gradcheck(fn, (mean, factor))


def test_bad_inputs(gen):
    net = _network(gen)
    mean, cov = torch.zeros(5, **f64), torch.eye(5, **f64)
    with pytest.raises(ValueError, match="c1 has 3 entries but A has 12 rows"):
        nm.AffineReLUAffine(net.A, torch.zeros(3, **f64), net.B, net.c2)
    with pytest.raises(ValueError, match="B has 4 columns"):
        nm.AffineReLUAffine(net.A, net.c1, torch.zeros(3, 4, **f64), net.c2)
    with pytest.raises(ValueError, match="weight has 5 columns but mean has 4"):
        nm.affine_moments(torch.zeros(4, **f64), torch.eye(4, **f64), net.A, net.c1)
    with pytest.raises(ValueError, match="output must be"):
        net.moments(mean, cov, output="diag")
    with pytest.raises(ValueError, match="method must be one of"):
        net.moments(mean, cov, method="nm18")
    with pytest.raises(TypeError, match="dtype"):
        net.moments(mean.float(), cov.float())
    with pytest.raises(ValueError, match="A contains NaN"):
        nm.AffineReLUAffine(net.A * float("nan"), net.c1, net.B, net.c2)


@pytest.mark.parametrize("bad, word", [(float("nan"), "NaN"), (float("inf"), "inf"), (float("-inf"), "inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_check_finite_finds_one_bad_entry_anywhere(bad, word, dtype):
    from netmoments._validation import check_finite

    for index in (0, 777, -1):
        value = torch.randn(3, 1000, dtype=dtype)
        value.view(-1)[index] = bad
        with pytest.raises(ValueError, match=f"x contains {word}"):
            check_finite("x", value)
    check_finite("x", torch.randn(3, 1000, dtype=dtype))
    check_finite("x", torch.empty(0, dtype=dtype))
    check_finite("x", torch.tensor([float("inf")], dtype=dtype), allow_inf=True)
