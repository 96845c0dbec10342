# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (netmoments)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Assignment 2: the cross moment of two ReLUs
#
# **Time:** about 75 minutes (running every cell takes a few seconds).
# **Prerequisite:** chapter 3 of the book, *Two ReLUs: the cross moment*.
#
# **Learning objectives.** After this assignment you can
# 1. implement the zero-mean ReLU kernel of the 2018 paper, $\mathbb{E}[q_i q_j]$ for $\mu_i = \mu_j = 0$;
# 2. implement the general-mean cross moment with the bivariate normal CDF $\Phi_2$
#    (`netmoments.bivariate_normal_cdf`);
# 3. measure where the zero-mean kernel fails as an approximation, and show it on a plot.
#
# **How to work.** Replace every `raise NotDone()` under `# YOUR CODE HERE`; keep the names and
# signatures. Run the *Tests* cells: they print `all ... checks passed`. Grading re-runs them with more, hidden
# cases. Do not call `netmoments.relu_cross_moment`, `relu_covariance` or `zero_mean_relu_kernel` in your solution.

# %%
# %matplotlib inline
import math

import matplotlib.pyplot as plt
import torch

import netmoments as nm
from netmoments.course.checks import Check, NotDone

torch.set_default_dtype(torch.float64)


# %% [markdown]
# Throughout, as in chapter 3, $(y_i, y_j)$ is bivariate normal with means $\mu_i, \mu_j$, standard deviations
# $\sigma_i, \sigma_j > 0$ and correlation $\rho \in (-1, 1)$; $q_i = \max(y_i, 0)$, $q_j = \max(y_j, 0)$. The
# formulas are written with the standard deviations, but your functions take the **variances**
# $\sigma_i^2, \sigma_j^2$ (`var_i`, `var_j`), like `nm.relu_cross_moment(mean_i, mean_j, var_i, var_j, rho)` and
# every function of the book's code.
#
# ## Question 1: the zero-mean kernel (3 points)
#
# For $\mu_i = \mu_j = 0$ the cross moment has the arc-cosine form
#
# $$\mathbb{E}[q_i q_j] = \frac{\sigma_i \sigma_j}{2\pi}\Big(\rho \arccos(-\rho) + \sqrt{1 - \rho^2}\Big).$$
#
# Implement `zero_mean_cross_moment(var_i, var_j, rho)` (float64 tensors that broadcast).

# %% nbgrader={"grade": false, "grade_id": "zero_mean_cross_moment", "locked": false, "schema_version": 3, "solution": true, "task": false}
def zero_mean_cross_moment(var_i, var_j, rho):
    """E[relu(y_i) relu(y_j)] for zero-mean y_i, y_j with variances var_i, var_j and correlation rho."""
    ### BEGIN SOLUTION
    return torch.sqrt(var_i * var_j) * (rho * torch.arccos(-rho) + torch.sqrt(1 - rho * rho)) / (2 * math.pi)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_zero_mean_kernel", "locked": true, "points": 3.0, "schema_version": 3, "solution": false, "task": false} tags=["raises-exception"]
check = Check(globals(), "zero_mean_cross_moment")
# Visible: rho = 0 makes q_i, q_j independent: E = E[q_i] E[q_j] = sigma_i sigma_j / (2 pi).
out = check.call("zero_mean_cross_moment", torch.tensor(1.0), torch.tensor(4.0), torch.tensor(0.0), case="rho = 0")
check.close("var = (1, 4), rho = 0", out, torch.tensor(2.0 / (2 * math.pi)),
            hint="at rho = 0 the two ReLUs are independent, so E[q_i q_j] = E[q_i] E[q_j]")
# Visible: rho = 1 makes y_i = y_j (up to scale): E = sigma_i sigma_j E[relu(z)^2] = sigma_i sigma_j / 2.
out = check.call("zero_mean_cross_moment", torch.tensor(1.0), torch.tensor(1.0), torch.tensor(1.0), case="rho = 1")
check.close("var = (1, 1), rho = 1", out, torch.tensor(0.5),
            hint="at rho = 1, q_i = q_j and E[q^2] = 1/2 for a standard normal",
            diagnoses=[(torch.tensor(0.0), "arccos(rho) where the formula has arccos(-rho)")])
### BEGIN HIDDEN TESTS
from netmoments.course import references as _ref
_rho = torch.tensor([-0.99, -0.7, -0.3, 0.1, 0.45, 0.8, 0.97])
_si = torch.tensor([0.5, 1.0, 2.0, 1.5, 0.3, 3.0, 1.0])
_sj = torch.tensor([1.0, 2.5, 0.4, 1.5, 1.0, 0.7, 2.0])
out = check.call("zero_mean_cross_moment", _si ** 2, _sj ** 2, _rho, case="hidden grid")
check.close("hidden grid of (var_i, var_j, rho)", out, _ref.zero_mean_cross_moment(_si ** 2, _sj ** 2, _rho),
            hint="sigma_i sigma_j (rho arccos(-rho) + sqrt(1 - rho^2)) / (2 pi) with sigma = sqrt(var)",
            diagnoses=[(_si * _sj * (_rho * torch.arccos(_rho) + torch.sqrt(1 - _rho ** 2)) / (2 * math.pi),
                        "arccos(rho) where the formula has arccos(-rho): check rho = 1, where q_i = q_j"),
                       (_si * _sj * _rho * torch.arccos(-_rho) / (2 * math.pi),
                        "you dropped the sqrt(1 - rho^2) term"),
                       (_si ** 2 * _sj ** 2 * (_rho * torch.arccos(-_rho) + torch.sqrt(1 - _rho ** 2)) / (2 * math.pi),
                        "var_i, var_j are variances: the kernel needs the standard deviations sqrt(var_i), "
                        "sqrt(var_j), not the variances")])
### END HIDDEN TESTS
check.done()


# %% [markdown]
# ## Question 2: the general-mean cross moment (5 points)
#
# With $h_i = \mu_i/\sigma_i$, $h_j = \mu_j/\sigma_j$, $s = \sqrt{1 - \rho^2}$, the standardized distances
# $d_i = (h_i - \rho h_j)/s$ and $d_j = (h_j - \rho h_i)/s$, $\varphi$ and $\Phi$ the standard normal density and
# CDF and $\Phi_2(h_i, h_j; \rho)$ the standard bivariate normal CDF (the book's notation),
#
# $$\begin{aligned}
# \mathbb{E}[q_i q_j] ={}& (\mu_i\mu_j + \rho\sigma_i\sigma_j)\,\Phi_2(h_i, h_j; \rho)
#   + \mu_i\sigma_j\,\varphi(h_j)\,\Phi(d_i) \\
#   &+ \mu_j\sigma_i\,\varphi(h_i)\,\Phi(d_j)
#   + \sigma_i\sigma_j\, s\, \varphi(h_i)\,\varphi(d_j).
# \end{aligned}$$
#
# Implement `cross_moment(mean_i, mean_j, var_i, var_j, rho)` with `nm.bivariate_normal_cdf(h, k, rho)` for
# $\Phi_2$ (all float64 tensors that broadcast; `var_i`, `var_j` are the variances $\sigma_i^2, \sigma_j^2 > 0$,
# and $|\rho| < 1$).

# %% nbgrader={"grade": false, "grade_id": "cross_moment", "locked": false, "schema_version": 3, "solution": true, "task": false}
def cross_moment(mean_i, mean_j, var_i, var_j, rho):
    """E[relu(y_i) relu(y_j)] for a bivariate normal (means, variances var_i, var_j, correlation rho)."""
    ### BEGIN SOLUTION
    mu_i, mu_j = mean_i, mean_j
    sigma_i, sigma_j = var_i.sqrt(), var_j.sqrt()
    h_i, h_j = mu_i / sigma_i, mu_j / sigma_j
    s = torch.sqrt((1 - rho) * (1 + rho))
    pdf = lambda t: torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)
    return ((mu_i * mu_j + rho * sigma_i * sigma_j) * nm.bivariate_normal_cdf(h_i, h_j, rho)
            + mu_i * sigma_j * pdf(h_j) * torch.special.ndtr((h_i - rho * h_j) / s)
            + mu_j * sigma_i * pdf(h_i) * torch.special.ndtr((h_j - rho * h_i) / s)
            + sigma_i * sigma_j * s * pdf(h_i) * pdf((h_j - rho * h_i) / s))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_cross_moment", "locked": true, "points": 5.0, "schema_version": 3, "solution": false, "task": false} tags=["raises-exception"]
check = Check(globals(), "cross_moment")
# Visible: at zero means the general formula must give the zero-mean kernel (computed here independently).
_z = torch.tensor(0.0)
out = check.call("cross_moment", _z, _z, torch.tensor(1.0), torch.tensor(1.0), torch.tensor(0.5), case="zero means")
check.close("mean = (0, 0), var = (1, 1), rho = 0.5", out,
            torch.tensor((0.5 * math.acos(-0.5) + math.sqrt(0.75)) / (2 * math.pi)),
            hint="at mu = 0 the formula must reduce to the zero-mean kernel of question 1")
# Visible: rho = 0 factorises into E[q_i] E[q_j] (one-ReLU means from assignment 1).
_m = lambda mu, sd: mu * 0.5 * (1 + math.erf(mu / sd / math.sqrt(2))) + sd * math.exp(-0.5 * (mu / sd) ** 2) / math.sqrt(2 * math.pi)
out = check.call("cross_moment", torch.tensor(0.7), torch.tensor(-0.4), torch.tensor(1.0), torch.tensor(4.0),
                 torch.tensor(0.0), case="rho = 0")
check.close("mean = (0.7, -0.4), var = (1, 4), rho = 0", out, torch.tensor(_m(0.7, 1.0) * _m(-0.4, 2.0)),
            rtol=1e-8, hint="at rho = 0 the ReLUs are independent: E[q_i q_j] = E[q_i] E[q_j]")
### BEGIN HIDDEN TESTS
from netmoments.course import references as _ref
_mi = torch.tensor([0.5, -1.0, 2.0, 0.3, -0.2, 1.2, -2.5, 0.8])
_mj = torch.tensor([1.0, 0.4, -0.5, 0.3, -1.1, 2.0, 1.5, -0.9])
_si = torch.tensor([1.0, 0.5, 2.0, 1.3, 0.8, 1.0, 2.2, 0.6])
_sj = torch.tensor([2.0, 1.5, 1.0, 0.9, 0.5, 1.7, 1.0, 1.2])
_rho = torch.tensor([0.3, -0.6, 0.85, -0.2, 0.6, -0.9, 0.05, 0.97])
_vi, _vj = _si ** 2, _sj ** 2
out = check.call("cross_moment", _mi, _mj, _vi, _vj, _rho, case="hidden grid")
_wrong = _ref.cross_wrong_answers(_mi, _mj, _vi, _vj, _rho)
check.close("hidden grid of (mean_i, mean_j, var_i, var_j, rho)", out, _ref.cross_moment(_mi, _mj, _vi, _vj, _rho),
            rtol=1e-8, hint="compare your code with the formula term by term; test a single case with rho = 0",
            diagnoses=[(_wrong["flipped_rho"], "wrong sign of rho: the first term needs Phi_2(h_i, h_j; +rho)"),
                       (_wrong["dropped_last_term"], "you dropped the last term sigma_i sigma_j s varphi(h_i) "
                                                     "varphi(d_j)"),
                       (_wrong["dropped_mixed_term"], "you dropped one of the two mixed terms mu_i sigma_j varphi(h_j) "
                                                      "Phi(d_i) / mu_j sigma_i varphi(h_i) Phi(d_j)"),
                       (_wrong["var_as_std"], "var_i, var_j are variances: sigma = sqrt(var) and h = mu / sigma, "
                                              "not mu / var"),
                       (_wrong["zero_mean_everywhere"], "you used the zero-mean kernel for every mean; it is exact "
                                                        "only at mu_i = mu_j = 0")])
out = check.call("cross_moment", _mj, _mi, _vj, _vi, _rho, case="swapped units")
check.close("symmetry: swapping i and j", out, _ref.cross_moment(_mi, _mj, _vi, _vj, _rho), rtol=1e-8,
            hint="E[q_i q_j] is symmetric in (i, j); check both mixed terms")
### END HIDDEN TESTS
check.done()


# %% [markdown]
# ## Question 3: where does the zero-mean kernel fail? (2 points)
#
# NM18 approximates every cross moment by the zero-mean kernel, i.e. it ignores the means. Take two units with
# $\sigma_i = \sigma_j = 1$ and equal standardised means $h = \mu_i = \mu_j$. Implement
# `zero_mean_relative_error(h, rho)`: the relative error
# $|\,\text{zero-mean kernel} - \text{exact}\,| \,/\, |\text{exact}|$ of the cross moment (tensors that broadcast).

# %% nbgrader={"grade": false, "grade_id": "zero_mean_relative_error", "locked": false, "schema_version": 3, "solution": true, "task": false}
def zero_mean_relative_error(h, rho):
    """|zero-mean kernel - exact cross moment| / |exact| for unit variances and means mu_i = mu_j = h."""
    ### BEGIN SOLUTION
    one = torch.ones_like(h)
    exact = cross_moment(h, h, one, one, rho)
    approx = zero_mean_cross_moment(one, one, rho)
    return (approx - exact).abs() / exact.abs()
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_relative_error", "locked": true, "points": 2.0, "schema_version": 3, "solution": false, "task": false} tags=["raises-exception"]
check = Check(globals(), "zero_mean_relative_error")
out = check.call("zero_mean_relative_error", torch.tensor(0.0), torch.tensor(0.3), case="h = 0")
check.close("h = 0, rho = 0.3", out, torch.tensor(0.0), atol=1e-10,
            hint="at h = 0 the zero-mean kernel is exact, so the relative error is 0")
### BEGIN HIDDEN TESTS
_h = torch.tensor([-1.0, 0.5, 1.0, 2.0]).reshape(4, 1)
_rho = torch.tensor([-0.5, 0.0, 0.7])
_one = torch.ones(4, 3)
_exact = _ref.cross_moment(_h.expand(4, 3), _h.expand(4, 3), _one, _one, _rho.expand(4, 3))
_approx = _ref.zero_mean_cross_moment(_one, _one, _rho.expand(4, 3))
out = check.call("zero_mean_relative_error", _h, _rho, case="h of shape (4, 1), rho of shape (3,)")
check.close("h in {-1, 0.5, 1, 2} x rho in {-0.5, 0, 0.7}", out, (_approx - _exact).abs() / _exact.abs(), rtol=1e-7,
            hint="relative error = |approx - exact| / |exact|; broadcast h against rho",
            diagnoses=[((_approx - _exact).abs(), "you returned the absolute error; divide by |exact|"),
                       ((_approx - _exact).abs() / _approx.abs(), "divide by the exact value, not the approximation")])
### END HIDDEN TESTS
check.done()

# %% [markdown]
# ## Explore: map the failure
#
# Plot the relative error over $h \in [-2, 2]$ and $\rho \in (-1, 1)$ and mark the 10% contour. The zero-mean kernel
# is only trustworthy in a thin band around $h = 0$; for negative $h$ (units that are mostly off) it is off by
# orders of magnitude.

# %% tags=["raises-exception"]
h_grid = torch.linspace(-2.0, 2.0, 81).reshape(-1, 1)
rho_grid = torch.linspace(-0.95, 0.95, 77)
error = zero_mean_relative_error(h_grid, rho_grid)
fig, ax = plt.subplots(figsize=(6, 3.5))
image = ax.pcolormesh(rho_grid.numpy(), h_grid.flatten().numpy(), error.log10().numpy(), shading="auto", cmap="magma")
ax.contour(rho_grid.numpy(), h_grid.flatten().numpy(), error.numpy(), levels=[0.1], colors="white")
fig.colorbar(image, label="log10 relative error")
ax.set_xlabel("correlation rho")
ax.set_ylabel("standardised mean h")
ax.set_title("Zero-mean kernel vs exact cross moment (white: 10%)")
plt.show()
inside = (error < 0.1).float().mean().item()
print(f"fraction of the grid where the zero-mean kernel is within 10%: {inside:.2f}")

# %% [markdown]
# ## Reflection (not graded)
# 1. Why is the error largest for negative $h$? (Think about what the exact moment tends to as $h \to -\infty$.)
# 2. Would using the zero-mean kernel bias a network's output variance up or down for mostly-inactive units?
