"""Standard normal special functions: univariate and bivariate, exact, batched and differentiable.

All functions take tensors, broadcast over their arguments, and return a tensor of the broadcast shape with
the inputs' dtype and device. Notation follows the project spec: phi / Phi are the standard normal pdf / cdf,
phi2(h, k; rho) / Phi2(h, k; rho) the standard bivariate normal pdf / cdf with correlation rho.

- :func:`bivariate_normal_cdf` is exact to about 1e-15 in float64 (Genz's method, written from the maths,
  see Genz 2004, "Numerical computation of rectangular bivariate and trivariate normal and t
  probabilities") and has closed-form, twice-differentiable gradients.
- :func:`series_integral` and :func:`bivariate_normal_cdf_series` are the truncated series of NM20
  (Alfadly et al., arXiv 2006.11776), built of differentiable torch operations.

Only ``torch`` and ``math`` are needed at run time.
"""
import functools
import math

import torch

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
_TWO_PI = 2.0 * math.pi
# |rho| may exceed 1 by this much (round-off in a correlation computed from a covariance); it is clamped.
_RHO_TOLERANCE = 1e-12
# Beyond |x| = 40 the normal tail is below 1e-348: Phi is exactly 0 or 1 in float64, and phi, phi2 and every
# exp(-x^2) * polynomial(x) term are exactly 0. Clamping there changes no value and keeps inf - inf out.
_SATURATION = 40.0
# Genz's |rho| bands for the Plackett quadrature and the node count used in each.
_BAND_EDGES = (0.3, 0.75, 0.925, 1.0)
_BAND_NODES = (6, 12, 20)
_HIGH_CORRELATION_NODES = 20
# Rows per chunk of the (rows x nodes) quadrature tables: keeps each table inside the L2 cache.
_CHUNK_ROWS = 4096


# ----------------------------------------------------------------------------------------------------------
# Input checking
# ----------------------------------------------------------------------------------------------------------
def _check_tensors(**named):
    """Check that every argument is a floating tensor, all of one dtype and one device, with no NaN."""
    first_name, first = None, None
    for name, x in named.items():
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype}")
        if first is None:
            first_name, first = name, x
            continue
        if x.dtype != first.dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but {first_name} has dtype {first.dtype}; "
                            "convert them to one dtype")
        if x.device != first.device:
            raise ValueError(f"{name} is on device {x.device} but {first_name} is on {first.device}")
    for name, x in named.items():
        if bool(torch.isnan(x).any()):
            raise ValueError(f"{name} contains NaN")
    try:
        return torch.broadcast_shapes(*(x.shape for x in named.values()))
    except RuntimeError as error:
        shapes = ", ".join(f"{name} {tuple(x.shape)}" for name, x in named.items())
        raise ValueError(f"shapes do not broadcast: {shapes}") from error


def _check_rho(rho):
    """Reject |rho| > 1 beyond round-off; clamp the round-off away (clamp passes gradients inside [-1, 1])."""
    if rho.numel() and bool((rho.abs() > 1.0 + _RHO_TOLERANCE).any()):
        worst = rho.abs().max().item()
        raise ValueError(f"rho must lie in [-1, 1]; got |rho| up to {worst!r}")
    return rho.clamp(-1.0, 1.0)


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
    """Standard normal distribution function Phi(x) = P(X <= x), elementwise (``torch.special.ndtr``).

    Args:
        x: tensor (...), floating dtype. +-inf gives 1 or 0.
    Returns:
        tensor (...), same dtype and device as ``x``.
    """
    _check_floating(x, "x")
    return torch.special.ndtr(x)


def _check_floating(x, name):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype}")


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
    _check_tensors(h=h, k=k, rho=rho)
    rho = _check_rho(rho)
    return _bivariate_pdf(h, k, rho, on_line=math.inf)


# ----------------------------------------------------------------------------------------------------------
# Bivariate distribution function: forward values (float64, no autograd)
# ----------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _gauss_legendre(n):
    """Gauss-Legendre nodes and weights on [-1, 1], by Newton's method on the Legendre recurrence."""
    nodes, weights = [], []
    for i in range(1, n + 1):
        x = math.cos(math.pi * (i - 0.25) / (n + 0.5))
        for _ in range(100):
            p_prev, p = 1.0, x
            for j in range(2, n + 1):
                p_prev, p = p, ((2 * j - 1) * x * p - (j - 1) * p_prev) / j
            derivative = n * (x * p - p_prev) / (x * x - 1.0)
            step = p / derivative
            x -= step
            if abs(step) < 1e-17:
                break
        p_prev, p = 1.0, x
        for j in range(2, n + 1):
            p_prev, p = p, ((2 * j - 1) * x * p - (j - 1) * p_prev) / j
        derivative = n * (x * p - p_prev) / (x * x - 1.0)
        nodes.append(x)
        weights.append(2.0 / ((1.0 - x * x) * derivative * derivative))
    return tuple(nodes), tuple(weights)


def _nodes(n, like):
    nodes, weights = _gauss_legendre(n)
    return (torch.tensor(nodes, dtype=like.dtype, device=like.device),
            torch.tensor(weights, dtype=like.dtype, device=like.device))


def _plackett_band(h, k, rho, cdf_h, cdf_k, n_nodes):
    """Phi2 for |rho| < 0.925 (1-D float64 tensors): Plackett's integral in theta = arcsin(r),

    Phi2 = Phi(h) Phi(k) + (1/2pi) int_0^{arcsin rho} exp(-(h^2 + k^2 - 2 h k sin t) / (2 cos^2 t)) dt,
    by n-node Gauss-Legendre quadrature; the integrand is smooth there, so 6/12/20 nodes reach round-off.
    """
    nodes, weights = _nodes(n_nodes, h)
    fractions = 0.5 * (1.0 + nodes)
    angle = torch.asin(rho)
    hk = h * k
    half_sum_sq = 0.5 * (h * h + k * k)
    integral = torch.empty_like(h)
    for start in range(0, h.shape[0], _CHUNK_ROWS):
        rows = slice(start, start + _CHUNK_ROWS)
        sine = torch.outer(angle[rows], fractions).sin_()
        exponent = sine * hk[rows, None]
        exponent.sub_(half_sum_sq[rows, None])
        cos_sq = sine.square_().neg_().add_(1.0)
        exponent.div_(cos_sq).exp_()
        torch.mv(exponent, weights, out=integral[rows])
    return cdf_h * cdf_k + angle * integral * (0.25 / math.pi)


def _high_correlation_band(h, k, rho):
    """Phi2 for 0.925 <= |rho| < 1 (1-D float64 tensors).

    For rho > 0, Phi2 = Phi(min(h, k)) - int_rho^1 phi2(h, k; t) dt. With x = sqrt(1 - t^2) the integrand is
    exp(-(h-k)^2 / (2x^2) - hk/2) * f(x), f(x) = exp(-hk (1 - r)/(2 (1 + r))) / r, r = sqrt(1 - x^2), which
    is nearly singular at x = 0. Its Taylor part 1 + c x^2 + c d x^4 (c = (4-hk)/8, d = (12-hk)/16) is
    integrated in closed form; the smooth remainder f - (1 + c x^2 + c d x^4) by Gauss-Legendre on [0, a],
    a = sqrt(1 - rho^2). Negative rho uses Phi2(h, k; rho) = Phi(h) - Phi2(h, -k; -rho).
    """
    negative = rho < 0
    k_pos = torch.where(negative, -k, k)
    abs_rho = rho.abs()
    hk = h * k_pos
    gap_sq = (h - k_pos).square()
    a_sq = (1.0 - abs_rho) * (1.0 + abs_rho)
    a = torch.sqrt(a_sq)
    gap = torch.sqrt(gap_sq)
    c = (4.0 - hk) / 8.0
    d = (12.0 - hk) / 16.0

    # Closed form of int_0^a exp(-gap^2/(2x^2) - hk/2) (1 + c x^2 + c d x^4) dx by parts.
    taylor_bracket = 1.0 - c * (gap_sq - a_sq) * (1.0 - d * gap_sq / 5.0) / 3.0 + c * d * a_sq * a_sq / 5.0
    closed = a * torch.exp(-0.5 * (gap_sq / a_sq + hk)) * taylor_bracket
    # exp(-hk/2) * Phi(-gap/a) underflows to 0 long before hk < -100 (there gap/a > 50); the clamp only
    # keeps exp from overflowing into inf * 0.
    tail = (torch.exp(-0.5 * hk.clamp(min=-100.0)) * _SQRT_2PI * torch.special.ndtr(-gap / a) * gap
            * (1.0 - c * gap_sq * (1.0 - d * gap_sq / 5.0) / 3.0))
    closed = closed - torch.where(hk > -100.0, tail, torch.zeros_like(tail))

    nodes, weights = _nodes(_HIGH_CORRELATION_NODES, h)
    fractions = 0.5 * (1.0 + nodes)
    remainder = torch.empty_like(h)
    for start in range(0, h.shape[0], _CHUNK_ROWS):
        rows = slice(start, start + _CHUNK_ROWS)
        x_sq = torch.outer(a[rows], fractions).square_()
        r = torch.sqrt(1.0 - x_sq)
        gaussian = (gap_sq[rows, None] / x_sq).mul_(-0.5)
        # Both exponents are <= 0 for 0.925 <= rho (gap^2 >= -4hk), so neither exp can overflow.
        exact = torch.exp(gaussian - hk[rows, None] / (1.0 + r)).div_(r)
        taylor = c[rows, None] * x_sq * (1.0 + d[rows, None] * x_sq)
        taylor.add_(1.0).mul_(torch.exp(gaussian.sub_(0.5 * hk[rows, None])))
        torch.mv(exact.sub_(taylor), weights, out=remainder[rows])
    integral = (closed + 0.5 * a * remainder) / _TWO_PI

    low, high = torch.minimum(h, k), torch.maximum(h, k)
    positive_base = torch.special.ndtr(low)
    # Phi(h) - Phi(min(h, -k)) written as a difference of two lower tails, accurate in the tails.
    negative_base = torch.where(h + k > 0, positive_base - torch.special.ndtr(-high),
                                torch.zeros_like(positive_base))
    return torch.where(negative, negative_base + integral, positive_base - integral)


def _degenerate_limit(h, k, rho):
    """Phi2 at |rho| = 1: Phi(min(h, k)) for rho = 1, max(0, Phi(h) + Phi(k) - 1) for rho = -1."""
    low, high = torch.minimum(h, k), torch.maximum(h, k)
    positive = torch.special.ndtr(low)
    negative = torch.where(h + k > 0, positive - torch.special.ndtr(-high), torch.zeros_like(positive))
    return torch.where(rho > 0, positive, negative)


def _bivariate_cdf_values(h, k, rho):
    """Forward values of Phi2 on checked inputs (rho already in [-1, 1]); computed in float64."""
    shape = torch.broadcast_shapes(h.shape, k.shape, rho.shape)
    out_dtype = h.dtype
    compute = torch.float64
    h, k, rho = (torch.broadcast_to(x.to(compute), shape).reshape(-1) for x in (h, k, rho))
    h = h.clamp(-_SATURATION, _SATURATION)
    k = k.clamp(-_SATURATION, _SATURATION)
    cdf_h = torch.special.ndtr(h)
    cdf_k = torch.special.ndtr(k)
    out = torch.empty_like(h)
    if out.numel():
        edges = torch.tensor(_BAND_EDGES, dtype=compute, device=h.device)
        band = torch.bucketize(rho.abs(), edges, right=True)
        for index_of_band in range(len(_BAND_EDGES) + 1):
            index = torch.nonzero(band == index_of_band).squeeze(1)
            if index.numel() == 0:
                continue
            hb, kb, rb = h[index], k[index], rho[index]
            if index_of_band < len(_BAND_NODES):
                values = _plackett_band(hb, kb, rb, cdf_h[index], cdf_k[index], _BAND_NODES[index_of_band])
            elif index_of_band == len(_BAND_NODES):
                values = _high_correlation_band(hb, kb, rb)
            else:
                values = _degenerate_limit(hb, kb, rb)
            out[index] = values
        # Round-off must not leave the Frechet bounds max(0, Phi(h)+Phi(k)-1) <= Phi2 <= min(Phi(h), Phi(k)).
        upper = torch.minimum(cdf_h, cdf_k)
        lower = (cdf_h + cdf_k - 1.0).clamp_(min=0.0)
        out = torch.minimum(torch.maximum(out, lower), upper)
    return out.reshape(shape).to(out_dtype)


# ----------------------------------------------------------------------------------------------------------
# Bivariate distribution function: autograd
# ----------------------------------------------------------------------------------------------------------
def _conditional_cdf(h, k, rho, one_minus, one_plus, sqrt_variance, interior):
    """Phi((k - rho h) / s), the derivative factor of Phi2 in h; the step function (1/2 at a tie) at s = 0.

    k - rho h is formed as (k - h) + (1 - rho) h for rho >= 0 and (k + h) - (1 + rho) h for rho < 0: both
    differences are exact near |rho| = 1, where the plain form loses all digits to cancellation.
    """
    numerator = torch.where(rho >= 0, (k - h) + one_minus * h, (k + h) - one_plus * h)
    smooth = torch.special.ndtr(numerator / sqrt_variance)
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

    Exact to about 1e-15 absolute (computed in float64 for every input dtype, then cast back), by Genz's
    method: Gauss-Legendre quadrature of Plackett's integral with 6/12/20 nodes for |rho| < 0.3/0.75/0.925,
    and for 0.925 <= |rho| < 1 a closed-form integral of the near-singular part plus 20-node quadrature of
    the rest. |rho| = 1 and infinite h, k give the exact limits Phi(min(h, k)), max(0, Phi(h) + Phi(k) - 1)
    and the univariate margins.

    Gradients are closed form: dPhi2/dh = phi(h) Phi((k - rho h)/s), dPhi2/dk = phi(k) Phi((h - rho k)/s),
    dPhi2/drho = phi2(h, k; rho), s = sqrt(1 - rho^2); at s = 0 the Phi factor is a step (1/2 on a tie) and
    dPhi2/drho is 0. The backward is itself differentiable (double backward works).

    Args:
        h, k: tensors broadcastable to a common shape (...), floating dtype, no NaN; +-inf allowed.
        rho: tensor broadcastable with ``h`` and ``k``, values in [-1, 1] (|rho| - 1 <= 1e-12 is clamped).
    Returns:
        tensor (...), the common dtype and device, values in [0, 1].
    """
    _check_tensors(h=h, k=k, rho=rho)
    rho = _check_rho(rho)
    return _BivariateNormalCDF.apply(h, k, rho)


# ----------------------------------------------------------------------------------------------------------
# NM20 series
# ----------------------------------------------------------------------------------------------------------
def _series_inner(a, b, c, terms):
    """NM20's truncated series I_N(a, b, c) for |a| <= 1 (finite tensors, any shape).

    1 - P(u+1, c^2) = e^{-c^2} sum_{j<=u} c^{2j} / j! and 1 - sign(c) P(u+3/2, c^2) = erfc(c) + e^{-c^2}
    sum_{j<=u} c^{2j+1} / Gamma(j+3/2) (recurrences from P(1, x) = 1 - e^{-x}, P(1/2, x) = erf(sqrt x)):
    polynomials times exponentials, so autograd differentiates everything, including in c.
    """
    b = b.clamp(-_SATURATION, _SATURATION)
    c = c.clamp(-_SATURATION, _SATURATION)
    exp_b = torch.exp(-b * b)
    c_sq = c * c
    exp_c = torch.exp(-c_sq)
    erfc_c = torch.erfc(c)
    half_a = 0.5 * a
    half_a_sq = half_a * half_a
    two_b = 2.0 * b

    hermite_even, hermite_odd = torch.ones_like(b), two_b  # H_0, H_1
    integer_term = torch.ones_like(c)                       # c^{2u} / u!
    half_term = c / math.gamma(1.5)                          # c^{2u+1} / Gamma(u + 3/2)
    integer_sum, half_sum = integer_term, half_term
    power = half_a                                           # (a/2)^{2u+1}
    total = torch.zeros_like(exp_b)
    for u in range(terms):
        if u > 0:
            # H_{n+1} = 2b H_n - 2n H_{n-1}, twice: (H_{2u-2}, H_{2u-1}) -> (H_{2u}, H_{2u+1}).
            hermite_even = two_b * hermite_odd - (4 * u - 2) * hermite_even
            hermite_odd = two_b * hermite_even - (4 * u) * hermite_odd
            integer_term = integer_term * c_sq / u
            half_term = half_term * c_sq / (u + 0.5)
            integer_sum = integer_sum + integer_term
            half_sum = half_sum + half_term
            power = power * half_a_sq
        total = (total
                 + power * hermite_even * (exp_c * integer_sum) / math.gamma(u + 1.5)
                 - power * half_a * hermite_odd * (erfc_c + exp_c * half_sum) / math.gamma(u + 2.0))
    return 0.5 * _SQRT_PI * torch.erf(b) * erfc_c + exp_b * total


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
    return 2.0 * _SQRT_PI * (_BivariateNormalCDF.apply(h, k, rho.clamp(-1.0, 1.0)) - 0.5 * torch.special.ndtr(k))


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
    shape = _check_tensors(a=a, b=b, c=c)
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

    a = rho/s, b = h/(sqrt2 s), c = -k/sqrt2, s = sqrt(1 - rho^2). Cheap and differentiable; with N = 5 the
    error is a few 1e-3 at worst (near |rho| ~ 0.6-0.8), tiny near rho = 0 and |rho| -> 1. Where the series
    is undefined (|rho| = 1, infinite h or k) the exact value from :func:`bivariate_normal_cdf` is returned.

    Args:
        h, k: tensors broadcastable to a common shape (...), floating dtype, no NaN; +-inf allowed.
        rho: tensor broadcastable with ``h`` and ``k``, values in [-1, 1].
        terms: number N >= 1 of series terms (default 5, as in NM20), or None for the exact Phi2.
    Returns:
        tensor (...), the common dtype and device.
    """
    shape = _check_tensors(h=h, k=k, rho=rho)
    terms = _check_terms(terms)
    rho = _check_rho(rho)
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
    value = 0.5 * torch.special.ndtr(k_safe) + integral / (2.0 * _SQRT_PI)
    if not bool(regular.all()):
        index = torch.nonzero(~regular).squeeze(1)
        exact = _BivariateNormalCDF.apply(h[index], k[index], rho[index])
        value = value.index_put((index,), exact)
    return value.reshape(shape)
