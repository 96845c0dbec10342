"""Chapter 6's pixel noise-sensitivity maps: the pure functions behind the widget, and the widget's frames."""
import pytest
import torch

import netmoments as nm
from netmoments.linearize import pixel_noise_sensitivity, prune_inactive_units, two_stage_linearize
from netmoments.models import load_lenet
from netmoments.widgets import noise_sensitivity_summary, noise_sensitivity_widget
from widget_checks import check_frames


@pytest.fixture(scope="module")
def lenet_and_digit():
    images, labels = nm.data.load_mnist("test")
    model = load_lenet()
    return model, images[:2], labels[:2], two_stage_linearize(model, images[0], dtype=torch.float64)


def test_attribution_is_exact_for_an_always_on_layer(gen):
    """All hidden units on for every plausible input: g is affine, Var[g_k] = sum_i w_ki^2 v_i and the shares
    are exactly w_ki^2 v_i (Euler's identity)."""
    n, m, p = 7, 5, 3
    A = torch.randn(m, n, generator=gen, dtype=torch.float64)
    c1 = torch.full((m,), 1e3, dtype=torch.float64)
    B = torch.randn(p, m, generator=gen, dtype=torch.float64)
    net = nm.AffineReLUAffine(A, c1, B, torch.zeros(p, dtype=torch.float64))
    mean = torch.randn(n, generator=gen, dtype=torch.float64)
    v = torch.rand(n, generator=gen, dtype=torch.float64)
    shares, var = pixel_noise_sensitivity(net, mean, v)
    w = B @ A
    assert torch.allclose(shares, w**2 * v, rtol=1e-10, atol=1e-14)
    assert torch.allclose(shares.sum(1), var, rtol=1e-10)


def test_attribution_sums_to_the_directional_derivative(lenet_and_digit):
    """sum_i v_i dVar/dv_i = d/dt Var(t v) at t = 1: autograd through the closed form against central differences
    (the pixel noise here puts some hidden units far beyond |mean/std| = 40, where clipping must not bend
    the gradient)."""
    _, images, _, tsl = lenet_and_digit
    x = images[0].reshape(-1).double()
    for sigma in (0.01, 0.1):
        v = torch.full((784,), sigma**2, dtype=torch.float64)
        shares, var = pixel_noise_sensitivity(tsl, x, v, logits=[1, 7])
        pruned = prune_inactive_units(tsl, x, torch.diag(v))

        def total(t):
            return pruned.moments(x, torch.diag(t * v), output="var")[1]

        step = 1e-4
        derivative = (total(1 + step) - total(1 - step)) / (2 * step)
        assert torch.allclose(shares.sum(1), derivative[[1, 7]], rtol=1e-5)
        assert torch.allclose(var, total(1.0), rtol=1e-12)


def test_summary_matches_network_and_first_order_limit(lenet_and_digit):
    model, images, labels, tsl = lenet_and_digit
    s = noise_sensitivity_summary(model, images[0], logit=3, sigma=0.01, linearization=tsl)
    assert s["attribution"].shape == (28, 28) and s["linear"].shape == (28, 28)
    with torch.no_grad():
        assert s["prediction"] == int(model(images[:1]).argmax())
        assert torch.allclose(s["logits"].float(), model(images[:1])[0], atol=1e-4)
    # for small noise the closed form is its first-order (linear-response) value
    assert s["linear_variance"] == pytest.approx(s["variance"], rel=2e-2)
    assert (s["linear"] >= 0).all()
    with pytest.raises(ValueError, match="logits"):
        pixel_noise_sensitivity(tsl, images[0].reshape(-1).double(), 0.01, logits=[10])
    with pytest.raises(ValueError, match="unbatched"):
        batched = nm.AffineReLUAffine(tsl.A[None], tsl.c1[None], tsl.B[None], tsl.c2[None])
        pixel_noise_sensitivity(batched, images[0].reshape(-1).double(), 0.01)


def test_widget_frames_match_the_summary_at_their_grid_point(lenet_and_digit):
    """The widget batches all logits of a (digit, sigma) in one pass; each frame must equal the one-logit summary."""
    model, images, labels, tsl = lenet_and_digit
    w = noise_sensitivity_widget(model, images, labels, n_digits=1, logits=(3, 7), sigmas=(0.01, 0.1))
    points = check_frames(w, {"digit": (0,), "logit": (3, 7), "sigma": (0.01, 0.1)}, ["digit", "logit", "σ (noise)"])
    for digit, logit, sigma in points:
        expected = noise_sensitivity_summary(model, images[digit], logit, sigma, linearization=tsl)
        got = w.results[digit, logit, sigma]
        assert torch.allclose(got["attribution"], expected["attribution"], rtol=1e-9, atol=1e-15)
        assert torch.allclose(got["linear"], expected["linear"], rtol=1e-12, atol=0)
        assert got["variance"] == pytest.approx(expected["variance"], rel=1e-10)
        assert got["prediction"] == expected["prediction"]
    assert [label for label, _ in w.sliders["digit"].options] == [f"#0: a {int(labels[0])}"]
