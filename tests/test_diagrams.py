"""netmoments.viz.diagrams: the conceptual diagrams of chapters 3, 5 and 6 draw the geometry they claim.

Each test recomputes the geometry independently (angles from the definition of the pair, the network by hand in
NumPy from its weights) and compares it with the artists of the figure, found by their ``gid``.
"""
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle, Wedge  # noqa: E402
from scipy import stats  # noqa: E402

import netmoments as nm  # noqa: E402
from netmoments import viz  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _by_gid(artists, gid):
    found = [a for a in artists if a.get_gid() == gid]
    assert len(found) == 1, f"expected one artist with gid {gid!r}, found {len(found)}"
    return found[0]


def _polygon_area(xy):
    x, y = np.asarray(xy).T
    return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


# chapter 3: the polar derivation


@pytest.mark.parametrize("rho", [-0.7, 0.0, 0.5, 0.9])
def test_the_wedge_is_where_both_units_are_on(rho):
    fig = viz.polar_derivation_diagram(rho=rho, theta=0.3)
    wedge = _by_gid(fig.axes[2].patches, "both-on wedge")
    assert isinstance(wedge, Wedge) and wedge.center == (0, 0)
    assert wedge.theta2 - wedge.theta1 == pytest.approx(math.degrees(math.pi - math.acos(rho)), abs=1e-9)
    # from the definition v = rho u + s w, not from arccos: inside the wedge both are positive, just outside not
    s = math.sqrt(1 - rho**2)
    on = lambda t: (math.cos(t) > 0) and (rho * math.cos(t) + s * math.sin(t) > 0)  # noqa: E731
    lo, hi = math.radians(wedge.theta1), math.radians(wedge.theta2)
    eps = 1e-6
    assert all(on(t) for t in np.linspace(lo + eps, hi - eps, 50))
    assert not on(lo - eps) and not on(hi + eps)
    quadrant = _by_gid(fig.axes[0].patches, "both-on quadrant")
    assert quadrant.get_xy() == (0, 0) and quadrant.get_width() > 3 and quadrant.get_height() > 3


def test_the_example_point_is_the_same_point_in_both_planes():
    rho, r, theta = 0.5, 2.0, 0.75
    fig = viz.polar_derivation_diagram(rho=rho, r=r, theta=theta)
    (uv,) = [line.get_xydata()[0] for line in fig.axes[0].lines if line.get_marker() == "o"]
    (uw,) = [line.get_xydata()[0] for line in fig.axes[2].lines if line.get_marker() == "o"]
    assert uw == pytest.approx([r * math.cos(theta), r * math.sin(theta)], abs=1e-12)
    s = math.sqrt(1 - rho**2)
    assert uv == pytest.approx([uw[0], rho * uw[0] + s * uw[1]], abs=1e-12)  # v = rho u + s w


@pytest.mark.parametrize("kwargs, error", [({"rho": 1.0}, ValueError), ({"rho": "0.5"}, TypeError),
                                           ({"r": -1.0}, ValueError), ({"theta": float("nan")}, ValueError)])
def test_the_polar_diagram_rejects_bad_arguments(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        viz.polar_derivation_diagram(**kwargs)


# chapter 5: the quadrant and the strip


@pytest.mark.parametrize("h, k, rho, dh", [(0.4, 0.7, 0.5, 0.3), (-1.0, 0.2, -0.6, 0.1)])
def test_the_quadrant_has_its_corner_at_h_k_and_the_strip_its_derivative(h, k, rho, dh):
    fig = viz.phi2_quadrant_diagram(h=h, k=k, rho=rho, dh=dh)
    plane, top = fig.axes
    quadrant = _by_gid(plane.patches, "quadrant")
    x0, y0 = quadrant.get_xy()
    assert (x0 + quadrant.get_width(), y0 + quadrant.get_height()) == pytest.approx((h, k), abs=1e-12)
    # it runs off the picture to the lower left: the quadrant is unbounded there
    assert x0 < plane.get_xlim()[0] and y0 < plane.get_ylim()[0]
    strip = _by_gid(plane.patches, "strip")
    assert isinstance(strip, Rectangle)
    assert strip.get_x() == pytest.approx(h) and strip.get_width() == pytest.approx(dh)
    assert strip.get_y() + strip.get_height() == pytest.approx(k)
    # The shaded conditional density and the shaded base of the strip are the two factors of the derivative,
    # which is recomputed here by central differences of the package's Phi2.
    s = math.sqrt(1 - rho**2)
    scale = 1.1 * s * math.sqrt(2 * math.pi)  # the diagram scales the conditional density to a peak of 1.1
    conditional = _polygon_area(_by_gid(plane.collections, "conditional below k").get_paths()[0].vertices) / scale
    assert conditional == pytest.approx(stats.norm.cdf((k - rho * h) / s), abs=1e-3)
    base = _polygon_area(_by_gid(top.collections, "strip base").get_paths()[0].vertices)
    assert base == pytest.approx(stats.norm.cdf(h + dh) - stats.norm.cdf(h), rel=1e-3)
    eps = 1e-5
    f64 = dict(dtype=torch.float64)
    phi2 = lambda hh: nm.bivariate_normal_cdf(*(torch.tensor(v, **f64) for v in (hh, k, rho))).item()  # noqa: E731
    derivative = (phi2(h + eps) - phi2(h - eps)) / (2 * eps)
    assert stats.norm.pdf(h) * conditional == pytest.approx(derivative, rel=1e-2)


@pytest.mark.parametrize("kwargs, error", [({"h": 3.0}, ValueError), ({"k": None}, TypeError),
                                           ({"rho": -1.0}, ValueError), ({"dh": 0.0}, ValueError)])
def test_the_quadrant_diagram_rejects_bad_arguments(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        viz.phi2_quadrant_diagram(**kwargs)


# chapter 6: linear regions, the Gaussian and the linearizations at p


def _weights():
    net = viz.diagram_network()
    return [(layer.weight.detach().numpy(), layer.bias.detach().numpy()) for layer in net if hasattr(layer, "weight")]


def _by_hand(x):
    """The network, its two pre-activation layers and the patterns, in NumPy."""
    (w1, b1), (w2, b2), (w3, b3) = _weights()
    z1 = x @ w1.T + b1
    z2 = np.maximum(z1, 0) @ w2.T + b2
    return np.maximum(z2, 0) @ w3.T + b3, z1, z2


def test_each_region_has_one_colour_and_each_colour_one_activation_pattern():
    fig = viz.linear_regions_diagram(resolution=201)
    image = _by_gid(fig.axes[0].images, "regions")
    ids = np.asarray(image.get_array())
    x0, x1, y0, y1 = image.get_extent()
    xs, ys = np.linspace(x0, x1, ids.shape[1]), np.linspace(y0, y1, ids.shape[0])
    grid = np.stack(np.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
    _, z1, z2 = _by_hand(grid)
    # a grid point on a boundary (a pre-activation 0 up to round-off) belongs to either side
    clear = np.abs(np.concatenate([z1, z2], 1)).min(1) > 1e-9
    ids = ids.reshape(-1)[clear]
    patterns = np.concatenate([z1 > 0, z2 > 0], 1)[clear]
    n_patterns = len(np.unique(patterns, axis=0))
    assert len(np.unique(ids)) == n_patterns
    # the same partition, not only the same count: (colour, pattern) pairs are as many as either
    pairs = np.concatenate([ids[:, None], patterns], 1)
    assert len(np.unique(pairs, axis=0)) == n_patterns
    assert n_patterns > 12  # the hand-set weights make a picture with many regions


def test_the_ellipses_and_the_point_are_the_gaussians():
    point, cov = np.array([-0.35, -1.1]), np.array([[0.12, 0.04], [0.04, 0.08]])
    fig = viz.linear_regions_diagram(point=tuple(point), cov=cov.tolist(), resolution=101)
    ax = fig.axes[0]
    assert _by_gid(ax.lines, "p").get_xydata()[0] == pytest.approx(point)
    for n_sd in (1, 2):
        d = _by_gid(ax.lines, f"{n_sd} sd").get_xydata() - point
        mahalanobis = np.sqrt(np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d))
        assert mahalanobis == pytest.approx(np.full(len(d), n_sd), abs=1e-9)


def test_the_slice_shows_the_network_its_tangent_and_its_tsl_exact_where_the_chapter_says():
    point = np.array([-0.35, -1.1])
    fig = viz.linear_regions_diagram(point=tuple(point), resolution=201)
    ax = fig.axes[1]
    x = _by_gid(ax.lines, "network").get_xdata()
    line = np.stack([x, np.full_like(x, point[1])], 1)
    f, z1, z2 = _by_hand(line)
    (w1, b1), (w2, b2), (w3, b3) = _weights()
    _, z1p, z2p = _by_hand(point[None])
    m1, m2 = (z1p[0] > 0).astype(float), (z2p[0] > 0).astype(float)
    # stage 1: everything before the kept (last) ReLU at p; stage 2 is the last layer itself
    a = w2 @ np.diag(m1) @ w1
    c1 = (np.maximum(z1p, 0) @ w2.T + b2)[0] - a @ point
    tsl = np.maximum(line @ a.T + c1, 0) @ w3.T + b3
    jac = w3 @ np.diag(m2) @ a  # the whole network's Jacobian at p
    tangent = line @ jac.T + _by_hand(point[None])[0][0] - jac @ point
    assert _by_gid(ax.lines, "network").get_ydata() == pytest.approx(f[:, 0], abs=1e-12)
    assert _by_gid(ax.lines, "tsl").get_ydata() == pytest.approx(tsl[:, 0], abs=1e-12)
    assert _by_gid(ax.lines, "tangent").get_ydata() == pytest.approx(tangent[:, 0], abs=1e-12)

    def span(gid):
        rect = _by_gid(ax.patches, gid)
        return rect.get_x(), rect.get_x() + rect.get_width()

    same_first = np.all((z1 > 0) == (m1 > 0), 1)  # the layers before the kept ReLU as at p
    same_all = same_first & np.all((z2 > 0) == (m2 > 0), 1)  # every layer as at p
    for gid, mask in (("tsl exact span", same_first), ("affine exact span", same_all)):
        lo, hi = span(gid)
        assert (lo, hi) == pytest.approx((x[mask].min(), x[mask].max()))
        inside = (x >= lo) & (x <= hi)
        assert np.array_equal(inside, mask), f"{gid}: p's region meets the line in one interval"
    # on its span each linearization is the network; the TSL's span is the larger one (it lets the last ReLU switch)
    assert np.abs(tsl - f)[same_first].max() < 1e-12
    assert np.abs(tangent - f)[same_all].max() < 1e-12
    assert same_first.sum() > same_all.sum()
    assert np.abs(tangent - f)[~same_all].max() > 0.1


@pytest.mark.parametrize("kwargs, error", [({"point": (0.0, 3.0)}, ValueError),
                                           ({"cov": ((1.0, 2.0), (2.0, 1.0))}, ValueError),
                                           ({"resolution": 10}, ValueError), ({"resolution": 100.0}, TypeError)])
def test_the_regions_diagram_rejects_bad_arguments(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        viz.linear_regions_diagram(**kwargs)


def test_the_network_is_fixed():
    a, b = viz.diagram_network(), viz.diagram_network()
    assert [p.dtype for p in a.parameters()] == [torch.float64] * 6
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
