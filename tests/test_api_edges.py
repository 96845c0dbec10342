"""Edges of the numerical API: unsupported dtypes, zero hidden units, empty batches, points that require grad."""
import warnings

import pytest
import torch
from torch import nn

import netmoments as nm
from netmoments.gaussian import covariance_sqrt
from netmoments.relu import RELU_COVARIANCE_METHODS
from netmoments.linearize import TwoStageLinearization, affine_linearize, two_stage_linearize
from netmoments.special import (
    bivariate_normal_cdf,
    bivariate_normal_cdf_series,
    bivariate_normal_pdf,
    normal_cdf,
    normal_pdf,
    series_integral,
)

f64 = dict(dtype=torch.float64)
HALF = [torch.float16, torch.bfloat16]


def small_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2)).double()


# ---------------------------------------------------------------- float16 / bfloat16
def _public_calls(dtype):
    """(argument the error must name, call) for every public entry point that takes tensors."""
    def x(*shape):
        return torch.full(shape, 0.5, dtype=dtype)

    eye = torch.eye(2, dtype=dtype)
    g = nm.AffineReLUAffine(torch.ones(3, 2, **f64), torch.zeros(3, **f64), torch.ones(1, 3, **f64), torch.zeros(1, **f64))
    net = small_mlp()
    return [
        ("mean", lambda: nm.relu_moments(x(3), x(3))),
        ("mean_i", lambda: nm.relu_cross_moment(x(), x(), x(), x(), x())),
        ("mean", lambda: nm.relu_covariance(x(2), eye)),
        ("rho", lambda: nm.zero_mean_relu_kernel(x(3))),
        ("h", lambda: bivariate_normal_cdf(x(3), x(3), x(3))),
        ("h", lambda: bivariate_normal_pdf(x(3), x(3), x(3))),
        ("h", lambda: bivariate_normal_cdf_series(x(3), x(3), x(3))),
        ("a", lambda: series_integral(x(3), x(3), x(3), terms=5)),
        ("x", lambda: normal_cdf(x(3))),
        ("x", lambda: normal_pdf(x(3))),
        ("A", lambda: nm.AffineReLUAffine(x(3, 2), x(3), x(1, 3), x(1))),
        ("mean", lambda: g.moments(x(2), eye)),
        ("mean", lambda: nm.affine_moments(x(2), eye, x(3, 2), x(3))),
        ("mean", lambda: nm.sample_gaussian(x(2), eye, 10)),
        ("dtype", lambda: nm.random_spd(3, 3.0, dtype=dtype)),
        ("point", lambda: two_stage_linearize(net, x(2, 4))),
        ("point", lambda: affine_linearize(net, x(4))),
        ("points", lambda: TwoStageLinearization(net, x(2, 4))),
        ("dtype", lambda: two_stage_linearize(net, torch.zeros(2, 4, **f64), dtype=dtype)),
    ]


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_precision_is_rejected_everywhere_with_the_argument_named(dtype):
    # relu_moments, relu_cross_moment and Phi2 used to compute silently in half precision; relu_covariance and
    # the linearization failed deep inside torch ("cholesky_cpu" not implemented for 'Half')
    calls = _public_calls(dtype)
    for name, call in calls:
        with pytest.raises(TypeError, match=rf"^{name} has dtype {dtype}; only float32 and float64"):
            call()
    assert len(calls) == 19


def test_half_point_may_be_widened_by_an_explicit_dtype():
    net = small_mlp()
    point = torch.tensor([[0.5, -0.25, 1.0, 0.125]], dtype=torch.float16)  # exact in float16
    widened = two_stage_linearize(net, point, dtype=torch.float64)
    reference = two_stage_linearize(net, point.double())
    for got, want in zip((widened.A, widened.c1, widened.B, widened.c2), (reference.A, reference.c1, reference.B, reference.c2)):
        assert torch.equal(got, want)


# ---------------------------------------------------------------- zero hidden units (m = 0)
@pytest.mark.parametrize("method", RELU_COVARIANCE_METHODS)
@pytest.mark.parametrize("batch", [(), (3,)])
def test_relu_covariance_of_zero_units_is_empty(method, batch):
    # used to raise IndexError (amax over an empty dimension in the covariance check)
    mean = torch.zeros(*batch, 0, **f64)
    cov = torch.zeros(*batch, 0, 0, **f64)
    out = nm.relu_covariance(mean, cov, method=method)
    assert out.shape == (*batch, 0, 0) and out.dtype == torch.float64
    e, v = nm.relu_moments(mean, mean)
    assert e.shape == v.shape == (*batch, 0)


def test_network_with_zero_hidden_units_is_its_output_bias():
    # g(x) = B relu(A x + c1) + c2 with m = 0 is the constant c2: mean c2, covariance exactly 0
    c2 = torch.tensor([1.5, -2.0], **f64)
    net = nm.AffineReLUAffine(torch.zeros(0, 3, **f64), torch.zeros(0, **f64), torch.zeros(2, 0, **f64), c2)
    mean = torch.tensor([0.3, -0.1, 2.0], **f64, requires_grad=True)
    cov = torch.eye(3, **f64)
    for method in RELU_COVARIANCE_METHODS:
        out_mean, out_cov = net.moments(mean, cov, method=method)
        assert torch.equal(out_mean, c2) and torch.equal(out_cov, torch.zeros(2, 2, **f64))
        _, out_var = net.moments(mean, cov, method=method, output="var")
        assert torch.equal(out_var, torch.zeros(2, **f64))
    out_mean.sum().backward()
    assert torch.equal(mean.grad, torch.zeros(3, **f64))
    draws = nm.sample_gaussian(torch.zeros(0, **f64), torch.zeros(0, 0, **f64), 4)
    assert draws.shape == (4, 0)
    assert covariance_sqrt(torch.zeros(0, 0, **f64)).shape == (0, 0)


# ---------------------------------------------------------------- empty batches
def test_empty_batch_of_points_is_a_clear_error():
    # used to fail in a reshape ("cannot reshape tensor of 0 elements ... ambiguous")
    net = small_mlp()
    images = torch.zeros(5, 4, **f64)
    with pytest.raises(ValueError, match=r"^point is an empty batch \(shape \(0, 4\)\)"):
        two_stage_linearize(net, images[:0])
    with pytest.raises(ValueError, match=r"^point is an empty batch"):
        affine_linearize(net, images[:0])
    with pytest.raises(ValueError, match=r"^points is an empty batch"):
        TwoStageLinearization(net, images[:0])


# ---------------------------------------------------------------- points that require grad
def test_point_that_requires_grad_is_a_documented_constant():
    net = small_mlp()
    point = torch.tensor([[0.3, -0.2, 0.5, 0.1], [1.0, 0.4, -0.7, 0.2]], **f64)
    plain = two_stage_linearize(net, point)
    with pytest.warns(UserWarning, match="point requires grad, but the linearization treats the point as a constant"):
        tracked = two_stage_linearize(net, point.clone().requires_grad_())
    for got, want in zip((tracked.A, tracked.c1, tracked.B, tracked.c2), (plain.A, plain.c1, plain.B, plain.c2)):
        assert torch.equal(got, want) and not got.requires_grad
    with pytest.warns(UserWarning, match="point requires grad"):
        affine_linearize(net, point[0].clone().requires_grad_())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():  # no graph is expected here, so nothing to warn about
            two_stage_linearize(net, point.clone().requires_grad_())
    # why a constant is right: inside the point's linear region every factor stays put (derivative 0)
    nudged = two_stage_linearize(net, point + 1e-7)
    assert torch.equal(nudged.A, plain.A) and torch.equal(nudged.B, plain.B)
    torch.testing.assert_close(nudged.c1, plain.c1, rtol=0, atol=1e-14)
    torch.testing.assert_close(nudged.c2, plain.c2, rtol=0, atol=1e-14)


@pytest.mark.parametrize("bad_shape", [(0, 1, 28, 28), (3, 1, 28, 28), (2, 784), (2, 1, 14, 14)])
def test_update_with_a_batch_of_another_size_or_shape_names_points(bad_shape):
    """An update to an empty, larger, flattened or smaller batch: a clear error, not a reshape error from torch."""
    import netmoments as nm

    lenet = nm.models.load_lenet()
    digits, _ = nm.data.load_mnist("test")
    lin = nm.linearize.TwoStageLinearization(lenet, digits[:2])
    if bad_shape == (2, 784):
        lin.update(digits[:2].reshape(2, 784))  # the same points flattened: legal, same size and batch
        return
    with pytest.raises(ValueError, match="points must be a batch of the same size and shape"):
        lin.update(torch.zeros(bad_shape))
