"""The catalogue of typical wrong answers, and the feedback the graded cells give each of them.

Each wrong answer is a small edit of a reference solution. Its notebook (hidden tests included) runs in this
process, one namespace per submission: the question named in the catalogue must fail (nbgrader scores a
failing graded cell 0) with a message that names the mistake, and the reference solutions must pass every
graded cell. ``test_course_grading.py`` runs a sample of the same submissions through nbgrader itself.
"""
from __future__ import annotations

import re

import pytest
import torch

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbgrader")

from netmoments.course import grading  # noqa: E402

A1, A2, A3, A4, A5 = grading.ASSIGNMENTS

# name -> (assignment, solution cell id, [(old, new) edits], question that must lose marks, feedback regex)
WRONG = {
    # a1: relu_mean_var and relu_mean_z_score
    "a1_second_moment": (A1, "relu_mean_var", [("var = (second - mean * mean).clamp(min=0.0)", "var = second")],
                         "test_relu_regular", r"second moment"),
    "a1_variance_for_std": (A1, "relu_mean_var", [("torch.where(positive, var, torch.ones_like(var)).sqrt()",
                                                   "torch.where(positive, var, torch.ones_like(var))")],
                            "test_relu_regular", r"var is the variance sigma\^2; you used it as the standard deviation"),
    "a1_dropped_pdf_term": (A1, "relu_mean_var", [("mean = mu * cdf + safe_sigma * pdf", "mean = mu * cdf")],
                            "test_relu_regular", r"dropped the sigma varphi\(h\) term"),
    "a1_nan_at_sigma_zero": (A1, "relu_mean_var", [(None, (
        "def relu_mean_var(mean, var):\n"
        "    mu, sigma = mean, var.sqrt()\n"
        "    h = mu / sigma\n"
        "    cdf = torch.special.ndtr(h)\n"
        "    pdf = torch.exp(-0.5 * h * h) / math.sqrt(2 * math.pi)\n"
        "    mean = mu * cdf + sigma * pdf\n"
        "    var = ((mu * mu + sigma * sigma) * cdf + mu * sigma * pdf - mean * mean).clamp(min=0)\n"
        "    return mean, var\n"))], "test_relu_degenerate", r"NaN.*\n.*Hint: at sigma = 0 the ReLU of a constant"),
    "a1_zero_mean_everywhere": (A1, "relu_mean_var", [(None, (
        "def relu_mean_var(mean, var):\n"
        "    mu, var = torch.broadcast_tensors(mean, var)\n"
        "    return var.sqrt() / math.sqrt(2 * math.pi), var * (0.5 - 1 / (2 * math.pi))\n"))],
        "test_relu_regular", r"zero-mean formula"),
    "a1_flipped_sign": (A1, "relu_mean_var", [("h = mu / safe_sigma", "h = -mu / safe_sigma")],
                        "test_relu_regular", r"wrong sign"),
    "a1_float32": (A1, "relu_mean_var", [("mu, var = torch.broadcast_tensors(mean, var)",
                                          "mu, var = torch.broadcast_tensors(mean.float(), var.float())")],
                   "test_relu_broadcast", r"float64"),
    "a1_no_broadcast": (A1, "relu_mean_var", [("mu, var = torch.broadcast_tensors(mean, var)",
                                               "mu, var = mean.flatten(), var.flatten()")],
                        "test_relu_broadcast", r"shape"),
    "a1_print_instead_of_return": (A1, "relu_mean_var", [("return mean, var", "print(mean, var)")],
                                   "test_relu_regular", r"returned None instead of its result"),
    "a1_hardcoded_visible_answers": (A1, "relu_mean_var", [(None, (
        "def relu_mean_var(mean, var):\n"
        "    # the visible checks' answers, whatever the input\n"
        "    mu, var = torch.broadcast_tensors(mean, var)\n"
        "    return (torch.full_like(mu, 1 / math.sqrt(2 * math.pi)),\n"
        "            torch.full_like(mu, 0.5 - 1 / (2 * math.pi)))\n"))],
        "test_relu_regular", r"relu_mean_var, regular inputs: 2 check\(s\) failed, 2 passed\.\n\[hidden grid"),
    "a1_z_score_divides_by_n": (A1, "relu_mean_z_score", [("q.std()", "q.std(unbiased=False)")],
                                "test_relu_z_score", r"square root of n/\(n-1\) times .* n = 20000: the mark of dividing by n"),
    "a1_se_without_sqrt_n": (A1, "relu_mean_z_score", [("standard_error = q.std() / math.sqrt(q.numel())",
                                                        "standard_error = q.std()")],
                             "test_relu_z_score", r"s / sqrt\(n\)"),
    # a2: zero_mean_cross_moment, cross_moment, zero_mean_relative_error
    "a2_arccos_sign": (A2, "zero_mean_cross_moment", [("torch.arccos(-rho)", "torch.arccos(rho)")],
                       "test_zero_mean_kernel", r"arccos\(rho\) where the formula has arccos\(-rho\)"),
    "a2_dropped_sqrt": (A2, "zero_mean_cross_moment", [(" + torch.sqrt(1 - rho * rho)", "")],
                        "test_zero_mean_kernel", r"dropped the sqrt"),
    "a2_flipped_rho": (A2, "cross_moment", [("nm.bivariate_normal_cdf(h_i, h_j, rho)",
                                             "nm.bivariate_normal_cdf(h_i, h_j, -rho)")],
                       "test_cross_moment", r"wrong sign of rho"),
    "a2_dropped_last_term": (A2, "cross_moment", [(
        "\n            + sigma_i * sigma_j * s * pdf(h_i) * pdf((h_j - rho * h_i) / s))", ")")],
        "test_cross_moment", r"dropped the last term"),
    "a2_dropped_mixed_term": (A2, "cross_moment", [(
        "            + mu_i * sigma_j * pdf(h_j) * torch.special.ndtr((h_i - rho * h_j) / s)\n", "")],
        "test_cross_moment", r"mixed terms"),
    "a2_variance_for_std": (A2, "cross_moment", [("sigma_i, sigma_j = var_i.sqrt(), var_j.sqrt()",
                                                  "sigma_i, sigma_j = var_i, var_j")],
                            "test_cross_moment", r"var_i, var_j are variances: sigma = sqrt\(var\)"),
    "a2_kernel_with_variances": (A2, "zero_mean_cross_moment", [("torch.sqrt(var_i * var_j)", "var_i * var_j")],
                                 "test_zero_mean_kernel", r"needs the standard deviations sqrt\(var_i\)"),
    "a2_zero_mean_everywhere": (A2, "cross_moment", [(None, (
        "def cross_moment(mean_i, mean_j, var_i, var_j, rho):\n"
        "    return zero_mean_cross_moment(var_i, var_j, rho) + 0 * mean_i * mean_j\n"))],
        "test_cross_moment", r"zero-mean kernel for every mean"),
    "a2_absolute_error": (A2, "zero_mean_relative_error", [("return (approx - exact).abs() / exact.abs()",
                                                            "return (approx - exact).abs()")],
                          "test_relative_error", r"absolute error"),
    # a3: mlp_factors, output_moments, z_scores
    "a3_transposed_weight": (A3, "mlp_factors", [("first.weight.detach().double()",
                                                  "first.weight.detach().double().T")],
                             "test_mlp_factors", r"do not transpose"),
    "a3_dropped_bias": (A3, "mlp_factors", [("first.bias.detach().double()", "torch.zeros(256)")],
                        "test_mlp_factors", r"bias"),
    "a3_factors_left_float32": (A3, "mlp_factors", [(".double()", "")], "test_mlp_factors",
                                r"\[dtype\] expected float64, got \[torch\.float32"),
    "a3_mean_at_mean": (A3, "output_moments", [("return B @ q_mean + c2,", "return B @ torch.relu(y_mean) + c2,")],
                        "test_output_moments", r"pushed the mean through the network"),
    "a3_diagonal_covariance": (A3, "output_moments", [(
        "q_cov = nm.relu_covariance(y_mean, y_cov)",
        "q_cov = torch.diag(nm.relu_moments(y_mean, torch.diagonal(y_cov).clamp(min=0))[1])")],
        "test_output_moments", r"only the variances"),
    "a3_zero_mean_kernel": (A3, "output_moments", [("nm.relu_covariance(y_mean, y_cov)",
                                                    "nm.relu_covariance(y_mean, y_cov, method='zero_mean')")],
                            "test_output_moments", r"zero-mean kernel"),
    "a3_std_for_variance": (A3, "output_moments", [("torch.diagonal(y_cov).clamp(min=0))",
                                                    "torch.diagonal(y_cov).clamp(min=0).sqrt())")],
                            "test_output_moments", r"takes the variance of y"),
    "a3_relu_as_identity": (A3, "output_moments", [("B @ q_cov @ B.T", "B @ y_cov @ B.T")],
                            "test_output_moments", r"as if the ReLU were the identity"),
    "a3_se_without_sqrt_n": (A3, "z_scores", [("torch.sqrt(sample_var / n)", "torch.sqrt(sample_var)")],
                             "test_z_scores", r"s / sqrt\(n\)"),
    "a3_variance_divides_by_n": (A3, "z_scores", [("sample_var = samples.var(0)",
                                                   "sample_var = samples.var(0, unbiased=False)")],
                                 "test_z_scores", r"square root of n/\(n-1\) times the expected one, with n = 4000"),
    "a3_gaussian_fourth_moment": (A3, "z_scores", [("m4 = ((samples - sample_mean) ** 4).mean(0)",
                                                    "m4 = 3 * sample_var ** 2")],
                                  "test_z_scores", r"Gaussian shortcut"),
    # a4: tsl_output_moments, tsl_max_abs_z
    "a4_var_squared": (A4, "tsl_output_moments", [("var * torch.eye(n)", "var ** 2 * torch.eye(n)")],
                       "test_tsl_moments", r"var is the variance sigma\^2; .*not var\^2 I"),
    "a4_first_relu": (A4, "tsl_output_moments", [("two_stage_linearize(model, point)",
                                                  "two_stage_linearize(model, point, relu_index=0)")],
                      "test_tsl_moments", r"relu_index=0"),
    "a4_wrong_point": (A4, "tsl_output_moments", [("two_stage_linearize(model, point)",
                                                   "two_stage_linearize(model, torch.zeros_like(point))")],
                       "test_tsl_moments", r"AT the point"),
    "a4_network_at_the_point": (A4, "tsl_output_moments", [(
        'return net.moments(point.flatten(), var * torch.eye(n), output="var")',
        '_, out_var = net.moments(point.flatten(), var * torch.eye(n), output="var")\n'
        '    return net(point.flatten()), out_var')],
        "test_tsl_moments", r"not the network at the point"),
    "a4_se_without_sqrt_n": (A4, "tsl_max_abs_z", [("outputs.std(0) / math.sqrt(outputs.shape[0])",
                                                    "outputs.std(0)")],
                             "test_tsl_z", r"s / sqrt\(N\), not s"),
    "a4_unscaled_noise": (A4, "tsl_max_abs_z", [("model(point + math.sqrt(var) * noise)", "model(point + noise)")],
                          "test_tsl_z", r"scale the standard normal draws by sigma = sqrt\(var\)"),
    "a4_noise_scaled_by_var": (A4, "tsl_max_abs_z", [("model(point + math.sqrt(var) * noise)",
                                                      "model(point + var * noise)")],
                               "test_tsl_z", r"standard deviation sqrt\(var\), not by var"),
    # a5: margin_moments, expected_margin, sparse_gaussian_attack
    "a5_variance_for_std": (A5, "margin_moments", [("return m, var.clamp(min=0).sqrt()", "return m, var")],
                            "test_margin_moments", r"returned the variance"),
    "a5_dropped_covariance": (A5, "margin_moments", [(" - 2 * cov[label, other]", "")],
                              "test_margin_moments", r"dropped the covariance term"),
    "a5_wrong_covariance_sign": (A5, "margin_moments", [(" - 2 * cov[label, other]", " + 2 * cov[label, other]")],
                                 "test_margin_moments", r"wrong sign"),
    "a5_noise_ignored": (A5, "expected_margin", [("q_mean, _ = nm.relu_moments(A @ mean_x + c1, (A * A) @ var_x)",
                                                  "q_mean = torch.relu(A @ mean_x + c1)")],
                         "test_expected_margin", r"ignored the noise"),
    "a5_std_for_variance": (A5, "expected_margin", [("(A * A) @ var_x)", "((A * A) @ var_x).sqrt())")],
                            "test_expected_margin", r"passed standard deviations"),
    "a5_float32_margin": (A5, "expected_margin", [("A, c1, B, c2 = factors",
                                                   "A, c1, B, c2 = (t.float() for t in factors)\n"
                                                   "    mean_x, var_x = mean_x.float(), var_x.float()")],
                          "test_expected_margin", r"your answer is torch\.float32"),
    "a5_dense_attack": (A5, "sparse_gaussian_attack", [("mask[grad.abs().topk(k).indices] = 1.0", "mask[:] = 1.0")],
                        "test_attack", r"at most 30 ones"),
    "a5_unclamped_image": (A5, "sparse_gaussian_attack", [(
        "delta = (x + shift.detach() * mask).clamp(0, 1) - x", "delta = shift.detach() * mask")],
        "test_attack", r"leaves \[0, 1\]"),
    "a5_ascends_the_margin": (A5, "sparse_gaussian_attack", [("margin.backward()", "(-margin).backward()")],
                              "test_attack", r"fooling rate"),
}


# Hints that name a mistake must not fire for a different one: (assignment, cell, edits, question, text that
# must NOT be in the feedback, text that must be).
NOT_BLAMED = {
    # var = sigma^2 Phi(h) is 1/2 at mu = 0, sigma = 1, like E[q^2]; with a wrong mean beside it, it is not
    # "the second moment" (the visible check used to say so).
    "a1_half_variance_and_wrong_mean": (A1, "relu_mean_var", [
        ("mean = mu * cdf + safe_sigma * pdf", "mean = mu * cdf"),
        ("var = (second - mean * mean).clamp(min=0.0)", "var = safe_sigma * safe_sigma * cdf")],
        "test_relu_regular", "second moment", "[mean = 0, var = 1: var] expected"),
    # A dropped output bias is not "pushing the mean through the network" (the visible hint used to say so
    # for every wrong mean).
    "a3_dropped_output_bias": (A3, "output_moments", [("return B @ q_mean + c2,", "return B @ q_mean,")],
                               "test_output_moments", "B relu(A mu + c1) + c2", "dropped the output bias"),
}


def _edited(assignment: str, cell_id: str, edits, drop_explore: bool = True) -> nbformat.NotebookNode:
    """The reference notebook with one solution cell edited; cells after the last graded cell dropped."""
    nb = nbformat.read(grading.source_notebook(assignment), as_version=4)
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == cell_id:
            for old, new in edits:
                if old is None:
                    cell.source = new
                else:
                    assert old in cell.source, f"{assignment}/{cell_id}: the edit target {old!r} is gone"
                    cell.source = cell.source.replace(old, new)
            break
    else:
        raise AssertionError(f"{assignment}: no solution cell {cell_id}")
    if drop_explore:  # the explore cells are not graded; dropping them keeps the suite fast
        last = max(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade"))
        nb.cells = nb.cells[: last + 1]
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def run_in_process(nb) -> dict[str, str]:
    """Run a notebook's code cells in one namespace of this process: ``{graded cell id: error message or ""}``.

    These are the cell sources nbgrader runs (hidden tests included), without a kernel per notebook. A graded
    cell that raises scores 0 under nbgrader's rule, and its message is the feedback. The end-to-end tests below
    check on a sample that nbgrader agrees.
    """
    namespace = {"__name__": "__main__"}
    results = {}
    # The notebooks set torch's default dtype (and seed): a kernel would forget that, this process must not leak
    # it into the tests that run after this one in the same worker.
    dtype, rng = torch.get_default_dtype(), torch.get_rng_state()
    try:
        _run_cells(nb, namespace, results)
    finally:
        torch.set_default_dtype(dtype)
        torch.set_rng_state(rng)
    return results


def _run_cells(nb, namespace: dict, results: dict) -> None:
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        source = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith("%"))
        try:
            exec(compile(source, "<cell>", "exec"), namespace)
            error = ""
        except Exception as exc:  # a graded cell's failure is the result
            error = f"{type(exc).__name__}: {exc}"
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("grade"):
            results[meta["grade_id"]] = error


def _first_solution(name: str) -> str:
    nb = nbformat.read(grading.source_notebook(name), as_version=4)
    return next(c.metadata["nbgrader"]["grade_id"] for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution"))


def test_catalogue_has_at_least_six_wrong_answers_per_assignment():
    for name in grading.ASSIGNMENTS:
        assert sum(a == name for a, *_ in WRONG.values()) >= 6, name


@pytest.mark.parametrize("name", grading.ASSIGNMENTS)
def test_reference_solution_passes_every_graded_cell(name):
    results = run_in_process(_edited(name, _first_solution(name), []))
    assert results == {g: "" for g, _ in grading.grade_cells(name)}, results


@pytest.mark.parametrize("case", sorted(NOT_BLAMED))
def test_a_hint_names_a_mistake_only_when_it_is_that_mistake(case):
    assignment, cell_id, edits, question, absent, present = NOT_BLAMED[case]
    feedback = run_in_process(_edited(assignment, cell_id, edits))[question]
    assert present in feedback and absent not in feedback, feedback


@pytest.mark.parametrize("wrong", sorted(WRONG))
def test_wrong_answer_loses_marks_with_the_right_message(wrong):
    assignment, cell_id, edits, question, pattern = WRONG[wrong]
    results = run_in_process(_edited(assignment, cell_id, edits))
    assert results[question], f"{wrong}: {question} passed"
    assert re.search(pattern, results[question]), f"{wrong}: /{pattern}/ not in feedback:\n{results[question]}"




# -- through the grader (judge + sandboxed worker): what only the real grading shows ---------------------------
_REFERENCE_RELU = None  # the reference relu_mean_var cell, read once


def _reference_relu() -> str:
    global _REFERENCE_RELU
    if _REFERENCE_RELU is None:
        nb = nbformat.read(grading.source_notebook(A1), as_version=4)
        _REFERENCE_RELU = next(c.source for c in nb.cells
                               if c.metadata.get("nbgrader", {}).get("grade_id") == "relu_mean_var")
    return _REFERENCE_RELU


# name -> the a1 relu_mean_var cell's edits (as in WRONG)
JUDGED = {
    "tqdm_on_stderr": [("def relu_mean_var(mean, var):", "import sys\n\nfrom tqdm import tqdm\n\n\n"
                                                        "def relu_mean_var(mean, var):"),
                       ("return mean, var", "for _ in tqdm(range(3)):\n        pass\n"
                                            "    print('progress', file=sys.stderr)\n    return mean, var")],
    "mutates_its_input": [("def relu_mean_var(mean, var):", "def _solution(mean, var):"),
                          ("### END SOLUTION", "### END SOLUTION\n\n\ndef relu_mean_var(mean, var):\n"
                                               "    out = _solution(mean, var)\n"
                                               "    mean.data.zero_()\n    var.data.fill_(7.0)\n    return out")],
    "calls_nm_relu_moments": [(None, "import netmoments as nm\n\n\ndef relu_mean_var(mean, var):\n"
                                     "    mean, var = torch.broadcast_tensors(mean, var)\n"
                                     "    return nm.relu_moments(mean, var)\n")],
    "calls_imported_relu_moments": [(None, "from netmoments import relu_moments as rm\n\n\n"
                                           "def relu_mean_var(mean, var):\n"
                                           "    mean, var = torch.broadcast_tensors(mean, var)\n"
                                           "    return rm(mean, var)\n")],
    "second_moment": WRONG["a1_second_moment"][2],
    "print_instead_of_return": WRONG["a1_print_instead_of_return"][2],
}


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """Reports of the grader itself (judge + worker, sandboxed when bubblewrap works) for every JUDGED case."""
    root = tmp_path_factory.mktemp("judged")
    submissions = {}
    for name, edits in JUDGED.items():
        path = root / name / f"{A1}.ipynb"
        path.parent.mkdir()
        nbformat.write(_edited(A1, "relu_mean_var", edits), path)
        submissions[name] = {A1: path}
    reports = grading.grade_submissions(submissions, cell_timeout=120, jobs=2)
    return {name: {q.name: q for q in per[A1].questions} for name, per in reports.items()}


def _full(questions) -> bool:
    return all(q.score == q.max_score > 0 for q in questions)


def test_progress_bars_and_prints_on_stderr_cost_nothing(judged):
    assert _full(judged["tqdm_on_stderr"].values()), judged["tqdm_on_stderr"]


def test_a_function_that_mutates_its_input_cannot_corrupt_the_hidden_tests(judged):
    # The hidden tests' tensors are copied to the student's process: mutating them there changes nothing here,
    # so the answers are graded as returned (and the later cases see the values the tests meant).
    assert _full(judged["mutates_its_input"].values()), judged["mutates_its_input"]


@pytest.mark.parametrize("case", ["calls_nm_relu_moments", "calls_imported_relu_moments"])
def test_calling_the_packages_relu_moments_in_a1_loses_the_marks(judged, case):
    questions = judged[case]
    relu = [q for name, q in questions.items() if name != "test_relu_z_score"]
    assert relu and all(q.score == 0 for q in relu), questions
    assert all("ForbiddenCall: it calls netmoments.relu_moments" in q.feedback for q in relu), questions
    # relu_mean_z_score is the reference's: graded with the reference relu_mean_var, it keeps its points.
    assert _full([questions["test_relu_z_score"]]), questions["test_relu_z_score"]


def test_one_mistake_costs_one_question(judged):
    questions = judged["second_moment"]
    assert questions["test_relu_regular"].score == 0 and "second moment" in questions["test_relu_regular"].feedback
    # relu_mean_z_score calls relu_mean_var; its test gives it the reference relu_mean_var, so it keeps its points.
    assert _full([questions["test_relu_z_score"]]), questions["test_relu_z_score"]


def test_printing_instead_of_returning_is_told_so_by_the_grader(judged):
    feedback = judged["print_instead_of_return"]["test_relu_regular"].feedback
    assert "returned None instead of its result" in feedback, feedback
