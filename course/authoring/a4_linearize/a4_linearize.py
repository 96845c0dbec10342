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
# # Assignment 4: linearizing a small CNN
#
# **Time:** about 45 minutes (running every cell takes well under a minute).
# **Prerequisite:** chapters 6 and 7 of the book, *Linearizing deep networks* and *How tight is it?*.
#
# **Learning objectives.** After this assignment you can
# 1. approximate a CNN around a point by two-stage linearization (TSL), $g(x) \approx B\,\mathrm{relu}(Ax + c_1) + c_2$,
#    with `netmoments.linearize.two_stage_linearize`, and get its output moments under Gaussian noise;
# 2. measure how tight the approximation is against Monte Carlo on the real network, in standard errors;
# 3. explain why tightness changes as the point moves (the linear region of the layers before the kept ReLU).
#
# **How to work.** Replace every `raise NotDone()` under `# YOUR CODE HERE`; keep names and
# signatures. Run the *Tests* cells (`all ... checks passed`); grading adds hidden cases.

# %%
# %matplotlib inline
import math

import matplotlib.pyplot as plt
import torch
from torch import nn

import netmoments as nm
from netmoments.course.checks import Check, NotDone
from netmoments.linearize import two_stage_linearize

torch.set_default_dtype(torch.float64)


def small_cnn(seed=0):
    """A 1x10x10 -> 3 CNN with two ReLUs (random weights, fixed by the seed)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(4 * 5 * 5, 20), nn.ReLU(), nn.Linear(20, 3),
    ).double().eval()


cnn = small_cnn()
x0 = torch.rand(1, 10, 10, generator=torch.Generator().manual_seed(1))
direction = torch.randn(1, 10, 10, generator=torch.Generator().manual_seed(2))
direction = direction / direction.norm()


# %% [markdown]
# ## Question 1: TSL output moments (3 points)
#
# `two_stage_linearize(model, point)` keeps the **last** ReLU and linearizes everything before it (stage 1: $A$, $c_1$)
# and after it (stage 2: $B$, $c_2$) at `point`; it returns an `nm.AffineReLUAffine` acting on the *flattened*
# input. Implement `tsl_output_moments(model, point, var)`: the mean and the variance of the TSL approximation's
# three outputs (two tensors of shape `(3,)`) for $x \sim \mathcal{N}(\text{point}, \sigma^2 I)$. `point` has
# shape `(1, 10, 10)`; `var` is the per-pixel noise **variance** $\sigma^2$ (not the standard deviation: like
# `nm.relu_moments(mean, var)` and every function of the book's code, it takes a variance).
# Hint: `net.moments(mean, cov, output="var")`.

# %% nbgrader={"grade": false, "grade_id": "tsl_output_moments", "locked": false, "schema_version": 3, "solution": true, "task": false}
def tsl_output_moments(model, point, var):
    """Mean and variance, each (outputs,), of the two-stage linearization at `point` under N(point, var I)."""
    ### BEGIN SOLUTION
    net = two_stage_linearize(model, point)
    n = point.numel()
    return net.moments(point.flatten(), var * torch.eye(n), output="var")
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_tsl_moments", "locked": true, "points": 3.0, "schema_version": 3, "solution": false, "task": false} tags=["raises-exception"]
check = Check(globals(), "tsl_output_moments")
# Visible: with almost no noise, the mean is the network's output at the point and the variance is tiny.
out = check.call("tsl_output_moments", cnn, x0, 1e-12, case="var = 1e-12")
if out is not None:
    with torch.no_grad():
        _f0 = cnn(x0.unsqueeze(0))[0]
    check.close("var = 1e-12: mean ~ cnn(x0)", out[0], _f0, rtol=1e-6, atol=1e-8,
                hint="linearize AT the point: two_stage_linearize(model, point)")
    check.true("var = 1e-12: variance ~ 0", bool((torch.as_tensor(out[1]).abs() < 1e-8).all()),
               f"expected a variance near 0, got {out[1]}")
### BEGIN HIDDEN TESTS
for _var, _pt in ((0.01, x0), (0.09, x0 + 0.8 * direction)):
    _net = two_stage_linearize(cnn, _pt)
    _want = _net.moments(_pt.flatten(), _var * torch.eye(100), output="var")
    out = check.call("tsl_output_moments", cnn, _pt, _var, case=f"var = {_var}")
    if out is not None:
        _first = two_stage_linearize(cnn, _pt, relu_index=0).moments(_pt.flatten(), _var * torch.eye(100),
                                                                      output="var")
        # var squared as if it were a standard deviation
        _squared = _net.moments(_pt.flatten(), _var ** 2 * torch.eye(100), output="var")
        check.close(f"var = {_var}: mean", out[0], _want[0], rtol=1e-8,
                    hint="the TSL mean is E[B relu(A x + c1) + c2], not the network at the point",
                    diagnoses=[(_first[0], "you kept the first ReLU (relu_index=0); TSL keeps the last one"),
                               (_squared[0], "var is the variance sigma^2; the covariance is var I, not var^2 I")])
        check.close(f"var = {_var}: variance", out[1], _want[1], rtol=1e-8,
                    hint="Sigma = var I on the flattened input",
                    diagnoses=[(_squared[1], "var is the variance sigma^2; you used it as the standard deviation: "
                                             "the covariance is var I, not var^2 I"),
                               (_first[1], "you kept the first ReLU (relu_index=0); TSL keeps the last one")])
### END HIDDEN TESTS
check.done()


# %% [markdown]
# ## Question 2: how tight is it? (3 points)
#
# Given $N$ standard normal draws `noise` of shape `(N, 1, 10, 10)`, the real network's outputs at
# $\text{point} + \sigma\,\text{noise}_j$, $j = 1, \dots, N$, with $\sigma$ the standard deviation
# (`var` $= \sigma^2$), are Monte Carlo samples of $f(x)$, $x \sim \mathcal{N}(\text{point}, \sigma^2 I)$. Implement
# `tsl_max_abs_z(model, point, var, noise)`: the largest (over the outputs) $|z|$ of the TSL mean,
# $z = (\bar f - \mathbb{E}_{\text{TSL}}[g]) / (s/\sqrt N)$, with $\bar f$ the sample mean and $s$ the unbiased
# sample standard deviation of the draws. Return a
# Python float or 0-d tensor. Large values mean the TSL moments are not those of the real network.

# %% nbgrader={"grade": false, "grade_id": "tsl_max_abs_z", "locked": false, "schema_version": 3, "solution": true, "task": false}
def tsl_max_abs_z(model, point, var, noise):
    """max over outputs of |MC mean - TSL mean| / (s / sqrt(N)), the real network sampled at point + sqrt(var) noise."""
    ### BEGIN SOLUTION
    mean, _ = tsl_output_moments(model, point, var)
    with torch.no_grad():
        outputs = model(point + math.sqrt(var) * noise)
    standard_error = outputs.std(0) / math.sqrt(outputs.shape[0])
    return ((outputs.mean(0) - mean) / standard_error).abs().max()
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_tsl_z", "locked": true, "points": 3.0, "schema_version": 3, "solution": false, "task": false} tags=["raises-exception"]
check = Check(globals(), "tsl_max_abs_z")
_noise = torch.randn(4000, 1, 10, 10, generator=torch.Generator().manual_seed(5))


def _max_z(point, var, noise, se_scale=1.0, noise_scale=None):
    _m, _ = two_stage_linearize(cnn, point).moments(point.flatten(), var * torch.eye(100), output="var")
    with torch.no_grad():
        _out = cnn(point + (math.sqrt(var) if noise_scale is None else noise_scale) * noise)
    return ((_out.mean(0) - _m) / (_out.std(0) / math.sqrt(_out.shape[0]) * se_scale)).abs().max()


out = check.call("tsl_max_abs_z", cnn, x0, 0.0025, _noise, case="var = 0.0025 at x0")
if out is not None:
    check.close("var = 0.0025 at x0", torch.as_tensor(out), _max_z(x0, 0.0025, _noise), rtol=1e-6,
                check_dtype=False, hint="z = (sample mean - TSL mean) / (s / sqrt(N)); max of |z| over the 3 outputs",
                diagnoses=[(_max_z(x0, 0.0025, _noise, se_scale=math.sqrt(4000)),
                            "the standard error is s / sqrt(N), not s"),
                           (_max_z(x0, 0.0025, _noise, noise_scale=0.0025),
                            "var is the variance sigma^2; scale the standard normal draws by the standard "
                            "deviation sqrt(var), not by var")])
### BEGIN HIDDEN TESTS
_pt = x0 + 1.5 * direction
out = check.call("tsl_max_abs_z", cnn, _pt, 0.09, _noise[:2000], case="var = 0.09, moved point")
if out is not None:
    check.close("var = 0.09 at x0 + 1.5 d", torch.as_tensor(out), _max_z(_pt, 0.09, _noise[:2000]), rtol=1e-6,
                check_dtype=False, hint="sample the real network at point + sqrt(var) * noise",
                diagnoses=[(_max_z(_pt, 0.09, _noise[:2000], noise_scale=1.0),
                            "you sampled point + noise: scale the standard normal draws by sigma = sqrt(var)"),
                           (_max_z(_pt, 0.09, _noise[:2000], noise_scale=0.09),
                            "var is the variance sigma^2; scale the standard normal draws by the standard "
                            "deviation sqrt(var), not by var"),
                           (_max_z(_pt, 0.09, _noise[:2000], se_scale=math.sqrt(2000)),
                            "the standard error is s / sqrt(N), not s")])
### END HIDDEN TESTS
check.done()

# %% [markdown]
# ## Explore: tightness as the point moves
#
# Walk along $x_0 + t\,\zeta$, with $\zeta$ a random unit direction (`direction`), and track the TSL's max $|z|$
# at a fixed noise variance $\sigma^2$, together with the share of first-layer ReLUs whose pre-activation is within
# $2\sigma\,\lVert w\rVert$ of zero (units the noise can switch, which breaks stage 1's linearity).
# Where many first-layer units sit near their kink, the TSL is loose.

# %% tags=["raises-exception"]
var = 0.02 ** 2
sigma = math.sqrt(var)  # the near-kink band is measured in standard deviations
noise = torch.randn(3000, 1, 10, 10, generator=torch.Generator().manual_seed(7))
ts = torch.linspace(-3.0, 3.0, 13)
conv = cnn[0]
kernel_norm = conv.weight.flatten(1).norm(dim=1).reshape(1, 4, 1, 1)
max_z, near_kink = [], []
for t in ts:
    point = x0 + t * direction
    max_z.append(float(tsl_max_abs_z(cnn, point, var, noise)))
    with torch.no_grad():
        pre = conv(point.unsqueeze(0))
    near_kink.append((pre.abs() < 2 * sigma * kernel_norm).double().mean().item())
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(ts.numpy(), max_z, "o-", label="TSL max |z| vs Monte Carlo")
ax.axhline(4, color="gray", ls="--", lw=1)
ax.set_xlabel("t (point = x0 + t direction)")
ax.set_ylabel("max |z|")
ax2 = ax.twinx()
ax2.plot(ts.numpy(), near_kink, "s:", color="C1", label="first-layer units near the kink")
ax2.set_ylabel("share near kink")
fig.legend(loc="upper center", fontsize=8)
plt.show()
print("max |z| along the line:", [round(z, 1) for z in max_z])

# %% [markdown]
# ## Reflection (not graded)
# 1. Is a large $|z|$ here a failure of the closed form or of the linearization? How would you tell?
# 2. Why can the kept (last) ReLU switch freely without making the TSL inexact?
