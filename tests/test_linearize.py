"""Two-stage and affine linearization of piecewise-linear networks (spec section 6)."""
import pytest
import torch
from torch import nn

import netmoments as nm
from netmoments.linearize import (
    activation_pattern,
    affine_linearize,
    batched_jacobian,
    prune_inactive_units,
    split_at_relu,
    two_stage_linearize,
)
from netmoments.models import load_lenet, load_mlp


def small_convnet(seed=0):
    """A LeNet-shaped float64 network on 1x8x8 images: every supported layer kind, three ReLUs."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, padding=1),
        nn.AvgPool2d(2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Identity(),
        nn.Linear(16, 12),
        nn.ReLU(),
        nn.Linear(12, 5),
    ).double().eval()


def same_pattern(net, x, y, upto=None):
    pa, pb = activation_pattern(net[:upto] if upto else net, x), activation_pattern(net[:upto] if upto else net, y)
    return all(torch.equal(a, b) for a, b in zip(pa, pb))


@pytest.fixture(scope="module")
def lenet64():
    return load_lenet().double()


@pytest.fixture(scope="module")
def digits():
    return nm.data.load_mnist("test")[0][:3].double()


@pytest.mark.parametrize("relu_index", [0, 1, 2, -1, -2])
def test_tsl_exact_at_point_and_in_its_linear_region(relu_index, gen):
    net = small_convnet()
    x = torch.rand(1, 8, 8, generator=gen, dtype=torch.float64)
    tsl = two_stage_linearize(net, x, relu_index)
    assert tsl.A.shape[-1] == 64 and tsl.B.shape[-2] == 5
    assert torch.allclose(tsl(x.reshape(-1)), net(x[None])[0], rtol=0, atol=1e-12)
    checked = 0
    for _ in range(20):
        y = x + 1e-3 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
        if not same_pattern(net, x[None], y[None]):
            continue
        checked += 1
        assert torch.allclose(tsl(y.reshape(-1)), net(y[None])[0], rtol=0, atol=1e-12)
    assert checked >= 10


def test_tsl_stays_exact_when_only_the_kept_relu_switches(gen):
    """The kept (last) ReLU may change its pattern freely: TSL is still exact there, affine linearization is not."""
    net = small_convnet(seed=1)
    x = torch.rand(1, 8, 8, generator=gen, dtype=torch.float64).reshape(-1)
    before = split_at_relu(net)[0]
    with torch.no_grad():  # put x close to the hinges of the kept ReLU's first three units
        pre = before(x.reshape(1, 1, 8, 8))[0]
        net[8].bias[:3] -= pre[:3] - torch.tensor([1e-6, -1e-6, 2e-6], dtype=torch.float64)
    tsl = two_stage_linearize(net, x)
    W, b = affine_linearize(net, x)
    pre = tsl.A @ x + tsl.c1
    for i in range(3):  # cross unit i's hinge along its normal a_i
        y = x - 2 * pre[i] / tsl.A[i].norm() ** 2 * tsl.A[i]
        image_x, image_y = x.reshape(1, 1, 8, 8), y.reshape(1, 1, 8, 8)
        assert same_pattern(before, image_x, image_y)
        assert not same_pattern(net, image_x, image_y)  # the kept ReLU did switch
        truth = net(image_y)[0]
        assert torch.allclose(tsl(y), truth, rtol=0, atol=1e-12)
        assert (W @ y + b - truth).abs().max() > 1e-9


@pytest.mark.numerics
def test_jacobian_matches_autograd_reference(gen):
    net = small_convnet()
    x = torch.rand(1, 8, 8, generator=gen, dtype=torch.float64)
    before, after = split_at_relu(net, 1)
    ref_A = torch.autograd.functional.jacobian(lambda v: before(v.reshape(1, 1, 8, 8)).reshape(-1), x.reshape(-1))
    tsl = two_stage_linearize(net, x, relu_index=1)
    assert torch.allclose(tsl.A, ref_A, rtol=0, atol=1e-13)
    assert torch.allclose(tsl.c1, before(x[None]).reshape(-1) - ref_A @ x.reshape(-1), rtol=0, atol=1e-13)
    h = torch.relu(before(x[None]))
    ref_B = torch.autograd.functional.jacobian(lambda v: after(v.reshape(h.shape)).reshape(-1), h.reshape(-1))
    assert torch.allclose(tsl.B, ref_B, rtol=0, atol=1e-13)


@pytest.mark.numerics
def test_batched_equals_per_item_and_modes_agree(gen):
    net = small_convnet()
    xs = torch.rand(5, 1, 8, 8, generator=gen, dtype=torch.float64)
    batched = two_stage_linearize(net, xs, relu_index=0, chunk_size=2)
    assert batched.A.shape == (5, 48, 64) and batched.c2.shape == (5, 5)
    for i in range(5):
        single = two_stage_linearize(net, xs[i], relu_index=0, mode="rev")
        for name in ("A", "c1", "B", "c2"):
            assert torch.allclose(getattr(batched, name)[i], getattr(single, name), rtol=0, atol=1e-13)
    W, b = affine_linearize(net, xs.reshape(5, -1), mode="fwd")
    for i in range(5):
        Wi, bi = affine_linearize(net, xs[i].reshape(-1), mode="rev")
        assert torch.allclose(W[i], Wi, rtol=0, atol=1e-13) and torch.allclose(b[i], bi, rtol=0, atol=1e-13)


def test_lenet_tsl_at_real_digits(lenet64, digits):
    tsl = two_stage_linearize(lenet64, digits)
    assert tsl.A.shape == (3, 1024, 784) and tsl.B.shape == (3, 10, 1024)
    assert tsl.A.dtype == torch.float64
    flat = digits.reshape(3, -1)
    assert torch.allclose(tsl(flat), lenet64(digits), rtol=0, atol=1e-11)
    # stage 2 of the last ReLU is fc2 itself
    assert torch.equal(tsl.B[1], lenet64[9].weight)
    assert torch.allclose(tsl.c2[2], lenet64[9].bias, rtol=0, atol=1e-13)
    # a flat (784,) point is read as a 1x28x28 image
    one = two_stage_linearize(lenet64, flat[0])
    assert torch.allclose(one.A, tsl.A[0], rtol=0, atol=1e-13) and torch.allclose(one.c1, tsl.c1[0], atol=1e-12)


def test_lenet_tsl_exact_for_tiny_perturbations(lenet64, digits, gen):
    # A digit's blank background makes max-pool windows tie exactly (all four inputs equal the conv bias), so the
    # digit itself sits on a region boundary; a little noise moves it into the interior of a linear region.
    x = digits[0] + 0.01 * torch.rand(digits[0].shape, generator=gen, dtype=torch.float64)
    tsl = two_stage_linearize(lenet64, x)
    before = split_at_relu(lenet64)[0]
    for _ in range(3):
        y = x + 1e-7 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
        assert same_pattern(before, x[None], y[None])
        assert torch.allclose(tsl(y.reshape(-1)), lenet64(y[None])[0], rtol=0, atol=1e-11)


def test_blank_background_puts_digits_on_maxpool_ties(lenet64, digits):
    """Documented caveat: at a raw digit some max-pool windows tie exactly, so the linear region is not unique."""
    conv = lenet64[0](digits[:1])
    windows = conv.unfold(2, 2, 2).unfold(3, 2, 2).reshape(*conv.shape[:2], 14, 14, 4)
    top2 = windows.topk(2, dim=-1).values
    assert (top2[..., 0] == top2[..., 1]).any()


def test_mlp_tsl_is_the_network_itself(digits):
    net = load_mlp().double()
    tsl = two_stage_linearize(net, digits[:2])
    assert torch.allclose(tsl.A, net[1].weight.expand(2, -1, -1), rtol=0, atol=1e-15)
    assert torch.allclose(tsl.c1, net[1].bias.expand(2, -1), rtol=0, atol=1e-13)
    assert torch.allclose(tsl.B, net[3].weight.expand(2, -1, -1), rtol=0, atol=1e-15)
    assert torch.allclose(tsl.c2, net[3].bias.expand(2, -1), rtol=0, atol=1e-13)


def test_dtype_argument_leaves_model_alone(digits):
    net = load_mlp()
    tsl = two_stage_linearize(net, digits[0].float(), dtype=torch.float64)
    assert tsl.A.dtype == torch.float64
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_errors(gen):
    net = small_convnet()
    x = torch.rand(1, 8, 8, generator=gen, dtype=torch.float64)
    no_relu = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).double()
    with pytest.raises(ValueError, match="no nn.ReLU"):
        two_stage_linearize(no_relu, x)
    with pytest.raises(ValueError, match="relu_index"):
        two_stage_linearize(net, x, relu_index=3)
    with pytest.raises(ValueError, match="relu_index"):
        two_stage_linearize(net, x, relu_index=-4)
    with pytest.raises(TypeError, match="relu_index"):
        two_stage_linearize(net, x, relu_index=1.0)
    with pytest.raises(ValueError, match="point"):
        two_stage_linearize(net, torch.rand(2, 3, 1, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="square image"):
        two_stage_linearize(net, torch.rand(63, dtype=torch.float64))
    with pytest.raises(ValueError, match="point"):
        two_stage_linearize(net, torch.rand(8, 8, dtype=torch.float64), input_shape=(1, 8, 8))
    with pytest.raises(TypeError, match="point"):
        two_stage_linearize(net, [0.0] * 64)
    with pytest.raises(TypeError, match="point"):
        two_stage_linearize(net, torch.zeros(1, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="NaN"):
        two_stage_linearize(net, torch.full((1, 8, 8), float("nan"), dtype=torch.float64))
    with pytest.raises(TypeError, match="Sigmoid"):
        two_stage_linearize(nn.Sequential(nn.Flatten(), nn.Linear(64, 3), nn.Sigmoid(), nn.ReLU()), x)
    with pytest.raises(TypeError, match="nn.Sequential"):
        two_stage_linearize(nn.Linear(64, 3), x)
    with pytest.raises(ValueError, match="mode"):
        batched_jacobian(lambda v: v, torch.zeros(2, 3), mode="sideways")


def test_prune_inactive_units_keeps_exact_moments(gen):
    n, m, p = 6, 40, 3
    A = torch.randn(2, m, n, generator=gen, dtype=torch.float64)
    c1 = torch.randn(2, m, generator=gen, dtype=torch.float64)
    c1[:, ::2] -= 200.0  # half the units are off for every plausible input
    B = torch.randn(2, p, m, generator=gen, dtype=torch.float64)
    c2 = torch.randn(2, p, generator=gen, dtype=torch.float64)
    net = nm.AffineReLUAffine(A, c1, B, c2)
    mean = torch.randn(2, n, generator=gen, dtype=torch.float64)
    cov = torch.stack([nm.random_spd(n, 0.5, generator=gen) for _ in range(2)])
    pruned = prune_inactive_units(net, mean, cov)
    assert pruned.A.shape[-2] == m // 2
    full_mean, full_cov = net.moments(mean, cov)
    mean2, cov2 = pruned.moments(mean, cov)
    assert torch.allclose(mean2, full_mean, rtol=1e-12, atol=1e-12)
    assert torch.allclose(cov2, full_cov, rtol=1e-12, atol=1e-12)
    # a unit that is on for some inputs is never dropped: keep everything when nothing is dead
    net_alive = nm.AffineReLUAffine(A, c1.abs(), B, c2)
    assert prune_inactive_units(net_alive, mean, cov).A.shape[-2] >= (c1.abs() > 0).sum(-1).min()


# --- structured (locality) Jacobians and the matrix-free linearization -----------------------------------------

def odd_convnet(seed=0):
    """Two input channels, a non-square image, strides, paddings, a 3x3/2 padded max-pool and a rectangular kernel."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(3, 4, (3, 2), padding=(1, 0)),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(4, 7),
        nn.ReLU(),
        nn.Linear(7, 3),
    ).double().eval()


def _assert_linearizations_agree(net, x, relu_index, atol=1e-12):
    fast = two_stage_linearize(net, x, relu_index, jacobian="structured")
    slow = two_stage_linearize(net, x, relu_index, jacobian="autograd")
    for name in ("A", "c1", "B", "c2"):
        a, b = getattr(fast, name), getattr(slow, name)
        assert not a.requires_grad, f"{name} is tied to the model's parameters"
        assert a.shape == b.shape, name
        assert torch.allclose(a, b, rtol=0, atol=atol), (name, float((a - b).abs().max()))


@pytest.mark.parametrize("relu_index", [0, 1, 2])
def test_structured_equals_autograd_on_lenet(lenet64, digits, relu_index):
    _assert_linearizations_agree(lenet64, digits[:2], relu_index)


@pytest.mark.parametrize("relu_index", [0, 1, 2])
@pytest.mark.numerics
def test_structured_equals_autograd_on_random_cnns(relu_index, gen):
    _assert_linearizations_agree(small_convnet(seed=3), torch.rand(4, 1, 8, 8, generator=gen, dtype=torch.float64),
                                 relu_index)
    _assert_linearizations_agree(odd_convnet(), torch.randn(3, 2, 11, 9, generator=gen, dtype=torch.float64),
                                 relu_index, )


def test_structured_equals_autograd_on_the_mlp(digits):
    _assert_linearizations_agree(load_mlp().double(), digits, -1)


def test_structured_affine_linearization_matches_autograd(gen):
    net = odd_convnet(seed=2)
    x = torch.randn(2, 2, 11, 9, generator=gen, dtype=torch.float64)
    W, b = affine_linearize(net, x, jacobian="structured")
    W_ref, b_ref = affine_linearize(net, x, jacobian="autograd")
    assert torch.allclose(W, W_ref, rtol=0, atol=1e-12) and torch.allclose(b, b_ref, rtol=0, atol=1e-12)
    with torch.no_grad():
        assert torch.allclose((W @ x.reshape(2, -1, 1)).squeeze(-1) + b, net(x), rtol=0, atol=1e-12)


def test_unsupported_layers_fall_back_to_autograd(gen):
    net = nn.Sequential(nn.Conv2d(1, 2, 3, dilation=2, padding=2), nn.ReLU(), nn.Flatten(), nn.Linear(128, 3))
    net = net.double()
    x = torch.rand(1, 8, 8, generator=gen, dtype=torch.float64)
    auto = two_stage_linearize(net, x)
    ref = two_stage_linearize(net, x, jacobian="autograd")
    assert torch.allclose(auto.A, ref.A, rtol=0, atol=0)
    with pytest.raises(ValueError, match="structured"):
        two_stage_linearize(net, x, jacobian="structured")
    with pytest.raises(ValueError, match="jacobian"):
        two_stage_linearize(net, x, jacobian="fast")


@pytest.mark.numerics
def test_matrix_free_products_match_the_dense_matrix(gen):
    from netmoments.linearize import TwoStageLinearization

    net = odd_convnet(seed=1)
    x = torch.randn(3, 2, 11, 9, generator=gen, dtype=torch.float64)
    lin = TwoStageLinearization(net, x, relu_index=-1)
    A = two_stage_linearize(net, x, jacobian="autograd").A  # an independent reference
    n, m = A.shape[-1], A.shape[-2]
    v = torch.randn(3, 5, n, generator=gen, dtype=torch.float64)
    u = torch.randn(3, 4, m, generator=gen, dtype=torch.float64)
    assert torch.allclose(lin.matvec(v), v @ A.transpose(1, 2), rtol=0, atol=1e-12)
    assert torch.allclose(lin.matvec(v[:, 0]), (A @ v[:, 0, :, None])[..., 0], rtol=0, atol=1e-12)
    assert torch.allclose(lin.rmatvec(u), u @ A, rtol=0, atol=1e-12)
    assert torch.allclose(lin.rmatvec(u[:, 0]), (u[:, :1] @ A)[:, 0], rtol=0, atol=1e-12)
    idx = torch.tensor([0, 7, n - 1])
    assert torch.allclose(lin.columns(idx), A[:, :, idx], rtol=0, atol=1e-12)
    per_item = torch.stack([torch.randperm(n, generator=gen)[:4] for _ in range(3)])
    assert torch.allclose(lin.columns(per_item), torch.stack([A[i][:, per_item[i]] for i in range(3)]), atol=1e-12)
    w = torch.rand(3, m, generator=gen, dtype=torch.float64)
    assert torch.allclose(lin.weighted_output_map(w), lin.B @ (w.unsqueeze(-1) * A), rtol=0, atol=1e-12)
    assert torch.allclose(lin.A, A, rtol=0, atol=1e-12)
    with torch.no_grad():  # the linearization reproduces the network at its points
        assert torch.allclose(lin.network()(x.reshape(3, -1)), net(x), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="index"):
        lin.columns(torch.tensor([n]))
    with pytest.raises(TypeError, match="index"):
        lin.columns(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="v must have shape"):
        lin.matvec(torch.zeros(2, n, dtype=torch.float64))
    with pytest.raises(TypeError, match="float64"):
        lin.rmatvec(torch.zeros(3, m))
    with pytest.raises(ValueError, match="weights"):
        lin.weighted_output_map(torch.zeros(3, 2, m, dtype=torch.float64))


def test_update_recomputes_only_points_whose_region_changed(lenet64, digits, gen):
    from netmoments.linearize import TwoStageLinearization

    x = digits[:3] + 0.01 * torch.rand(digits[:3].shape, generator=gen, dtype=torch.float64)  # off max-pool ties
    lin = TwoStageLinearization(lenet64, x)
    A0 = lin.A
    moved = x.clone()
    moved[0] += 1e-9 * torch.randn(x[0].shape, generator=gen, dtype=torch.float64)  # stays in its region
    moved[1] = digits[0]  # a different digit: a different region
    moved[2] = digits[2]  # back onto the raw digit's max-pool ties: another region
    new, changed = lin.update(moved)
    assert changed.tolist() == [False, True, True]
    fresh = TwoStageLinearization(lenet64, moved)
    assert torch.equal(new.A[0], A0[0]) and torch.equal(new.c1[0], lin.c1[0])  # reused, not recomputed
    for name in ("A", "c1", "B", "c2", "pre"):
        assert torch.allclose(getattr(new, name), getattr(fresh, name), rtol=0, atol=1e-11), name
    assert torch.allclose(new.network()(moved.reshape(3, -1)), lenet64(moved), rtol=0, atol=1e-11)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threaded_structured_path_equals_one_thread(lenet64, digits, threads):
    # On a CPU the structured path spreads points, conv taps and fc1 positions over `threads` Python threads
    # (one torch thread each, as its docstring advises); only the order of the final sums may change, so results
    # agree to round-off. tests/conftest.py puts torch's thread count back after the test.
    torch.set_num_threads(1)
    serial = [two_stage_linearize(lenet64, digits[:3]), two_stage_linearize(lenet64, digits[0])]
    threaded = [two_stage_linearize(lenet64, digits[:3], threads=threads),
                two_stage_linearize(lenet64, digits[0], threads=threads)]
    for one, many in zip(serial, threaded):
        for name in ("A", "c1", "B", "c2"):
            a, b = getattr(one, name), getattr(many, name)
            assert a.shape == b.shape
            torch.testing.assert_close(b, a, rtol=0, atol=1e-12, msg=name)


def test_accumulate_sums_every_item_once_on_any_number_of_threads():
    from netmoments import linearize

    def add(buffer, item):
        buffer[item % 5] += item

    expected = torch.zeros(5, dtype=torch.float64)
    for item in range(23):
        expected[item % 5] += item
    for threads in (1, 2, 4):
        with linearize._worker_threads(threads):
            out = linearize._accumulate(lambda: torch.zeros(5, dtype=torch.float64), list(range(23)), add,
                                        torch.device("cpu"))
        assert torch.equal(out, expected), threads


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_structured_path_on_cuda_equals_autograd_and_the_cpu(lenet64, digits, gen):
    # On CUDA the structured path runs a whole batch in one pass (no Python threads): check it there.
    import copy

    from netmoments.linearize import TwoStageLinearization

    net, x = copy.deepcopy(lenet64).to("cuda"), digits.to("cuda")  # the module-scoped fixture stays on the CPU
    fast = two_stage_linearize(net, x, jacobian="structured")
    slow = two_stage_linearize(net, x, jacobian="autograd")
    cpu = two_stage_linearize(lenet64, digits, jacobian="structured")
    for name in ("A", "c1", "B", "c2"):
        a = getattr(fast, name)
        assert a.device.type == "cuda", name
        assert torch.allclose(a, getattr(slow, name), rtol=0, atol=1e-12), name
        assert torch.allclose(a.cpu(), getattr(cpu, name), rtol=0, atol=1e-12), name
    lin = TwoStageLinearization(net, x)
    u = torch.randn(3, 10, fast.A.shape[-2], generator=gen, dtype=torch.float64).to("cuda")
    assert torch.allclose(lin.rmatvec(u), u @ fast.A, rtol=0, atol=1e-12)
    assert torch.allclose(lin.columns(torch.tensor([0, 400, 783], device="cuda")),
                          fast.A[:, :, [0, 400, 783]], rtol=0, atol=1e-12)
