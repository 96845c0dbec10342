"""Standard normal special functions: univariate and bivariate, exact, batched and differentiable.

All functions take tensors, broadcast over their arguments, and return a tensor of the broadcast shape with
the inputs' dtype and device. Notation (as in NM18 and NM20): phi / Phi are the standard normal pdf / cdf,
phi2(h, k; rho) / Phi2(h, k; rho) the standard bivariate normal pdf / cdf with correlation rho.

- :func:`bivariate_normal_cdf` is exact to about 1e-15 in float64 (Genz's method, written from the maths,
  see Genz 2004, "Numerical computation of rectangular bivariate and trivariate normal and t
  probabilities") and has closed-form, twice-differentiable gradients.
- :func:`series_integral` and :func:`bivariate_normal_cdf_series` are the truncated series of NM20
  (Alfadly et al., arXiv 2006.11776), built of differentiable torch operations.

Only ``torch`` and the standard library are needed at run time.
"""
import concurrent.futures
import decimal
import functools
import math

import torch

from ._validation import check_dtype

__all__ = [
    "normal_pdf",
    "normal_cdf",
    "bivariate_normal_pdf",
    "bivariate_normal_cdf",
    "bivariate_normal_cdf_series",
    "series_integral",
]

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2PI = math.sqrt(2.0 * math.pi)
_SQRT_PI = math.sqrt(math.pi)
_SQRT2 = math.sqrt(2.0)
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_TWO_PI = 2.0 * math.pi
# |rho| may exceed 1 by this much (round-off in a correlation computed from a covariance); it is clamped.
_RHO_TOLERANCE = 1e-12
# Beyond |x| = 40 the normal tail is below 1e-348: Phi is exactly 0 or 1 in float64, and phi, phi2 and every
# exp(-x^2) * polynomial(x) term are exactly 0. Clamping there changes no value and keeps inf - inf out.
_SATURATION = 40.0
# exp of an argument below about -708 (a subnormal or zero result) takes a slow path on x86, 5-20x the normal
# cost. Quadrature exponents are clamped here: exp(-700) ~ 1e-304 changes no sum visibly.
_EXP_FLOOR = -700.0
# Quadrature bands by |rho|: (upper edge, method, Gauss-Legendre nodes). Genz uses 6/12/20 nodes in
# arcsin(rho) below 0.3/0.75/0.925 and his high-correlation method above. Here, each band uses the fewest
# nodes that keep the quadrature error below 2e-16 for all h, k in [-9, 9]^2 at the band's upper edge (checked
# against 80 nodes), and the Plackett form (in tan(arcsin(rho)/2)) runs up to 0.975, where it is still
# cheaper per element than the high-correlation form.
_BANDS = (
    (0.05, "plackett", 4), (0.15, "plackett", 5), (0.3, "plackett", 6), (0.4, "plackett", 7),
    (0.5, "plackett", 8), (0.55, "plackett", 9), (0.65, "plackett", 10), (0.7, "plackett", 11),
    (0.75, "plackett", 12), (0.8, "plackett", 13), (0.85, "plackett", 14), (0.875, "plackett", 15),
    (0.9, "plackett", 16), (0.925, "plackett", 18), (0.95, "plackett", 20), (0.975, "plackett", 24),
    (0.99, "high", 16), (1.0, "high", 12),
)
# Every band edge is a multiple of 1/_BAND_RESOLUTION, so bands are unions of cells floor(|rho| R).
_BAND_RESOLUTION = 200
# Elements per chunk of the (rows x nodes) quadrature tables. On CPU: in cache, and below torch's grain size
# (32768), so each op runs on the calling thread; the chunks are spread over torch.get_num_threads() Python
# threads instead (torch releases the GIL inside ops). Hundreds of small multi-threaded ops would each pay a
# thread hand-off, ruinous on a busy machine (measured 2-4x slower at load 6 on 2 cores). On GPUs: large.
_CHUNK_ELEMENTS_CPU = 32000
_CHUNK_ELEMENTS_ACCELERATOR = 1 << 24
# On CPU, inputs are processed in blocks of this many elements, so that the sorting and per-band steps
# work in cache rather than in main memory (~15% faster at 1e6 elements than one block).
_BLOCK_ELEMENTS_CPU = 1 << 18


# ----------------------------------------------------------------------------------------------------------
# Input checking
# ----------------------------------------------------------------------------------------------------------
def _check_tensors(**named):
    """Check that every argument is a floating tensor, all of one dtype and one device, with no NaN.

    Returns the broadcast shape and each argument's (min, max), None when empty.
    """
    first_name, first = None, None
    for name, x in named.items():
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype}")
        check_dtype(name, x.dtype)
        if first is None:
            first_name, first = name, x
            continue
        if x.dtype != first.dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but {first_name} has dtype {first.dtype}; "
                            "convert them to one dtype")
        if x.device != first.device:
            raise ValueError(f"{name} is on device {x.device} but {first_name} is on {first.device}")
    extremes = {}
    for name, x in named.items():
        # One min/max pass (NaN propagates into both) is five times cheaper than isnan().any().
        extremes[name] = tuple(value.item() for value in torch.aminmax(x)) if x.numel() else None
        if extremes[name] is not None and math.isnan(extremes[name][0]):
            raise ValueError(f"{name} contains NaN")
    try:
        return torch.broadcast_shapes(*(x.shape for x in named.values())), extremes
    except RuntimeError as error:
        shapes = ", ".join(f"{name} {tuple(x.shape)}" for name, x in named.items())
        raise ValueError(f"shapes do not broadcast: {shapes}") from error


def _check_rho(rho, extremes):
    """Reject |rho| > 1 beyond round-off; clamp the round-off away (clamp passes gradients inside [-1, 1])."""
    if extremes is None:
        return rho
    low, high = extremes
    if low < -1.0 - _RHO_TOLERANCE or high > 1.0 + _RHO_TOLERANCE:
        raise ValueError(f"rho must lie in [-1, 1]; got values in [{low!r}, {high!r}]")
    return rho.clamp(-1.0, 1.0) if low < -1.0 or high > 1.0 else rho


def _check_terms(terms):
    if terms is None:
        return None
    if isinstance(terms, bool) or not isinstance(terms, int):
        raise TypeError(f"terms must be a positive int or None, got {type(terms).__name__}")
    if terms < 1:
        raise ValueError(f"terms must be >= 1, got {terms}")
    return terms


# ----------------------------------------------------------------------------------------------------------
# Univariate
# ----------------------------------------------------------------------------------------------------------
def normal_pdf(x):
    """Standard normal density phi(x) = exp(-x^2/2) / sqrt(2 pi), elementwise.

    Args:
        x: tensor (...), floating dtype. +-inf gives 0.
    Returns:
        tensor (...), same dtype and device as ``x``.
    """
    _check_floating(x, "x")
    return torch.exp(-0.5 * x * x) * _INV_SQRT_2PI


def normal_cdf(x):
    """Standard normal distribution function Phi(x) = P(X <= x), elementwise.

    Computed as erfc(-x/sqrt2)/2, which keeps full relative accuracy in the lower tail (torch.special.ndtr
    loses it there: about 2% at x = -8).

    Args:
        x: tensor (...), floating dtype. +-inf gives 1 or 0.
    Returns:
        tensor (...), same dtype and device as ``x``.
    """
    _check_floating(x, "x")
    return 0.5 * torch.erfc(x * -_INV_SQRT2)


def _check_floating(x, name):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype}")
    check_dtype(name, x.dtype)


# ----------------------------------------------------------------------------------------------------------
# Bivariate density
# ----------------------------------------------------------------------------------------------------------
def _bivariate_pdf(h, k, rho, on_line):
    """phi2 on checked inputs; ``on_line`` is the value used at |rho| = 1 on the support line.

    The exponent is written as (h-k)^2 / (2(1-rho)) + (h+k)^2 / (2(1+rho)) = (h^2 - 2 rho h k + k^2) / (1-rho^2):
    a sum of non-negative terms, so it has no cancellation as |rho| -> 1. Denominators are made safe before
    dividing so that neither the value nor any derivative of it is NaN at |rho| = 1.
    """
    h = h.clamp(-_SATURATION, _SATURATION)
    k = k.clamp(-_SATURATION, _SATURATION)
    one_minus = 1.0 - rho
    one_plus = 1.0 + rho
    variance = one_minus * one_plus
    interior = variance > 0
    difference_sq = (h - k).square()
    sum_sq = (h + k).square()
    safe_minus = torch.where(one_minus > 0, one_minus, torch.ones_like(one_minus))
    safe_plus = torch.where(one_plus > 0, one_plus, torch.ones_like(one_plus))
    safe_variance = torch.where(interior, variance, torch.ones_like(variance))
    half_exponent = 0.25 * (difference_sq / safe_minus + sum_sq / safe_plus)
    density = torch.exp(-half_exponent) / (_TWO_PI * torch.sqrt(safe_variance))
    # At |rho| = 1 the law sits on the line k = rho h: the density is 0 off it and a delta on it.
    line_distance_sq = torch.where(rho > 0, difference_sq, sum_sq)
    degenerate = torch.where(line_distance_sq == 0,
                             torch.full_like(density, on_line), torch.zeros_like(density))
    return torch.where(interior, density, degenerate)


def bivariate_normal_pdf(h, k, rho):
    """Standard bivariate normal density phi2(h, k; rho), broadcast over the arguments.

    phi2 = exp(-(h^2 - 2 rho h k + k^2) / (2 (1 - rho^2))) / (2 pi sqrt(1 - rho^2)).

    Args:
        h, k: tensors broadcastable to a common shape (...), floating dtype, no NaN; +-inf allowed (gives 0).
        rho: tensor broadcastable with ``h`` and ``k``, values in [-1, 1].
    Returns:
        tensor (...), the common dtype and device. At |rho| = 1 the distribution is singular: the result is
        the limit 0 off the line k = rho h and +inf on it (never NaN).
    """
    _, extremes = _check_tensors(h=h, k=k, rho=rho)
    rho = _check_rho(rho, extremes["rho"])
    return _bivariate_pdf(h, k, rho, on_line=math.inf)


# ----------------------------------------------------------------------------------------------------------
# Bivariate distribution function: forward values (float64, no autograd)
# ----------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _gauss_legendre(n):
    """Gauss-Legendre nodes and weights on [-1, 1], correctly rounded to float.

    Newton's method on the Legendre recurrence, run in 40-digit decimal arithmetic: in float64 the weights
    of the larger rules come out only to ~1e-13 relative, because P_{n-1} is evaluated at a rounded root.
    """
    with decimal.localcontext() as context:
        context.prec = 40
        one, two = decimal.Decimal(1), decimal.Decimal(2)

        def legendre(x):  # (P_n(x), P_{n-1}(x))
            p_prev, p = one, x
            for j in range(2, n + 1):
                p_prev, p = p, ((2 * j - 1) * x * p - (j - 1) * p_prev) / j
            return p, p_prev

        nodes, weights = [], []
        for i in range(1, n + 1):
            x = decimal.Decimal(math.cos(math.pi * (i - 0.25) / (n + 0.5)))
            for _ in range(100):
                p, p_prev = legendre(x)
                # P_n'(x) = n (x P_n - P_{n-1}) / (x^2 - 1)
                step = p * (x - one) * (x + one) / (n * (x * p - p_prev))
                x -= step
                if abs(step) < decimal.Decimal("1e-35"):
                    break
            _, p_prev = legendre(x)
            nodes.append(float(x))
            # At a root P_n' = n P_{n-1} / (1 - x^2), so w = 2 / ((1 - x^2) P_n'^2) = 2 (1 - x^2) / (n P_{n-1})^2.
            weights.append(float(two * (one - x) * (one + x) / (n * p_prev) ** 2))
    return tuple(nodes), tuple(weights)


def _nodes(n, like):
    """(nodes, log weights): the weights enter each exponent, so a row sum finishes the quadrature."""
    nodes, weights = _gauss_legendre(n)
    return (torch.tensor(nodes, dtype=like.dtype, device=like.device),
            torch.tensor([math.log(w) for w in weights], dtype=like.dtype, device=like.device))


def _ndtr(x):
    # Phi for the no-grad forward paths (in place on a fresh tensor); see normal_cdf for why erfc.
    return torch.erfc(x * -_INV_SQRT2).mul_(0.5)


def _chunks(n_rows, n_nodes, device):
    """Row ranges of the (rows x nodes) quadrature tables."""
    chunk = _CHUNK_ELEMENTS_CPU if device.type == "cpu" else _CHUNK_ELEMENTS_ACCELERATOR
    rows = max(1, chunk // n_nodes)
    return [(start, min(n_rows, start + rows)) for start in range(0, n_rows, rows)]


def _plackett_band(h, k, rho, n_nodes, out):  # -> (work, chunks, finish)
    """Phi2 for |rho| < 0.975 (1-D float64 tensors, written into ``out``) from Plackett's integral

        Phi2 = Phi(h) Phi(k) + (1/2pi) int_0^{arcsin rho} exp(-(h^2 + k^2 - 2 h k sin t) / (2 cos^2 t)) dt,

    by Gauss-Legendre quadrature in w = tan(t/2) (Genz uses t itself). With D = 1 + w^2, E = 1 - w^2:
    sin t = 2w/D, cos t = E/D, dt = 2 dw/D, so the integrand is 2 exp(-D (hs D - 2 hk w) / E^2) / D,
    hs = (h^2+k^2)/2: rational in w, with no sine per node, and its singularities (w = +-1, +-i) lie a little
    farther from [0, tan(arcsin(rho)/2)] than cos t = 0 does from [0, arcsin rho], so no more nodes are needed.
    """
    nodes, log_weights = _nodes(n_nodes, h)
    fractions = 0.5 * (1.0 + nodes)[None, :]
    fractions_sq = fractions.square()
    half_tan = rho / (1.0 + torch.sqrt((1.0 - rho) * (1.0 + rho)))   # W = tan(arcsin(rho)/2); w = W f
    half_tan_sq = half_tan.square()[:, None]
    neg_half_sum_sq = torch.addcmul(h * h, k, k).mul_(-0.5)[:, None]  # -hs
    twice_hk_tan = (h * k).mul_(half_tan).mul_(2.0)[:, None]           # 2 hk W
    two = torch.full((), 2.0, dtype=h.dtype, device=h.device)

    # Only elementwise ops and a row sum: unlike BLAS (torch.mv), they give every element the same result
    # wherever it sits in the batch, so Phi2 of a pair never depends on which other pairs came with it.
    def work(start, stop):
        part = slice(start, stop)
        d, e, integrand = (h.new_empty(stop - start, n_nodes) for _ in range(3))
        torch.mul(half_tan_sq[part], fractions_sq, out=d).add_(1.0)                 # D = 1 + w^2
        torch.sub(two, d, out=e).square_()                                         # E^2 = (1 - w^2)^2
        torch.mul(d, neg_half_sum_sq[part], out=integrand)
        integrand.addcmul_(twice_hk_tan[part], fractions)                         # -(hs D - 2 hk w)
        integrand.mul_(d).div_(e).add_(log_weights).clamp_(min=_EXP_FLOOR).exp_().div_(d)
        torch.sum(integrand, 1, out=out[part])

    def finish():
        # (1/2pi) * (W/2) sum_j weight_j * 2 exp(.)/D_j
        cdf_h, cdf_k = torch.special.ndtr(h), torch.special.ndtr(k)
        out.mul_(half_tan).mul_(1.0 / _TWO_PI).addcmul_(cdf_h, cdf_k)
        # Round-off must not leave the Frechet bounds max(0, Phi(h)+Phi(k)-1) <= Phi2 <= min(Phi(h), Phi(k)).
        out.clamp_(min=torch.add(cdf_h, cdf_k).sub_(1.0).clamp_(min=0.0), max=torch.minimum(cdf_h, cdf_k))

    return work, _chunks(h.shape[0], n_nodes, h.device), finish


def _high_correlation_band(h, k, rho, n_nodes, out):  # -> (work, chunks, finish)
    """Phi2 for 0.975 <= |rho| < 1 (1-D float64 tensors, written into ``out``): Genz's method.

    For rho > 0, Phi2 = Phi(min(h, k)) - int_rho^1 phi2(h, k; t) dt. With x = sqrt(1 - t^2) the integrand is
    exp(-(h-k)^2 / (2x^2) - hk/2) f(x), f(x) = exp(-hk (1 - r)/(2 (1 + r))) / r, r = sqrt(1 - x^2), sharply
    peaked at x = 0 when h ~ k. Its Taylor part 1 + c x^2 + c d x^4 (c = (4-hk)/8, d = (12-hk)/16) is
    integrated in closed form (by parts), the smooth remainder by Gauss-Legendre on [0, a], a = sqrt(1-rho^2).
    Negative rho uses Phi2(h, k; rho) = Phi(h) - Phi2(h, -k; -rho).
    """
    negative = rho < 0
    k_pos = torch.where(negative, -k, k)
    abs_rho = rho.abs()
    hk = h * k_pos
    gap_sq = (h - k_pos).square_()
    a_sq = (1.0 - abs_rho).mul_(1.0 + abs_rho)
    a = torch.sqrt(a_sq)
    c = (4.0 - hk).mul_(0.125)
    d = (12.0 - hk).mul_(0.0625)

    taylor_bracket = 1.0 - c * (gap_sq - a_sq) * (1.0 - d * gap_sq / 5.0) / 3.0 + c * d * a_sq * a_sq / 5.0
    closed = a * torch.exp(-0.5 * (gap_sq / a_sq + hk)) * taylor_bracket
    # exp(-hk/2) Phi(-gap/a) underflows to 0 long before hk < -100 (there gap/a > 50); the clamp only keeps
    # exp from overflowing into inf * 0.
    gap = torch.sqrt(gap_sq)
    tail = (torch.exp(-0.5 * hk.clamp(min=-100.0)) * _SQRT_2PI * _ndtr(-gap / a) * gap
            * (1.0 - c * gap_sq * (1.0 - d * gap_sq / 5.0) / 3.0))
    closed.sub_(torch.where(hk > -100.0, tail, torch.zeros_like(tail)))

    # Remainder on nodes x = a f_j, f_j = (1 + t_j)/2, as (row, node) tables:
    #   exp(-(h-k)^2/(2x^2) - hk/2) * [exp(-(hk/2) x^2/(1+r)^2) / r - (1 + c x^2 + c d x^4)].
    # Both exponents are <= 0 for |rho| >= 0.925 (then (h-k)^2 >= -4hk), so neither exp overflows.
    nodes, log_weights = _nodes(n_nodes, h)
    fractions = 0.5 * (1.0 + nodes)
    f_sq = fractions.square()
    cd = (c * d)[:, None]
    gauss_rate = gap_sq.div(a_sq).mul_(-0.5)
    inverse_f_sq = f_sq.reciprocal()
    neg_half_hk = hk * -0.5
    one = torch.ones((), dtype=h.dtype, device=h.device)

    def work(start, stop):
        part = slice(start, stop)
        x_sq, r, gauss, taylor, scratch = (h.new_empty(stop - start, n_nodes) for _ in range(5))
        torch.mul(a_sq[part, None], f_sq, out=x_sq)
        torch.sub(one, x_sq, out=r).sqrt_()
        # weight_j exp(-(h-k)^2/(2x^2) - hk/2), the weight entering as log(weight) in the exponent
        torch.addcmul(neg_half_hk[part, None], gauss_rate[part, None], inverse_f_sq, out=gauss)
        gauss.add_(log_weights).clamp_(min=_EXP_FLOOR).exp_()
        # Taylor part 1 + x^2 (c + c d x^2); elementwise only, as in _plackett_band.
        torch.mul(x_sq, cd[part], out=taylor).add_(c[part, None]).mul_(x_sq).add_(1.0)
        # Exact part exp(-(hk/2) x^2/(1+r)^2) / r; x^2/(1+r)^2 = (1-r)/(1+r) without the cancellation of 1 - r.
        x_sq.div_(torch.add(r, 1.0, out=scratch).square_())
        x_sq.mul_(neg_half_hk[part, None]).exp_().div_(r)
        torch.sum(x_sq.sub_(taylor).mul_(gauss), 1, out=out[part])

    def finish():
        integral = out.mul_(0.5 * a).add_(closed).mul_(1.0 / _TWO_PI)
        # The Frechet bounds are also the bases: Phi2 = upper - integral for rho > 0, lower + integral for
        # rho < 0 (Phi(h) - Phi(min(h, -k)) = max(0, Phi(min(h,k)) - Phi(-max(h,k))), accurate in the tails).
        upper, lower = _frechet_bounds(h, k)
        out.copy_(torch.where(negative, lower + integral, upper - integral)).clamp_(min=lower, max=upper)

    return work, _chunks(h.shape[0], n_nodes, h.device), finish


def _frechet_bounds(h, k):
    """min(Phi(h), Phi(k)) and max(0, Phi(h) + Phi(k) - 1), the second as a difference of lower tails."""
    upper = torch.special.ndtr(torch.minimum(h, k))
    lower = (upper - torch.special.ndtr(-torch.maximum(h, k))).clamp_(min=0.0)
    return upper, lower


def _degenerate_limit(h, k, rho, out):
    """Phi2 at |rho| = 1: Phi(min(h, k)) for rho = 1, max(0, Phi(h) + Phi(k) - 1) for rho = -1."""
    upper, lower = _frechet_bounds(h, k)
    out.copy_(torch.where(rho > 0, upper, lower))


@functools.lru_cache(maxsize=None)
def _band_cells():
    """(first cell, end cell) of each band, in units of 1/_BAND_RESOLUTION of |rho|."""
    edges = [0] + [round(edge * _BAND_RESOLUTION) for edge, _, _ in _BANDS]
    return tuple(zip(edges[:-1], edges[1:]))


def _bivariate_cdf_values(h, k, rho):
    """Forward values of Phi2 on checked inputs (rho already in [-1, 1]); computed in float64."""
    shape = torch.broadcast_shapes(h.shape, k.shape, rho.shape)
    out_dtype = h.dtype
    compute = torch.float64
    h, k, rho = (torch.broadcast_to(x.to(compute), shape).reshape(-1) for x in (h, k, rho))
    n = h.numel()
    out = torch.empty_like(h)
    on_cpu = h.device.type == "cpu"
    # A pool costs ~0.2 ms to start: only worth it from a few chunks (about 4000 elements each) up.
    workers = torch.get_num_threads() if on_cpu and n >= 16384 else 1
    block = _BLOCK_ELEMENTS_CPU if on_cpu else max(n, 1)
    pool = concurrent.futures.ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        for start in range(0, n, block):
            part = slice(start, start + block)
            out[part] = _block_values(h[part], k[part], rho[part], pool)
    finally:
        if pool is not None:
            pool.shutdown()
    return out.reshape(shape).to(out_dtype)


def _block_values(h, k, rho, pool):
    """Phi2 of one block of 1-D float64 tensors.

    Elements are permuted so that each |rho| band is one contiguous slice (one stable sort of the uint8 cell
    index floor(|rho| R)): every element pays only its own band's quadrature, on contiguous memory.
    """
    n = h.numel()
    # float(|rho| * R) rounds to R only for |rho| = 1 (the largest double below 1 times R stays below R for
    # R = 200; a test checks it), so cell R holds exactly the degenerate |rho| = 1 elements.
    cell = torch.abs(rho).mul_(_BAND_RESOLUTION).to(torch.uint8)
    order = torch.sort(cell, stable=True).indices
    cell_starts = [0]
    for count in torch.bincount(cell, minlength=_BAND_RESOLUTION + 1).tolist():
        cell_starts.append(cell_starts[-1] + count)
    # position[i] = where element i goes. Scattering into (and later gathering from) the sorted order through
    # `position` walks each band in increasing order, several times faster than gathering through `order`.
    position = torch.empty_like(order).scatter_(0, order, torch.arange(n, device=h.device))
    h_sorted, k_sorted, rho_sorted = (torch.empty_like(x).scatter_(0, position, x) for x in (h, k, rho))
    out = torch.empty_like(h_sorted)
    bands = [(cell_starts[lo], cell_starts[hi], method, n_nodes)
             for (lo, hi), (_, method, n_nodes) in zip(_band_cells(), _BANDS)]
    bands.append((cell_starts[_BAND_RESOLUTION], n, "degenerate", 0))
    jobs = []
    for start, stop, method, n_nodes in bands:
        if stop == start:
            continue
        part = slice(start, stop)
        args = (h_sorted[part].clamp_(-_SATURATION, _SATURATION), k_sorted[part].clamp_(-_SATURATION, _SATURATION),
                rho_sorted[part])
        if method == "plackett":
            jobs.append(_plackett_band(*args, n_nodes, out=out[part]))
        elif method == "high":
            jobs.append(_high_correlation_band(*args, n_nodes, out=out[part]))
        else:
            _degenerate_limit(*args, out=out[part])
    tasks = [(work, start, stop) for work, chunks, _ in jobs for start, stop in chunks]
    if pool is None:
        for work, start, stop in tasks:
            work(start, stop)
    else:
        for future in [pool.submit(work, start, stop) for work, start, stop in tasks]:
            future.result()
    for _, _, finish in jobs:
        finish()
    return out.index_select(0, position)


# ----------------------------------------------------------------------------------------------------------
# Bivariate distribution function: autograd
# ----------------------------------------------------------------------------------------------------------
def _conditional_cdf(h, k, rho, one_minus, one_plus, sqrt_variance, interior):
    """Phi((k - rho h) / s), the derivative factor of Phi2 in h; the step function (1/2 at a tie) at s = 0.

    k - rho h is formed as (k - h) + (1 - rho) h for rho >= 0 and (k + h) - (1 + rho) h for rho < 0: both
    differences are exact near |rho| = 1, where the plain form loses all digits to cancellation.
    """
    numerator = torch.where(rho >= 0, (k - h) + one_minus * h, (k + h) - one_plus * h)
    smooth = normal_cdf(numerator / sqrt_variance)
    step = 0.5 * (torch.sign(numerator) + 1.0)
    return torch.where(interior, smooth, step)


def _bivariate_cdf_gradients(h, k, rho, grad, needs):
    """Closed-form gradients of Phi2, built of differentiable ops so that double backward works."""
    hc = h.clamp(-_SATURATION, _SATURATION)
    kc = k.clamp(-_SATURATION, _SATURATION)
    one_minus = 1.0 - rho
    one_plus = 1.0 + rho
    variance = one_minus * one_plus
    interior = variance > 0
    sqrt_variance = torch.sqrt(torch.where(interior, variance, torch.ones_like(variance)))
    grad_h = grad_k = grad_rho = None
    if needs[0]:
        factor = normal_pdf(hc) * _conditional_cdf(hc, kc, rho, one_minus, one_plus, sqrt_variance, interior)
        grad_h = (grad * factor).sum_to_size(h.shape)
    if needs[1]:
        factor = normal_pdf(kc) * _conditional_cdf(kc, hc, rho, one_minus, one_plus, sqrt_variance, interior)
        grad_k = (grad * factor).sum_to_size(k.shape)
    if needs[2]:
        # At |rho| = 1 on the line k = rho h the one-sided derivative is +inf; 0 is used there (as for the
        # kink of relu) so that a zero upstream gradient never turns into 0 * inf = NaN.
        grad_rho = (grad * _bivariate_pdf(hc, kc, rho, on_line=0.0)).sum_to_size(rho.shape)
    return grad_h, grad_k, grad_rho


class _BivariateNormalCDF(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, k, rho):
        ctx.save_for_backward(h, k, rho)
        return _bivariate_cdf_values(h, k, rho)

    @staticmethod
    def backward(ctx, grad):
        h, k, rho = ctx.saved_tensors
        return _bivariate_cdf_gradients(h, k, rho, grad, ctx.needs_input_grad)


def bivariate_normal_cdf(h, k, rho):
    """Standard bivariate normal distribution function Phi2(h, k; rho) = P(X <= h, Y <= k), corr(X, Y) = rho.

    Exact to about 5e-16 absolute (computed in float64 for every input dtype, then cast back), after Genz
    (2004): Gauss-Legendre quadrature of Plackett's integral with 4 to 24 nodes by |rho| band for
    |rho| < 0.975, and for 0.975 <= |rho| < 1 Genz's closed-form integral of the near-singular part plus
    12-16 node quadrature of the rest. Each element pays only its own band's cost, and its value does not
    depend on the other elements of the batch (bitwise). |rho| = 1 and infinite h, k give the exact limits
    Phi(min(h, k)), max(0, Phi(h) + Phi(k) - 1) and the univariate margins.

    Gradients are closed form: dPhi2/dh = phi(h) Phi((k - rho h)/s), dPhi2/dk = phi(k) Phi((h - rho k)/s),
    dPhi2/drho = phi2(h, k; rho), s = sqrt(1 - rho^2); at s = 0 the Phi factor is a step (1/2 on a tie) and
    dPhi2/drho is 0. The backward is itself differentiable (double backward works).

    Args:
        h, k: tensors broadcastable to a common shape (...), floating dtype, no NaN; +-inf allowed.
        rho: tensor broadcastable with ``h`` and ``k``, values in [-1, 1] (|rho| - 1 <= 1e-12 is clamped).
    Returns:
        tensor (...), the common dtype and device, values in [0, 1].
    """
    _, extremes = _check_tensors(h=h, k=k, rho=rho)
    rho = _check_rho(rho, extremes["rho"])
    return _BivariateNormalCDF.apply(h, k, rho)


# ----------------------------------------------------------------------------------------------------------
# NM20 series
# ----------------------------------------------------------------------------------------------------------
def _series_bounds(dtype):
    """(|b| bound, |c| bound, scale cap L) for :func:`_series_inner` in ``dtype``.

    exp(-b^2/2) (the start of the scaled Hermite recurrence) must stay a normal number, and the Poisson sums below
    start at exp(X - c^2) with X = min(c^2, L) and grow to at most exp(X): both must stay normal too. Beyond the
    bounds (|b| ~ 37.6, |c| ~ 37.5 in float64; 13.2 in float32) e^{-b^2} and e^{-c^2} are already 0 in ``dtype``
    and erf, erfc are exactly +-1, 0 or 2, so clamping there changes no value (by less than 1e-300 in float64).
    """
    info = torch.finfo(dtype)
    log_tiny = math.log(info.tiny)
    cap = 0.98 * math.log(info.max)
    return 0.999 * math.sqrt(-2.0 * log_tiny), 0.999 * math.sqrt(cap - log_tiny), cap


def _series_inner(a, b, c, terms):
    """NM20's truncated series I_N(a, b, c) for |a| <= 1 (finite tensors, any shape), for any number of terms.

    I_N = sqrt(pi)/2 erf(b) erfc(c) + e^{-b^2} sum_{u<N} [(a/2)^{2u+1} H_{2u}(b) Q_u / Gamma(u+3/2)
                                                       - (a/2)^{2u+2} H_{2u+1}(b) R_u / Gamma(u+2)],
    Q_u = 1 - P(u+1, c^2) = e^{-c^2} sum_{j<=u} c^{2j} / j!,  R_u = 1 - sign(c) P(u+3/2, c^2)
        = erfc(c) + e^{-c^2} sum_{j<=u} c^{2j+1} / Gamma(j+3/2)

    (from P(1, x) = 1 - e^{-x} and P(1/2, x) = erf(sqrt x)). H_n(b), Gamma(u + 3/2) and the partial sums each
    overflow after ~135 terms (inf * 0 = NaN, and math.gamma raised OverflowError from 171 on), although every
    term is bounded. So every factor is carried scaled to O(1) by a recurrence:

    * Hermite functions h_n = H_n(b) e^{-b^2/2} / sqrt(2^n n!), h_{n+1} = b sqrt(2/(n+1)) h_n - sqrt(n/(n+1)) h_{n-1},
      which satisfy |h_n| <= 1.09 (Cramer's inequality);
    * coefficients A_u = (a/2)^{2u+1} sqrt(2^{2u} (2u)!) / Gamma(u+3/2) ~ |a|^{2u+1} u^{-3/4} and
      B_u = (a/2)^{2u+2} sqrt(2^{2u+1} (2u+1)!) / Gamma(u+2), by their term ratios;
    * the Poisson sums started at e^{X - c^2} with X = min(c^2, L) and multiplied by e^{-X} at the end.

    Polynomials times exponentials only, so autograd differentiates everything, including in c (at c = 0 too).
    """
    b_bound, c_bound, cap = _series_bounds(a.dtype)
    b = b.clamp(-b_bound, b_bound)
    c = c.clamp(-c_bound, c_bound)
    x = c * c
    scale_log = x.clamp(max=cap)                    # X
    start = torch.exp(scale_log - x)                # e^{X - x}, in [e^{log tiny}, 1]
    unscale = torch.exp(-scale_log)                 # e^{-X}
    erfc_c = torch.erfc(c)
    a_sq = a * a
    half_b = b * _SQRT2                             # b sqrt(2/(n+1)) = half_b / sqrt(n+1)

    hermite_even = torch.exp(-0.5 * b * b)          # h_0
    hermite_odd = half_b * hermite_even             # h_1
    coef_even = a / _SQRT_PI                        # A_0 = (a/2) / Gamma(3/2)
    coef_odd = a_sq * (_SQRT2 / 4.0)                # B_0 = (a/2)^2 sqrt(2) / Gamma(2)
    poisson_term = start                            # e^{X-x} x^u / u!
    poisson_sum = start
    half_term = c * start / math.gamma(1.5)         # e^{X-x} c^{2u+1} / Gamma(u + 3/2)
    half_sum = half_term
    total = torch.zeros_like(hermite_even * a)
    for u in range(terms):
        if u > 0:
            n = 2 * u - 1                           # (h_{2u-2}, h_{2u-1}) -> (h_{2u}, h_{2u+1})
            hermite_even = (half_b / math.sqrt(n + 1)) * hermite_odd - math.sqrt(n / (n + 1)) * hermite_even
            n += 1
            hermite_odd = (half_b / math.sqrt(n + 1)) * hermite_even - math.sqrt(n / (n + 1)) * hermite_odd
            coef_even = coef_even * a_sq * (0.5 * math.sqrt(2 * u * (2 * u - 1)) / (u + 0.5))
            coef_odd = coef_odd * a_sq * (0.5 * math.sqrt(2 * u * (2 * u + 1)) / (u + 1.0))
            poisson_term = poisson_term * x / u
            poisson_sum = poisson_sum + poisson_term
            half_term = half_term * x / (u + 0.5)
            half_sum = half_sum + half_term
        total = (total
                 + coef_even * hermite_even * (poisson_sum * unscale)
                 - coef_odd * hermite_odd * (erfc_c + half_sum * unscale))
    return 0.5 * _SQRT_PI * torch.erf(b) * erfc_c + torch.exp(-0.5 * b * b) * total


def _series_integral_finite(a, b, c, terms):
    """I_N(a, b, c) for finite tensors, with the |a| >= 1 reflection so that the series runs in |a'| <= 1:

    I(a, b, c) = sign(a) [sqrt(pi)/2 - I(1/|a|, -b/a, sign(a)(a c + b))] - sqrt(pi)/2 erf(a c + b) erf(c).
    """
    reflect = a.abs() >= 1.0
    a_safe = torch.where(reflect, a, torch.ones_like(a))
    sign_a = torch.sign(a)
    shifted = a * c + b
    inner = _series_inner(torch.where(reflect, 1.0 / a_safe.abs(), a),
                          torch.where(reflect, -b / a_safe, b),
                          torch.where(reflect, sign_a * shifted, c), terms)
    reflected = sign_a * (0.5 * _SQRT_PI - inner) - 0.5 * _SQRT_PI * torch.erf(shifted) * torch.erf(c)
    return torch.where(reflect, reflected, inner)


def _integral_from_cdf(a, b, c):
    """Exact I(a, b, c) = 2 sqrt(pi) (Phi2(h, k; rho) - Phi(k)/2), rho = a/sqrt(1+a^2), h = sqrt2 b s, k = -sqrt2 c."""
    large = a.abs() > 1.0
    a_large = torch.where(large, a, torch.ones_like(a))
    a_small = torch.where(large, torch.zeros_like(a), a)
    inverse_sq = (1.0 / a_large).square()
    # Written so that |a| -> inf (rho -> +-1) neither overflows nor gives inf/inf.
    s = torch.where(large, 1.0 / (a_large.abs() * torch.sqrt(1.0 + inverse_sq)),
                    1.0 / torch.sqrt(1.0 + a_small * a_small))
    rho = torch.where(large, torch.sign(a_large) / torch.sqrt(1.0 + inverse_sq), a_small * s)
    h = _SQRT2 * b * s
    k = -_SQRT2 * c
    return 2.0 * _SQRT_PI * (_BivariateNormalCDF.apply(h, k, rho.clamp(-1.0, 1.0)) - 0.5 * normal_cdf(k))


def series_integral(a, b, c, terms=None):
    """NM20's integral I(a, b, c) = int_c^inf erf(a t + b) exp(-t^2) dt, exact or as the truncated series.

    With ``terms = N`` this is NM20's series I_N: erf(b + a t) expanded in powers of a, N pairs of terms
    (a^{2u+1}, a^{2u+2}, u < N), with the exact reflection for |a| >= 1 so the series always runs in |a| <= 1.
    With ``terms=None`` it is exact, from I = 2 sqrt(pi) (Phi2(h, k; rho) - Phi(k)/2).
    Both are differentiable in a, b and c.

    Args:
        a, b, c: tensors broadcastable to a common shape (...), floating dtype, no NaN. b and c may be
            +-inf (exact limits: I = 0 at c = +inf, I = +-sqrt(pi)/2 erfc(c) at b = +-inf); a = +-inf is
            the rho = +-1 limit and is always computed exactly.
        terms: None (exact) or the number N >= 1 of series terms (NM20 use N = 5).
    Returns:
        tensor (...), the common dtype and device.
    """
    shape, _ = _check_tensors(a=a, b=b, c=c)
    terms = _check_terms(terms)
    a, b, c = torch.broadcast_tensors(a, b, c)
    b_infinite = torch.isinf(b)
    c_top = c == math.inf
    limit_case = b_infinite | c_top
    b_safe = torch.where(limit_case, torch.zeros_like(b), b)
    c_safe = torch.where(limit_case, torch.zeros_like(c), c)
    if terms is None:
        value = _integral_from_cdf(a, b_safe, c_safe)
    else:
        a_infinite = torch.isinf(a)
        a_safe = torch.where(a_infinite, torch.zeros_like(a), a)
        value = _series_integral_finite(a_safe, b_safe, c_safe, terms)
        if bool(a_infinite.any()):
            value = torch.where(a_infinite, _integral_from_cdf(a, b_safe, c_safe), value)
    margin = torch.sign(b) * (0.5 * _SQRT_PI) * torch.erfc(torch.where(c_top, torch.zeros_like(c), c))
    limit = torch.where(c_top, torch.zeros_like(value), margin)
    return torch.where(limit_case, limit, value).reshape(shape)


def bivariate_normal_cdf_series(h, k, rho, terms=5):
    """NM20's series approximation of Phi2(h, k; rho): Phi2 ~ Phi(k)/2 + I_N(a, b, c) / (2 sqrt(pi)),

    a = rho/s, b = h/(sqrt2 s), c = -k/sqrt2, s = sqrt(1 - rho^2). Differentiable; the absolute error is
    largest at |rho| = 1/sqrt2 (|a| = 1, where the series converges slowest): on h, k in [-3, 3] it is
    at most about 4e-2 for N = 1, 1e-2 for N = 5 and 5e-3 for N = 10, and it vanishes at rho = 0 and as
    |rho| -> 1. Where the series is undefined (|rho| = 1, infinite h or k) the exact value from
    :func:`bivariate_normal_cdf` is returned.

    Args:
        h, k: tensors broadcastable to a common shape (...), floating dtype, no NaN; +-inf allowed.
        rho: tensor broadcastable with ``h`` and ``k``, values in [-1, 1].
        terms: number N >= 1 of series terms (default 5, as in NM20), or None for the exact Phi2.
    Returns:
        tensor (...), the common dtype and device.
    """
    shape, extremes = _check_tensors(h=h, k=k, rho=rho)
    terms = _check_terms(terms)
    rho = _check_rho(rho, extremes["rho"])
    if terms is None:
        return _BivariateNormalCDF.apply(h, k, rho)
    h, k, rho = (x.reshape(-1) for x in torch.broadcast_tensors(h, k, rho))
    one_minus_sq = (1.0 - rho) * (1.0 + rho)
    regular = (one_minus_sq > 0) & torch.isfinite(h) & torch.isfinite(k)
    zero = torch.zeros_like(h)
    h_safe = torch.where(regular, h, zero)
    k_safe = torch.where(regular, k, zero)
    rho_safe = torch.where(regular, rho, zero)
    s = torch.sqrt(torch.where(regular, one_minus_sq, torch.ones_like(one_minus_sq)))
    integral = _series_integral_finite(rho_safe / s, h_safe / (_SQRT2 * s), -k_safe / _SQRT2, terms)
    value = 0.5 * normal_cdf(k_safe) + integral / (2.0 * _SQRT_PI)
    if not bool(regular.all()):
        index = torch.nonzero(~regular).squeeze(1)
        exact = _BivariateNormalCDF.apply(h[index], k[index], rho[index])
        value = value.index_put((index,), exact)
    return value.reshape(shape)
