"""The split expected linearization (chapter 7's ties control) against a brute-force average of per-draw
Jacobians, taken by autograd through a copy of the network whose other kind of nonlinearity is frozen at x."""
import pytest
import torch
from torch import nn

from netmoments.linearize import TwoStageLinearization, split_expected_linearization


def tiny_net():
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 2 * 2, 6), nn.ReLU(), nn.Linear(6, 2),
    ).double()  # fmt: skip
    return net


def frozen_forward(net, x, z, average):
    """The layers before the last ReLU at ``z (C, H, W)``, with the kind not averaged frozen at its choice at ``x``,
    written out with plain torch ops (no code shared with the function under test)."""
    ref, out = x.unsqueeze(0), z.unsqueeze(0)
    for layer in list(net)[:8]:
        if isinstance(layer, nn.MaxPool2d):
            _, idx = nn.functional.max_pool2d(ref, 2, return_indices=True)
            ref = layer(ref)
            if average == "relu":  # keep x's choice: read z at the index x picked
                n, c, h, w = out.shape
                out = out.reshape(n, c, h * w).gather(-1, idx.reshape(n, c, -1)).reshape(idx.shape)
            else:
                out = layer(out)
        elif isinstance(layer, nn.ReLU):
            mask = (ref > 0).to(out.dtype)
            ref = layer(ref)
            out = out * mask if average == "pool" else layer(out)
        else:
            ref, out = layer(ref), layer(out)
    return out.reshape(-1)


@pytest.mark.parametrize("average", ["pool", "relu"])
def test_matches_the_brute_force_average(average):
    net = tiny_net()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 8, 8, generator=gen, dtype=torch.float64)
    x[:, :4, :] = 0.0  # a blank half: exact ties in the first pool, as on a digit's background
    half = 0.3 * torch.randn(5, 1, 8, 8, generator=gen, dtype=torch.float64)
    eps = torch.cat([half, -half])
    A, c1 = split_expected_linearization(net, x, eps, average)
    jacs, vals = [], []
    for e in eps:
        z = x + e
        jacs.append(torch.autograd.functional.jacobian(lambda t: frozen_forward(net, x, t, average), z)
                    .reshape(6, -1))  # fmt: skip
        vals.append(frozen_forward(net, x, z, average))
    A_ref = torch.stack(jacs).mean(0)
    c_ref = torch.stack(vals).mean(0) - A_ref @ x.reshape(-1)
    assert A.shape == (6, 64) and c1.shape == (6,)
    torch.testing.assert_close(A, A_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(c1, c_ref, rtol=1e-10, atol=1e-12)
    # the noise is large enough for the average to differ from the point's own linearization
    tsl = TwoStageLinearization(net, x.unsqueeze(0))
    assert (A - tsl.A[0]).abs().max() > 1e-3


@pytest.mark.parametrize("average", ["pool", "relu"])
def test_no_noise_gives_the_linearization_at_x(average):
    net = tiny_net()
    x = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    A, c1 = split_expected_linearization(net, x, torch.zeros(2, 64, dtype=torch.float64), average)
    tsl = TwoStageLinearization(net, x.unsqueeze(0))
    torch.testing.assert_close(A, tsl.A[0])
    torch.testing.assert_close(c1, tsl.c1[0])


def test_bad_arguments_are_named():
    net, x = tiny_net(), torch.zeros(1, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="average"):
        split_expected_linearization(net, x, torch.zeros(2, 64, dtype=torch.float64), "both")
    with pytest.raises(ValueError, match="eps"):
        split_expected_linearization(net, x, torch.zeros(2, 63, dtype=torch.float64), "pool")
    with pytest.raises(ValueError, match="x must"):
        split_expected_linearization(net, x.reshape(-1), torch.zeros(2, 64, dtype=torch.float64), "pool")
    with pytest.raises(TypeError, match="eps"):
        split_expected_linearization(net, x, [0.0], "pool")
