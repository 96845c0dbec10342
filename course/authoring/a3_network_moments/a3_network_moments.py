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
# # Assignment 3: network moments of the shipped MLP
#
# **Time:** about 75 minutes (running every cell takes under a minute).
# **Prerequisite:** chapter 4 of the book, *Network moments of Affine-ReLU-Affine*.
#
# **Learning objectives.** After this assignment you can
# 1. read a trained `nn.Sequential` MLP as an Affine-ReLU-Affine map $g(x) = B\,\mathrm{relu}(Ax + c_1) + c_2$;
# 2. compute the exact mean and covariance of its logits under Gaussian input noise
#    $x \sim \mathcal{N}(\mu, \Sigma)$ from the one-ReLU and two-ReLU moments;
# 3. compare them with Monte Carlo in standard errors, for both means and variances.
#
# **How to work.** Replace every `raise NotDone()` under `# YOUR CODE HERE`; keep names and
# signatures. Run the *Tests* cells (`all ... checks passed`); grading adds hidden cases. You may use
# `nm.relu_moments` and `nm.relu_covariance` (the single-layer pieces), but not `nm.AffineReLUAffine` or
# `nm.monte_carlo_moments` in your solution: those are what you rebuild here.

# %%
import math

import torch

import netmoments as nm
from netmoments.course.checks import Check, NotDone

torch.set_default_dtype(torch.float64)
model = nm.models.load_mlp().float()  # Flatten -> Linear(784, 256) -> ReLU -> Linear(256, 10), float32
images, labels = nm.data.load_mnist("test")
print(model)


# %% [markdown]
# ## Question 1: the factors (2 points)
#
# Implement `mlp_factors(model)`: return `(A, c1, B, c2)` as **float64** tensors with
# `A (256, 784)`, `c1 (256,)`, `B (10, 256)`, `c2 (10,)` such that
# `model(x) == B @ relu(A @ x.flatten() + c1) + c2`.

# %% nbgrader={"grade": false, "grade_id": "mlp_factors", "locked": false, "schema_version": 3, "solution": true, "task": false}
def mlp_factors(model):
    """(A, c1, B, c2) in float64 with model(x) = B relu(A x + c1) + c2 for flattened x."""
    ### BEGIN SOLUTION
    first, second = model[1], model[3]
    return (first.weight.detach().double(), first.bias.detach().double(),
            second.weight.detach().double(), second.bias.detach().double())
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_mlp_factors", "locked": true, "points": 2.0, "schema_version": 3, "solution": false, "task": false} tags=["raises-exception"]
check = Check(globals(), "mlp_factors")
out = check.call("mlp_factors", model, case="the shipped MLP")
if out is not None:
    check.true("four tensors", isinstance(out, (tuple, list)) and len(out) == 4,
               f"expected a tuple (A, c1, B, c2), got {type(out).__name__}")
    if isinstance(out, (tuple, list)) and len(out) == 4:
        _shapes = [tuple(t.shape) for t in out]
        check.true("shapes", _shapes == [(256, 784), (256,), (10, 256), (10,)],
                   f"expected shapes [(256, 784), (256,), (10, 256), (10,)], got {_shapes}",
                   hint="nn.Linear stores weight as (out_features, in_features); do not transpose it")
        check.true("dtype", all(t.dtype == torch.float64 for t in out),
                   f"expected float64, got {[t.dtype for t in out]}", hint="convert with .double()")
        if _shapes == [(256, 784), (256,), (10, 256), (10,)]:
            _x = images[0].double().flatten()
            with torch.no_grad():
                _want = model.double()(_x.unsqueeze(0))[0]
            model.float()
            A, c1, B, c2 = (torch.as_tensor(t).double() for t in out)  # a wrong dtype is reported above
            check.close("B relu(A x + c1) + c2 == model(x) on the first test digit",
                        B @ torch.relu(A @ _x + c1) + c2, _want, rtol=1e-10,
                        hint="both biases are part of the map", check_dtype=False)
### BEGIN HIDDEN TESTS
if out is not None and isinstance(out, (tuple, list)) and len(out) == 4:
    for _name, _got, _want in zip(("A", "c1", "B", "c2"), out,
                                   (model[1].weight, model[1].bias, model[3].weight, model[3].bias)):
        check.close(f"{_name} equals the layer's parameter", _got, _want.detach().double(), rtol=0, atol=0,
                    check_dtype=False,
                    diagnoses=[(torch.zeros_like(_want), f"{_name} is all zeros: take the bias from the layer")])
### END HIDDEN TESTS
check.done()


# %% [markdown]
# ## Question 2: exact output mean and covariance (5 points)
#
# For $x \sim \mathcal{N}(\mu, \Sigma)$ the pre-activations $y = Ax + c_1$ are Gaussian with mean $A\mu + c_1$ and
# covariance $A \Sigma A^\top$. With $q = \mathrm{relu}(y)$,
# $\mathbb{E}[g] = B\,\mathbb{E}[q] + c_2$ and $\mathrm{Cov}[g] = B\,\mathrm{Cov}[q]\,B^\top$, where $\mathbb{E}[q]$
# is elementwise (`nm.relu_moments(mean, var)` takes the **variance**) and $\mathrm{Cov}[q]$ needs every pair of
# units (`nm.relu_covariance(mean, cov)`).
#
# Implement `output_moments(A, c1, B, c2, mean, cov)` returning `(mean (p,), cov (p, p))`: `mean` is the input
# mean $\mu$ and `cov` its covariance $\Sigma$ (the book's names in code).

# %% nbgrader={"grade": false, "grade_id": "output_moments", "locked": false, "schema_version": 3, "solution": true, "task": false}
def output_moments(A, c1, B, c2, mean, cov):
    """Exact mean (p,) and covariance (p, p) of B relu(A x + c1) + c2 for x ~ N(mean, cov)."""
    ### BEGIN SOLUTION
    y_mean = A @ mean + c1
    y_cov = A @ cov @ A.T
    q_mean, _ = nm.relu_moments(y_mean, torch.diagonal(y_cov).clamp(min=0))
    q_cov = nm.relu_covariance(y_mean, y_cov)
    return B @ q_mean + c2, B @ q_cov @ B.T
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_output_moments", "locked": true, "points": 5.0, "schema_version": 3, "solution": false, "task": false} tags=["raises-exception"]
check = Check(globals(), "output_moments")
# Visible: a tiny 2-3-2 network against the package's AffineReLUAffine.
_g = torch.Generator().manual_seed(0)
_A, _c1 = torch.randn(3, 2, generator=_g), torch.randn(3, generator=_g)
_B, _c2 = torch.randn(2, 3, generator=_g), torch.randn(2, generator=_g)
_mu, _S = torch.tensor([0.3, -0.2]), torch.tensor([[1.0, 0.3], [0.3, 0.5]])
_want = nm.AffineReLUAffine(_A, _c1, _B, _c2).moments(_mu, _S)
out = check.call("output_moments", _A, _c1, _B, _c2, _mu, _S, case="tiny 2-3-2 network")
if out is not None:
    check.close("tiny network: mean", out[0], _want[0], rtol=1e-9,
                hint="E[g] = B E[relu(y)] + c2 with E[relu(y)] from the mean AND variance of y, y = A x + c1",
                diagnoses=[(_B @ torch.relu(_A @ _mu + _c1) + _c2,
                            "you pushed the mean through the network, B relu(A mu + c1) + c2; E[relu(y)] != "
                            "relu(E[y])")])
    check.close("tiny network: covariance", out[1], _want[1], rtol=1e-9,
                hint="Cov[g] = B Cov[relu(y)] B^T with the FULL covariance of relu(y) (nm.relu_covariance)")
### BEGIN HIDDEN TESTS
_A, _c1, _B, _c2 = (p.detach().double() for p in (model[1].weight, model[1].bias, model[3].weight, model[3].bias))
_mu = images[3].double().flatten()
_S = 0.2 ** 2 * torch.eye(784)
_net = nm.AffineReLUAffine(_A, _c1, _B, _c2)
_want = _net.moments(_mu, _S)
out = check.call("output_moments", _A, _c1, _B, _c2, _mu, _S, case="the MLP, x ~ N(digit, 0.2^2 I)")
if out is not None:
    _ym, _yc = _A @ _mu + _c1, _A @ _S @ _A.T
    _qm, _qv = nm.relu_moments(_ym, torch.diagonal(_yc))
    _qm_std, _ = nm.relu_moments(_ym, torch.diagonal(_yc).sqrt())
    check.close("MLP under N(digit, 0.2^2 I): mean", out[0], _want[0], rtol=1e-8,
                hint="E[g] = B E[relu(y)] + c2, y ~ N(A mu + c1, A Sigma A^T)",
                diagnoses=[(_B @ torch.relu(_ym) + _c2, "you pushed the mean through the network; "
                                                        "E[relu(y)] != relu(E[y])"),
                           (_B @ _qm_std + _c2, "nm.relu_moments takes the variance of y; you passed its standard "
                                                "deviation"),
                           (_B @ _qm, "you dropped the output bias c2")])
    check.close("MLP under N(digit, 0.2^2 I): covariance", out[1], _want[1], rtol=1e-8, atol=1e-10,
                hint="Cov[g] = B Cov[relu(y)] B^T, Cov[relu(y)] = nm.relu_covariance(E[y], Cov[y])",
                diagnoses=[(_B @ torch.diag(_qv) @ _B.T, "you kept only the variances of relu(y) (a diagonal "
                                                         "covariance); the units are correlated through A Sigma A^T"),
                           (_B @ _yc @ _B.T, "you propagated the covariance as if the ReLU were the identity"),
                           (_net.moments(_mu, _S, method="zero_mean")[1],
                            "you used the zero-mean kernel (method='zero_mean'); the pre-activations have "
                            "non-zero means")])
### END HIDDEN TESTS
check.done()


# %% [markdown]
# ## Question 3: z-scores against Monte Carlo (3 points)
#
# Given $n$ sampled outputs $g^{(1)}, \dots, g^{(n)}$ (rows of `samples`, shape `(n, p)`), the z-score of the exact
# mean is $(\bar g - \mathbb{E}[g]) / \sqrt{s^2/n}$ per output, with $s^2$ the unbiased sample variance. For the
# variance, the standard error of $s^2$ is $\sqrt{(m_4 - s^4)/n}$ with $m_4 = \frac1n \sum_k (g^{(k)} - \bar g)^4$,
# so its z-score is $(s^2 - \mathrm{Var}[g]) / \sqrt{(m_4 - s^4)/n}$.
#
# Implement `z_scores(mean, var, samples)` returning `(z_mean (p,), z_var (p,))`.

# %% nbgrader={"grade": false, "grade_id": "z_scores", "locked": false, "schema_version": 3, "solution": true, "task": false}
def z_scores(mean, var, samples):
    """z-scores of exact mean (p,) and variance (p,) against samples (n, p)."""
    ### BEGIN SOLUTION
    n = samples.shape[0]
    sample_mean = samples.mean(0)
    sample_var = samples.var(0)
    m4 = ((samples - sample_mean) ** 4).mean(0)
    z_mean = (sample_mean - mean) / torch.sqrt(sample_var / n)
    z_var = (sample_var - var) / torch.sqrt((m4 - sample_var ** 2) / n)
    return z_mean, z_var
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "test_z_scores", "locked": true, "points": 3.0, "schema_version": 3, "solution": false, "task": false} tags=["raises-exception"]
check = Check(globals(), "z_scores")
_g = torch.Generator().manual_seed(3)
_samples = torch.tensor([1.0, -2.0]) + torch.tensor([0.5, 2.0]) * torch.randn(4000, 2, generator=_g)
_mean, _var = torch.tensor([1.0, -2.0]), torch.tensor([0.25, 4.0])
_n = _samples.shape[0]
_m, _v = _samples.mean(0), _samples.var(0)
_m4 = ((_samples - _m) ** 4).mean(0)
_want_zm = (_m - _mean) / (_v / _n).sqrt()
_want_zv = (_v - _var) / ((_m4 - _v ** 2) / _n).sqrt()
out = check.call("z_scores", _mean, _var, _samples, case="4000 Gaussian draws")
if out is not None:
    check.close("z of the means", torch.as_tensor(out[0]).abs(), _want_zm.abs(), rtol=1e-8,
                hint="z = (sample mean - exact mean) / sqrt(s^2 / n)",
                diagnoses=[(_want_zm.abs() / math.sqrt(_n), "the standard error of a mean is s / sqrt(n), not s")])
    check.close("z of the variances", torch.as_tensor(out[1]).abs(), _want_zv.abs(), rtol=1e-8,
                hint="SE of s^2 = sqrt((m4 - s^4) / n), m4 the fourth central sample moment",
                diagnoses=[(_want_zv.abs() / math.sqrt(_n), "divide (m4 - s^4) by n inside the square root")])
### BEGIN HIDDEN TESTS
_samples = -torch.log(torch.rand(3000, 3, generator=torch.Generator().manual_seed(4))) / torch.tensor([1.0, 0.2, 3.0])
_mean, _var = torch.tensor([1.0, 5.0, 1 / 3]), torch.tensor([1.0, 25.0, 1 / 9])
_n = _samples.shape[0]
_m, _v = _samples.mean(0), _samples.var(0)
_m4 = ((_samples - _m) ** 4).mean(0)
out = check.call("z_scores", _mean, _var, _samples, case="3000 skewed (exponential) draws, 3 outputs")
if out is not None:
    check.close("skewed draws: z of the means", torch.as_tensor(out[0]).abs(), ((_m - _mean) / (_v / _n).sqrt()).abs(),
                rtol=1e-8)
    check.close("skewed draws: z of the variances", torch.as_tensor(out[1]).abs(),
                ((_v - _var) / ((_m4 - _v ** 2) / _n).sqrt()).abs(), rtol=1e-8,
                hint="for non-Gaussian outputs m4 != 3 s^4: compute m4 from the samples",
                diagnoses=[(((_v - _var) / (2 * _v ** 2 / _n).sqrt()).abs(),
                            "you used the Gaussian shortcut m4 = 3 s^4; the outputs of a ReLU net are not Gaussian")])
### END HIDDEN TESTS
check.done()

# %% [markdown]
# ## Explore: the MLP under noise, exact vs sampled
#
# Put a test digit under $\mathcal{N}(x, 0.2^2 I)$ noise, compute the exact logit moments, sample the real network
# 20,000 times, and look at the z-scores: all ten should be within a few units.

# %% tags=["raises-exception"]
A, c1, B, c2 = mlp_factors(model)
x0 = images[3].double().flatten()
Sigma = 0.2 ** 2 * torch.eye(784)
exact_mean, exact_cov = output_moments(A, c1, B, c2, x0, Sigma)
generator = torch.Generator().manual_seed(0)
noisy = x0 + 0.2 * torch.randn(20_000, 784, generator=generator)
with torch.no_grad():
    sampled = model.double()(noisy)
model.float()
z_mean, z_var = z_scores(exact_mean, torch.diagonal(exact_cov), sampled)
print("label:", labels[3].item())
print("exact mean logits:", [round(v, 2) for v in exact_mean.tolist()])
print("max |z| of the means:", round(z_mean.abs().max().item(), 2))
print("max |z| of the variances:", round(z_var.abs().max().item(), 2))

# %% [markdown]
# ## Reflection (not graded)
# 1. How large must $n$ be before Monte Carlo reaches the accuracy of the closed form to 3 digits?
# 2. The zero-mean kernel gives a wrong covariance here. Is the error in the output variance large enough to change
#    a decision based on $\mathbb{E}[g_y - g_j] / \mathrm{sd}[g_y - g_j]$?
