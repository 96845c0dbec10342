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
# # Assignment 5: a sparse Gaussian attack
#
# **Time:** about 60 minutes (running every cell takes well under a minute).
# **Prerequisite:** chapter 9 of the book, *Gaussian adversarial attacks*.
#
# **Learning objectives.** After this assignment you can
# 1. turn exact output moments into the mean and standard deviation of a classification margin;
# 2. use the closed-form expected margin, which is differentiable, as the objective of an attack whose input is a
#    *distribution*: $x \sim \mathcal{N}(\text{image} + \delta, \sigma^2\,\mathrm{diag}(m))$ with a sparse mask $m$
#    (in code the noise variance $\sigma^2$ is `var`: the book's functions take variances);
# 3. verify an attack honestly, by sampling the real network, not by trusting the model of it.
#
# **How to work.** Replace every `raise NotDone()` under `# YOUR CODE HERE`; keep names and
# signatures. Run the *Tests* cells (`all ... checks passed`); grading adds hidden cases (other digits).
# Do not call `netmoments.attacks` in your solution.

# %%
import math

import torch

import netmoments as nm
from netmoments.course.checks import Check, NotDone

torch.set_default_dtype(torch.float64)
model = nm.models.load_mlp()  # 784 -> 256 -> 10, exactly B relu(A x + c1) + c2
images, labels = nm.data.load_mnist("test")
factors = tuple(p.detach().double() for p in (model[1].weight, model[1].bias, model[3].weight, model[3].bias))


def runner_up(logits, label):
    """The most likely wrong class."""
    others = logits.clone()
    others[label] = -math.inf
    return int(others.argmax())


# %% [markdown]
# ## Question 1: the margin's mean and standard deviation (2 points)
#
# The classifier is right on $x$ while the margin $g_y(x) - g_j(x) > 0$ ($y$ the label, $j$ another class). Given the
# output mean (one entry per class) and covariance, implement `margin_moments(mean, cov, label, other)`: the mean and the
# **standard deviation** of $g_y - g_j$ (two 0-d tensors).

# %% nbgrader={"grade": false, "grade_id": "margin_moments", "locked": false, "schema_version": 3, "solution": true, "task": false}
def margin_moments(mean, cov, label, other):
    """Mean and standard deviation of g_label - g_other given the output mean (C,) and covariance (C, C)."""
    ### BEGIN SOLUTION
    m = mean[label] - mean[other]
    var = cov[label, label] + cov[other, other] - 2 * cov[label, other]
    return m, var.clamp(min=0).sqrt()
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_margin_moments", "locked": true, "points": 2.0, "schema_version": 3, "solution": false, "task": false} tags=["raises-exception"]
check = Check(globals(), "margin_moments")
_mean = torch.tensor([1.0, 3.0, -0.5])
_cov = torch.tensor([[2.0, 0.6, 0.1], [0.6, 1.0, -0.3], [0.1, -0.3, 0.5]])
out = check.call("margin_moments", _mean, _cov, 1, 0, case="label 1 against label 0")
if out is not None:
    check.close("mean of g_1 - g_0", torch.as_tensor(out[0]), torch.tensor(2.0), check_dtype=False)
    check.close("std of g_1 - g_0", torch.as_tensor(out[1]), torch.tensor(math.sqrt(1.0 + 2.0 - 1.2)),
                check_dtype=False, hint="Var[g_y - g_j] = Var[g_y] + Var[g_j] - 2 Cov[g_y, g_j]; return its square root",
                diagnoses=[(torch.tensor(1.8), "you returned the variance; the question asks for the standard deviation"),
                           (torch.tensor(math.sqrt(3.0)), "you dropped the covariance term -2 Cov[g_y, g_j]"),
                           (torch.tensor(math.sqrt(4.2)), "wrong sign: Var[a - b] = Var[a] + Var[b] - 2 Cov[a, b]")])
### BEGIN HIDDEN TESTS
out = check.call("margin_moments", _mean, _cov, 2, 1, case="label 2 against label 1")
if out is not None:
    check.close("mean of g_2 - g_1", torch.as_tensor(out[0]), torch.tensor(-3.5), check_dtype=False)
    check.close("std of g_2 - g_1", torch.as_tensor(out[1]), torch.tensor(math.sqrt(0.5 + 1.0 + 0.6)),
                check_dtype=False,
                diagnoses=[(torch.tensor(2.1), "you returned the variance; the question asks for the standard deviation"),
                           (torch.tensor(math.sqrt(1.5)), "you dropped the covariance term -2 Cov[g_y, g_j]"),
                           (torch.tensor(math.sqrt(0.9)), "wrong sign: Var[a - b] = Var[a] + Var[b] - 2 Cov[a, b]")])
### END HIDDEN TESTS
check.done()


# %% [markdown]
# ## Question 2: the expected margin under independent pixel noise (3 points)
#
# For $x \sim \mathcal{N}(\mu_x, \mathrm{diag}(v_x))$ the pre-activations $y = Ax + c_1$ have means $A\mu_x + c_1$ and
# variances $(A \odot A)\, v_x$, so the *mean* logits need only `nm.relu_moments` (no covariance):
# $\mathbb{E}[g] = B\,\mathbb{E}[\mathrm{relu}(y)] + c_2$. Implement `expected_margin(factors, mean_x, var_x, label, other)`
# ($\mathbb{E}[g_y - g_j]$, a 0-d tensor, differentiable in `mean_x` and `var_x`).

# %% nbgrader={"grade": false, "grade_id": "expected_margin", "locked": false, "schema_version": 3, "solution": true, "task": false}
def expected_margin(factors, mean_x, var_x, label, other):
    """E[g_label - g_other] for x ~ N(mean_x, diag(var_x)), g = B relu(A x + c1) + c2."""
    ### BEGIN SOLUTION
    A, c1, B, c2 = factors
    q_mean, _ = nm.relu_moments(A @ mean_x + c1, (A * A) @ var_x)
    logits = B @ q_mean + c2
    return logits[label] - logits[other]
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_expected_margin", "locked": true, "points": 3.0, "schema_version": 3, "solution": false, "task": false} tags=["raises-exception"]
check = Check(globals(), "expected_margin")
_x = images[0].double().flatten()
with torch.no_grad():
    _logits = model.double()(_x.unsqueeze(0))[0]
model.float()
_y, _j = int(labels[0]), runner_up(_logits, int(labels[0]))
out = check.call("expected_margin", factors, _x, torch.zeros(784), _y, _j, case="no noise")
if out is not None:
    check.close("no noise: the network's own margin", torch.as_tensor(out), _logits[_y] - _logits[_j], rtol=1e-9,
                check_dtype=False, hint="without noise E[g] is just the network's output")
### BEGIN HIDDEN TESTS
_A, _c1, _B, _c2 = factors
_net = nm.AffineReLUAffine(_A, _c1, _B, _c2)
for _i, _var in ((1, 0.09), (4, 0.0225)):
    _x = images[_i].double().flatten()
    _v = torch.full((784,), _var)
    _v[::3] = 0.0  # noise on two pixels of three
    _gm, _ = _net.moments(_x, torch.diag(_v), output="var")
    _yy = int(labels[_i])
    _jj = runner_up(_B @ torch.relu(_A @ _x + _c1) + _c2, _yy)
    out = check.call("expected_margin", factors, _x, _v, _yy, _jj, case=f"digit {_i}, var = {_var}")
    if out is not None:
        _plug = _B @ torch.relu(_A @ _x + _c1) + _c2
        _std = _B @ nm.relu_moments(_A @ _x + _c1, ((_A * _A) @ _v).sqrt())[0] + _c2
        check.close(f"digit {_i} under noise var = {_var}", torch.as_tensor(out), _gm[_yy] - _gm[_jj], rtol=1e-8,
                    check_dtype=False, hint="pre-activation variances are (A * A) @ var_x (sum_k a_ik^2 v_k); E[g] = B E[relu(y)] + c2",
                    diagnoses=[(_plug[_yy] - _plug[_jj], "you ignored the noise: E[relu(y)] != relu(E[y])"),
                               (_std[_yy] - _std[_jj], "nm.relu_moments takes variances; you passed standard "
                                                       "deviations")])
### END HIDDEN TESTS
check.done()


# %% [markdown]
# ## Question 3: design the attack (4 points)
#
# Design `sparse_gaussian_attack(factors, image, label, k, var)` returning `(delta, mask)`, both `(784,)`:
# - `mask` is 0/1 with at most `k` ones; `delta` is zero off the mask; `image + delta` stays in $[0, 1]$;
# - the attack is the distribution $x \sim \mathcal{N}(\text{image} + \delta, \sigma^2\,\mathrm{diag}(\text{mask}))$,
#   where `var` is the noise **variance** $\sigma^2$ of each chosen pixel: noise and shift only on the `k` chosen
#   pixels;
# - it should make the *real* network misclassify most draws.
#
# A workable design: pick the runner-up class $j$; choose the `k` pixels where the gradient of the expected margin
# (your Question 2, with noise everywhere) is largest in magnitude; then run a few dozen Adam steps on $\delta$
# (restricted to the mask, clamped to $[0, 1]$) that *decrease* $\mathbb{E}[g_y - g_j]$ under the masked noise.
# The tests sample the real network 2,000 times and require a fooling rate of at least 50% on at least two of
# three digits with `k = 30`, `var = 0.09` (a standard deviation of 0.3).

# %% nbgrader={"grade": false, "grade_id": "sparse_gaussian_attack", "locked": false, "schema_version": 3, "solution": true, "task": false}
def sparse_gaussian_attack(factors, image, label, k, var):
    """(delta, mask), both (784,): shift, and noise of variance var, on at most k pixels."""
    ### BEGIN SOLUTION
    A, c1, B, c2 = factors
    x = image.flatten().double()
    other = runner_up(B @ torch.relu(A @ x + c1) + c2, label)
    probe = x.clone().requires_grad_()
    grad, = torch.autograd.grad(expected_margin(factors, probe, var * torch.ones_like(x), label, other), probe)
    mask = torch.zeros_like(x)
    mask[grad.abs().topk(k).indices] = 1.0
    shift = torch.zeros_like(x, requires_grad=True)
    optimizer = torch.optim.Adam([shift], lr=0.05)
    for _ in range(60):
        margin = expected_margin(factors, (x + shift * mask).clamp(0, 1), var * mask, label, other)
        optimizer.zero_grad()
        margin.backward()
        optimizer.step()
    delta = (x + shift.detach() * mask).clamp(0, 1) - x
    return delta, mask
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_attack", "locked": true, "points": 4.0, "schema_version": 3, "solution": false, "task": false} tags=["raises-exception"]
check = Check(globals(), "sparse_gaussian_attack")


def _verify(index, k=30, var=0.09, n_draws=2000):
    """Check the constraints and sample the real network; returns the fooling rate or None."""
    image, label = images[index].double(), int(labels[index])
    out = check.call("sparse_gaussian_attack", factors, image, label, k, var, case=f"digit {index}")
    if out is None:
        return None
    delta, mask = (torch.as_tensor(t).double().flatten() for t in out)
    x = image.flatten()
    ok = check.true(f"digit {index}: mask", bool(((mask == 0) | (mask == 1)).all()) and int(mask.sum()) <= k,
                    f"mask must be 0/1 with at most {k} ones, got {int((mask != 0).sum())} non-zeros",
                    hint="choose the pixels first (e.g. topk of |gradient|), then only touch those")
    ok &= check.true(f"digit {index}: delta on the mask", bool((delta[mask == 0] == 0).all()),
                     f"delta is non-zero on {int(((delta != 0) & (mask == 0)).sum())} pixels outside the mask",
                     hint="multiply the shift by the mask")
    ok &= check.true(f"digit {index}: valid image", bool(((x + delta) >= -1e-12).all() and ((x + delta) <= 1 + 1e-12).all()),
                     f"image + delta leaves [0, 1]: range [{(x + delta).min():.3f}, {(x + delta).max():.3f}]",
                     hint="clamp image + delta to [0, 1]")
    if not ok:
        return None
    gen = torch.Generator().manual_seed(100 + index)
    draws = x + delta + math.sqrt(var) * mask * torch.randn(n_draws, 784, generator=gen)
    with torch.no_grad():
        predicted = model.double()(draws).argmax(1)
    model.float()
    return (predicted != label).double().mean().item()


_rate = _verify(0)
if _rate is not None:
    check.true("digit 0: fooling rate", _rate >= 0.5,
               f"the real network misclassified {_rate:.1%} of 2000 draws; expected at least 50%",
               hint="decrease (not increase) the expected margin E[g_y - g_j]; check the sign of your steps")
### BEGIN HIDDEN TESTS
_rates = [r for r in (_verify(1), _verify(3), _verify(4)) if r is not None]
if len(_rates) == 3:
    check.true("digits 1, 3, 4: fooling rates", sum(r >= 0.5 for r in _rates) >= 2,
               f"fooling rates {[round(r, 3) for r in _rates]}; expected at least 50% on two of the three digits",
               hint="decrease the expected margin on the pixels with the largest gradient magnitude")
### END HIDDEN TESTS
check.done()

# %% [markdown]
# ## Explore: verify by sampling, and look at the exact margin distribution
#
# For a few digits, compare the exact margin mean and standard deviation under the attack (the full covariance,
# from `nm.AffineReLUAffine`) with the real network's sampled fooling rate. The Gaussian guess
# $\Phi(-\mathbb{E}/\mathrm{sd})$ of the fooling rate towards $j$ is only a guide: the margin is not Gaussian.

# %% tags=["raises-exception"]
net = nm.AffineReLUAffine(*factors)
generator = torch.Generator().manual_seed(0)
for index in range(5):
    image, label = images[index].double(), int(labels[index])
    delta, mask = sparse_gaussian_attack(factors, image, label, k=30, var=0.09)
    x = image.flatten() + delta
    out_mean, out_cov = net.moments(x, torch.diag(0.09 * mask))
    other = runner_up(factors[2] @ torch.relu(factors[0] @ image.flatten() + factors[1]) + factors[3], label)
    m, sd = margin_moments(out_mean, out_cov, label, other)
    draws = x + math.sqrt(0.09) * mask * torch.randn(2000, 784, generator=generator)
    with torch.no_grad():
        fooled = (model.double()(draws).argmax(1) != label).double().mean().item()
    model.float()
    guess = torch.special.ndtr(-m / sd).item()
    print(f"digit {index} (label {label} -> {other}): margin {m.item():+.2f} +- {sd.item():.2f}, "
          f"Gaussian guess {guess:.2f}, sampled fooling rate {fooled:.2f}, pixels {int(mask.sum())}")

# %% [markdown]
# ## Reflection (not graded)
# 1. Why optimise the *expected* margin rather than the fooling probability directly?
# 2. Make the attack *smooth* instead of sparse: restrict $\delta$ to a few low-frequency patterns (e.g. 2-D
#    cosines). What changes in the code, and how many parameters does the attack need to fool the network?
