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
# # Assignment 1: the ReLU of a Gaussian
#
# **Time:** about 60 minutes (running every cell takes a few seconds).
# **Prerequisite:** chapter 2 of the book, *One ReLU, one Gaussian*.
#
# **Learning objectives.** After this assignment you can
# 1. derive and implement the mean and variance of $q = \max(z, 0)$ for $z \sim \mathcal{N}(\mu, \sigma^2)$,
#    batched over broadcasting tensors;
# 2. handle the degenerate input $\sigma = 0$ and both tails ($|\mu|/\sigma$ large) without NaN or negative
#    variances;
# 3. check a closed form against Monte Carlo with a z-score, i.e. an error measured in standard errors.
#
# **How to work.** Replace every `raise NotDone()` under `# YOUR CODE HERE` with your code; leave
# the function names and signatures as they are. Each *Tests* cell checks your work on a few visible cases and
# prints `all ... checks passed`; grading re-runs the same cells with more, hidden cases (other values, edge
# cases), so make your code correct, not just the visible cases. Do not call `netmoments.relu_moments` in your
# solution: that is what you are re-deriving.

# %%
import math

import torch

from netmoments.course.checks import Check, NotDone

torch.set_default_dtype(torch.float64)


# %% [markdown]
# ## Question 1: mean and variance of $\max(z, 0)$ (7 points)
#
# With $h = \mu/\sigma$, $\Phi$ the standard normal CDF and $\varphi$ its density (the book's notation),
#
# $$\begin{aligned}
#   \mathbb{E}[q] &= \mu\,\Phi(h) + \sigma\,\varphi(h),\\
#   \mathbb{E}[q^2] &= (\mu^2 + \sigma^2)\,\Phi(h) + \mu\sigma\,\varphi(h),\\
#   \operatorname{Var}[q] &= \mathbb{E}[q^2] - \mathbb{E}[q]^2 .
# \end{aligned}$$
#
# Implement `relu_mean_var(mean, var)`:
# - `mean` is $\mu$ and `var` is the **variance** $\sigma^2 \ge 0$ (not the standard deviation: like
#   `nm.relu_moments(mean, var)` and every function of the book's code, it takes a variance); float64 tensors
#   that broadcast against each other.
# - returns `(mean, var)`, two tensors of the broadcast shape and dtype.
# - at $\sigma = 0$, $z$ is the constant $\mu$: return the exact limit, not NaN.
# - a variance is never negative, even after round-off.
#
# `torch.special.ndtr` is $\Phi$; `torch.where` picks between two branches elementwise.

# %% nbgrader={"grade": false, "grade_id": "relu_mean_var", "locked": false, "schema_version": 3, "solution": true, "task": false}
def relu_mean_var(mean, var):
    """Mean and variance of max(z, 0), z ~ N(mean, var), elementwise; mean and var broadcast."""
    ### BEGIN SOLUTION
    mu, var = torch.broadcast_tensors(mean, var)
    positive = var > 0
    safe_sigma = torch.where(positive, var, torch.ones_like(var)).sqrt()  # no 0/0 in the discarded branch
    h = mu / safe_sigma
    cdf = torch.special.ndtr(h)
    pdf = torch.exp(-0.5 * h * h) / math.sqrt(2 * math.pi)
    mean = mu * cdf + safe_sigma * pdf
    second = (mu * mu + safe_sigma * safe_sigma) * cdf + mu * safe_sigma * pdf
    var = (second - mean * mean).clamp(min=0.0)
    mean = torch.where(positive, mean, mu.clamp(min=0.0))
    var = torch.where(positive, var, torch.zeros_like(var))
    return mean, var
    ### END SOLUTION


# %% [markdown]
# Try it on a few values before running the tests (the second argument holds variances):

# %% tags=["raises-exception"]
mean, var = relu_mean_var(torch.tensor([-1.0, 0.0, 2.0]), torch.tensor([1.0, 1.0, 0.25]))  # variances
print("mean:", [round(v, 4) for v in mean.tolist()])
print("var: ", [round(v, 4) for v in var.tolist()])

# %% [markdown]
# ### Tests: regular inputs (3 points)

# %% nbgrader={"grade": true, "grade_id": "test_relu_regular", "locked": true, "points": 3.0, "schema_version": 3, "solution": false, "task": false} tags=["raises-exception"]
check = Check(globals(), "relu_mean_var, regular inputs")
# Visible: the standard normal, where E[q] = 1/sqrt(2 pi) and Var[q] = 1/2 - 1/(2 pi).
out = check.call("relu_mean_var", torch.tensor(0.0), torch.tensor(1.0), case="mean = 0, var = 1")
if out is not None:
    check.close("mean = 0, var = 1: mean", out[0], torch.tensor(1 / math.sqrt(2 * math.pi)),
                hint="E[q] = mu Phi(h) + sigma varphi(h) with h = mu / sigma and sigma = sqrt(var)")
    # E[q^2] = 1/2 here; it is "the second moment" only if the mean beside it is right.
    _mean_ok = bool(torch.isclose(torch.as_tensor(out[0], dtype=torch.float64),
                                  torch.tensor(1 / math.sqrt(2 * math.pi)), rtol=1e-9, atol=0).all())
    check.close("mean = 0, var = 1: var", out[1], torch.tensor(0.5 - 1 / (2 * math.pi)),
                hint="Var[q] = E[q^2] - E[q]^2",
                diagnoses=[(torch.tensor(0.5), "you returned the second moment E[q^2], not the variance "
                                               "E[q^2] - E[q]^2")] if _mean_ok else [])
### BEGIN HIDDEN TESTS
import netmoments as _nm
from netmoments.course import references as _ref
_mu = torch.tensor([-3.0, -1.5, -0.4, 0.0, 0.3, 1.0, 2.2, 3.0, -0.8, 1.7])
_sigma = torch.tensor([1.0, 2.5, 0.5, 3.0, 0.7, 1.0, 1.5, 0.4, 2.0, 4.0])
_want_mean, _want_var = _nm.relu_moments(_mu, _sigma ** 2)
out = check.call("relu_mean_var", _mu, _sigma ** 2, case="hidden grid of (mean, var)")
if out is not None:
    _wrong = _ref.relu_wrong_answers(_mu, _sigma ** 2)
    check.close("hidden grid of (mean, var): mean", out[0], _want_mean,
                hint="E[q] = mu Phi(mu/sigma) + sigma varphi(mu/sigma) with sigma = sqrt(var)",
                diagnoses=[(_wrong["mean_without_pdf_term"], "you dropped the sigma varphi(h) term of the mean"),
                           (_wrong["var_as_std_mean"], "var is the variance sigma^2; you used it as the standard "
                                                       "deviation (h = mu / sqrt(var), not mu / var)"),
                           (_wrong["zero_mean_mean"], "you used the zero-mean formula sigma / sqrt(2 pi) for "
                                                      "every mu; it holds only at mu = 0"),
                           (_wrong["flipped_sign_mean"], "wrong sign: the ReLU keeps z > 0, so h = +mu / sigma")])
    check.close("hidden grid of (mean, var): var", out[1], _want_var,
                hint="Var[q] = E[q^2] - E[q]^2 with E[q^2] = (mu^2 + sigma^2) Phi(h) + mu sigma varphi(h)",
                diagnoses=[(_wrong["second_moment"], "you returned the second moment E[q^2], not the variance "
                                                     "E[q^2] - E[q]^2"),
                           (_wrong["var_as_std_var"], "var is the variance sigma^2; you used it as the "
                                                      "standard deviation"),
                           (_wrong["zero_mean_var"], "you used the zero-mean formula sigma^2 (1/2 - 1/(2 pi)) for "
                                                     "every mu; it holds only at mu = 0")])
### END HIDDEN TESTS
check.done()

# %% [markdown]
# ### Tests: $\sigma = 0$ (2 points)
#
# A Gaussian with $\sigma = 0$ is the constant $\mu$, so $q = \max(\mu, 0)$ exactly, with variance 0. The formula
# divides by $\sigma$: handle this case explicitly.

# %% nbgrader={"grade": true, "grade_id": "test_relu_degenerate", "locked": true, "points": 2.0, "schema_version": 3, "solution": false, "task": false} tags=["raises-exception"]
check = Check(globals(), "relu_mean_var at sigma = 0")
_hint0 = ("at sigma = 0 the ReLU of a constant is max(mu, 0) with variance 0; select it with torch.where and "
          "keep the other branch free of 0/0 (torch.where does not stop a NaN computed in the branch it discards "
          "from reaching gradients, and 0 / 0 is NaN)")
out = check.call("relu_mean_var", torch.tensor(1.5), torch.tensor(0.0), case="mean = 1.5, var = 0")
if out is not None:
    check.close("mean = 1.5, var = 0: mean", out[0], torch.tensor(1.5), hint=_hint0)
    check.close("mean = 1.5, var = 0: var", out[1], torch.tensor(0.0), hint=_hint0)
### BEGIN HIDDEN TESTS
import netmoments as _nm
for _m in (0.0, -2.0):
    out = check.call("relu_mean_var", torch.tensor(_m), torch.tensor(0.0), case=f"mean = {_m}, var = 0")
    if out is not None:
        check.close(f"mean = {_m}, var = 0: mean", out[0], torch.tensor(max(_m, 0.0)), hint=_hint0)
        check.close(f"mean = {_m}, var = 0: var", out[1], torch.tensor(0.0), hint=_hint0)
_mu = torch.tensor([-1.0, 0.0, 2.0, 0.5])
_sigma = torch.tensor([0.0, 0.0, 0.0, 1.0])
_want = _nm.relu_moments(_mu, _sigma ** 2)
out = check.call("relu_mean_var", _mu, _sigma ** 2, case="batch mixing sigma = 0 and sigma > 0")
if out is not None:
    check.close("batch mixing sigma = 0 and sigma > 0: mean", out[0], _want[0], hint=_hint0)
    check.close("batch mixing sigma = 0 and sigma > 0: var", out[1], _want[1], hint=_hint0)
### END HIDDEN TESTS
check.done()

# %% [markdown]
# ### Tests: the tails (1 point)
#
# Far in the upper tail ($\mu \gg \sigma$) the ReLU does nothing: $q \approx z$. Far in the lower tail
# ($\mu \ll -\sigma$) it is almost always 0. Your answer must stay finite and the variance non-negative.

# %% nbgrader={"grade": true, "grade_id": "test_relu_tails", "locked": true, "points": 1.0, "schema_version": 3, "solution": false, "task": false} tags=["raises-exception"]
check = Check(globals(), "relu_mean_var in the tails")
out = check.call("relu_mean_var", torch.tensor(8.0), torch.tensor(1.0), case="mean = 8, var = 1")
if out is not None:
    check.close("mean = 8, var = 1: mean", out[0], torch.tensor(8.0), hint="the upper tail: E[q] ~ mu")
    check.close("mean = 8, var = 1: var", out[1], torch.tensor(1.0), hint="the upper tail: Var[q] ~ sigma^2")
### BEGIN HIDDEN TESTS
import netmoments as _nm
_mu = torch.tensor([40.0, 10.0, -10.0, -40.0, -300.0, 300.0]) * 0.5
_sigma = torch.full_like(_mu, 0.5)
_want = _nm.relu_moments(_mu, _sigma ** 2)
out = check.call("relu_mean_var", _mu, _sigma ** 2, case="mu / sigma in {80, 20, -20, -80, -600, 600}")
if out is not None:
    check.close("|mu| / sigma up to 600: mean", out[0], _want[0],
                hint="keep h = mu / sigma finite and use torch.special.ndtr (not 1 - ndtr(-h))")
    check.close("|mu| / sigma up to 600: var", out[1], _want[1],
                hint="in the tails E[q^2] - E[q]^2 cancels; clamp the round-off at 0")
    check.true("|mu| / sigma up to 600: var >= 0", bool((out[1] >= 0).all()),
               f"a variance came out negative: {out[1].min().item():.3g}",
               hint="E[q^2] - E[q]^2 can round below zero; clamp it with .clamp(min=0)")
### END HIDDEN TESTS
check.done()

# %% [markdown]
# ### Tests: batches and broadcasting (1 point)

# %% nbgrader={"grade": true, "grade_id": "test_relu_broadcast", "locked": true, "points": 1.0, "schema_version": 3, "solution": false, "task": false} tags=["raises-exception"]
check = Check(globals(), "relu_mean_var on batches")
_mu = torch.linspace(-1.0, 1.0, 3).reshape(3, 1)
_var = torch.tensor([0.25, 1.0, 2.25, 4.0])
out = check.call("relu_mean_var", _mu, _var, case="mean of shape (3, 1), var of shape (4,)")
if out is not None:
    check.true("shapes (3, 1) and (4,)", tuple(out[0].shape) == (3, 4) and tuple(out[1].shape) == (3, 4),
               f"expected two (3, 4) tensors, got shapes {tuple(out[0].shape)} and {tuple(out[1].shape)}",
               hint="use tensor operations that broadcast; avoid .item(), math.* and Python loops")
    check.true("dtype", out[0].dtype == torch.float64 and out[1].dtype == torch.float64,
               f"expected float64, got {out[0].dtype} and {out[1].dtype}",
               hint="keep the inputs' dtype: do not convert with .float() or build new tensors without dtype")
### BEGIN HIDDEN TESTS
import netmoments as _nm
_mu = torch.randn(2, 1, 5, generator=torch.Generator().manual_seed(1))
_sigma = torch.rand(3, 1, generator=torch.Generator().manual_seed(2)) + 0.1
_want = _nm.relu_moments(_mu, _sigma ** 2)
out = check.call("relu_mean_var", _mu, _sigma ** 2, case="mean of shape (2, 1, 5), var of shape (3, 1)")
if out is not None:
    check.close("shapes (2, 1, 5) and (3, 1): mean", out[0], _want[0])
    check.close("shapes (2, 1, 5) and (3, 1): var", out[1], _want[1])
### END HIDDEN TESTS
check.done()


# %% [markdown]
# ## Question 2: check it against Monte Carlo (2 points)
#
# A closed form is only as good as its check. Draw $z_1, \dots, z_n \sim \mathcal{N}(\mu, \sigma^2)$, put them
# through the ReLU, and compare the sample mean $\bar q$ with your $\mathbb{E}[q]$ **in units of the standard error**
# $\mathrm{SE} = s / \sqrt{n}$, where $s$ is the sample standard deviation of the $q_k$ (unbiased, divide by
# $n - 1$). The z-score $(\bar q - \mathbb{E}[q]) / \mathrm{SE}$ is roughly standard normal when the formula is right,
# so $|z| > 4$ is a red flag, whatever $n$.
#
# Implement `relu_mean_z_score(mean, var, samples)`: `mean` ($\mu$) and `var` ($\sigma^2$) are 0-d tensors,
# `samples` a 1-d tensor of draws of $z$; return the z-score as a 0-d tensor (use your `relu_mean_var`).

# %% nbgrader={"grade": false, "grade_id": "relu_mean_z_score", "locked": false, "schema_version": 3, "solution": true, "task": false}
def relu_mean_z_score(mean, var, samples):
    """(mean of relu(samples) - E[q]) / (sample std / sqrt(n)) for z ~ N(mean, var) drawn as `samples`."""
    ### BEGIN SOLUTION
    q = samples.clamp(min=0.0)
    exact_mean, _ = relu_mean_var(mean, var)
    standard_error = q.std() / math.sqrt(q.numel())
    return (q.mean() - exact_mean) / standard_error
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_relu_z_score", "locked": true, "points": 2.0, "schema_version": 3, "solution": false, "task": false} tags=["raises-exception"]
check = Check(globals(), "relu_mean_z_score")
_gen = torch.Generator().manual_seed(0)
_samples = 0.3 + 2.0 * torch.randn(20_000, generator=_gen)
_q = _samples.clamp(min=0)
_se = _q.std() / math.sqrt(_q.numel())
_exact = (0.3 * torch.special.ndtr(torch.tensor(0.15)) + 2.0 * torch.exp(torch.tensor(-0.5 * 0.15 ** 2))
          / math.sqrt(2 * math.pi))
_want = (_q.mean() - _exact) / _se
out = check.call("relu_mean_z_score", torch.tensor(0.3), torch.tensor(4.0), _samples, case="mean = 0.3, var = 4")
if out is not None:
    check.close("mean = 0.3, var = 4: |z|", torch.as_tensor(out).abs(), _want.abs(), rtol=1e-6,
                hint="z = (sample mean of relu(z_k) - E[q]) / (s / sqrt(n)), s the sample std of relu(z_k)",
                diagnoses=[(_want.abs() / math.sqrt(_q.numel()),
                            "you divided by the sample standard deviation s; the standard error of a mean of n "
                            "draws is s / sqrt(n)"),
                           (((_samples.mean() - _exact) / (_samples.std() / math.sqrt(_q.numel()))).abs(),
                            "you averaged the raw draws z_k; put them through the ReLU first")])
### BEGIN HIDDEN TESTS
import netmoments as _nm
_samples = -1.0 + 0.5 * torch.randn(50_000, generator=_gen)
_q = _samples.clamp(min=0)
_want = (_q.mean() - _nm.relu_moments(torch.tensor(-1.0), torch.tensor(0.25))[0]) / (_q.std() / math.sqrt(_q.numel()))
out = check.call("relu_mean_z_score", torch.tensor(-1.0), torch.tensor(0.25), _samples, case="mean = -1, var = 0.25")
if out is not None:
    check.close("mean = -1, var = 0.25: |z|", torch.as_tensor(out).abs(), _want.abs(), rtol=1e-6,
                hint="z = (sample mean of relu(z_k) - E[q]) / (s / sqrt(n))")
### END HIDDEN TESTS
check.done()

# %% [markdown]
# ## Explore: how far off is Monte Carlo?
#
# With both pieces in place, z-scores over a grid should look like draws from a standard normal: mostly within
# $\pm 2$, essentially never beyond $\pm 4$. (A wrong formula shows up as z-scores that *grow* with $n$.)

# %% tags=["raises-exception"]
generator = torch.Generator().manual_seed(1)
for mu_value, sigma_value in [(-2.0, 1.0), (0.0, 1.0), (0.5, 3.0), (4.0, 0.5)]:
    draws = mu_value + sigma_value * torch.randn(100_000, generator=generator)
    z = relu_mean_z_score(torch.tensor(mu_value), torch.tensor(sigma_value ** 2), draws)
    print(f"mu = {mu_value:5.1f}, sigma = {sigma_value:3.1f}: z = {z.item():+.2f}")

# %% [markdown]
# ## Reflection (not graded)
# 1. Why does the variance formula lose accuracy for $\mu \ll -\sigma$, and why does that not matter for the
#    mean and variance in absolute terms?
# 2. The zero-mean formulas $\sigma/\sqrt{2\pi}$ and $\sigma^2(1/2 - 1/(2\pi))$ are exact at $\mu = 0$. For which
#    $|\mu|/\sigma$ is their relative error above 10%?
