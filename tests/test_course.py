"""Grading correctness of the course assignments (netmoments.course, nbgrader).

Every submission below is graded by the real tool chain (nbgrader autograde in a fresh kernel, hidden tests
restored from its gradebook): the reference solutions must get full marks, and each typical wrong answer,
made by a small edit of a reference solution, must lose marks on the right question with feedback that names
the mistake. All notebooks are graded in one module fixture (one autograde run per assignment, two at a time).
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbgrader")

from netmoments.course import grading  # noqa: E402

A1, A2, A3, A4, A5 = grading.ASSIGNMENTS

# name -> (assignment, solution cell id, [(old, new) edits], question that must lose marks, feedback regex)
WRONG = {
    # a1: relu_mean_var and relu_mean_z_score
    "a1_second_moment": (A1, "relu_mean_var", [("var = (second - mean * mean).clamp(min=0.0)", "var = second")],
                         "test_relu_regular", r"second moment"),
    "a1_variance_for_std": (A1, "relu_mean_var", [("torch.where(positive, sigma, torch.ones_like(sigma))",
                                                   "torch.where(positive, sigma.sqrt(), torch.ones_like(sigma))")],
                            "test_relu_regular", r"standard deviation"),
    "a1_dropped_pdf_term": (A1, "relu_mean_var", [("mean = mu * cdf + safe_sigma * pdf", "mean = mu * cdf")],
                            "test_relu_regular", r"dropped the sigma phi\(h\) term"),
    "a1_nan_at_sigma_zero": (A1, "relu_mean_var", [(None, (
        "def relu_mean_var(mu, sigma):\n"
        "    h = mu / sigma\n"
        "    cdf = torch.special.ndtr(h)\n"
        "    pdf = torch.exp(-0.5 * h * h) / math.sqrt(2 * math.pi)\n"
        "    mean = mu * cdf + sigma * pdf\n"
        "    var = ((mu * mu + sigma * sigma) * cdf + mu * sigma * pdf - mean * mean).clamp(min=0)\n"
        "    return mean, var\n"))], "test_relu_degenerate", r"NaN.*\n.*Hint: at sigma = 0 the ReLU of a constant"),
    "a1_zero_mean_everywhere": (A1, "relu_mean_var", [(None, (
        "def relu_mean_var(mu, sigma):\n"
        "    mu, sigma = torch.broadcast_tensors(mu, sigma)\n"
        "    return sigma / math.sqrt(2 * math.pi), sigma ** 2 * (0.5 - 1 / (2 * math.pi))\n"))],
        "test_relu_regular", r"zero-mean formula"),
    "a1_flipped_sign": (A1, "relu_mean_var", [("h = mu / safe_sigma", "h = -mu / safe_sigma")],
                        "test_relu_regular", r"wrong sign"),
    "a1_float32": (A1, "relu_mean_var", [("mu, sigma = torch.broadcast_tensors(mu, sigma)",
                                          "mu, sigma = torch.broadcast_tensors(mu.float(), sigma.float())")],
                   "test_relu_broadcast", r"float64"),
    "a1_no_broadcast": (A1, "relu_mean_var", [("mu, sigma = torch.broadcast_tensors(mu, sigma)",
                                               "mu, sigma = mu.flatten(), sigma.flatten()")],
                        "test_relu_broadcast", r"shape"),
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
    "a2_variance_for_std": (A2, "cross_moment", [("h_i, h_j = mu_i / sigma_i, mu_j / sigma_j",
                                                  "h_i, h_j = mu_i / sigma_i ** 2, mu_j / sigma_j ** 2")],
                            "test_cross_moment", r"standard deviation"),
    "a2_zero_mean_everywhere": (A2, "cross_moment", [(None, (
        "def cross_moment(mu_i, mu_j, sigma_i, sigma_j, rho):\n"
        "    return zero_mean_cross_moment(sigma_i, sigma_j, rho) + 0 * mu_i * mu_j\n"))],
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
    "a3_gaussian_fourth_moment": (A3, "z_scores", [("m4 = ((samples - sample_mean) ** 4).mean(0)",
                                                    "m4 = 3 * sample_var ** 2")],
                                  "test_z_scores", r"Gaussian shortcut"),
    # a4: tsl_output_moments, tsl_max_abs_z
    "a4_sigma_not_squared": (A4, "tsl_output_moments", [("sigma ** 2 * torch.eye(n)", "sigma * torch.eye(n)")],
                             "test_tsl_moments", r"sigma\^2 I, not sigma I"),
    "a4_first_relu": (A4, "tsl_output_moments", [("two_stage_linearize(model, point)",
                                                  "two_stage_linearize(model, point, relu_index=0)")],
                      "test_tsl_moments", r"relu_index=0"),
    "a4_wrong_point": (A4, "tsl_output_moments", [("two_stage_linearize(model, point)",
                                                   "two_stage_linearize(model, torch.zeros_like(point))")],
                       "test_tsl_moments", r"AT the point"),
    "a4_network_at_the_point": (A4, "tsl_output_moments", [(
        'return net.moments(point.flatten(), sigma ** 2 * torch.eye(n), output="var")',
        '_, var = net.moments(point.flatten(), sigma ** 2 * torch.eye(n), output="var")\n'
        '    return net(point.flatten()), var')],
        "test_tsl_moments", r"not the network at the point"),
    "a4_se_without_sqrt_n": (A4, "tsl_max_abs_z", [("outputs.std(0) / math.sqrt(outputs.shape[0])",
                                                    "outputs.std(0)")],
                             "test_tsl_z", r"s / sqrt\(n\), not s"),
    "a4_unscaled_noise": (A4, "tsl_max_abs_z", [("model(point + sigma * noise)", "model(point + noise)")],
                          "test_tsl_z", r"scale the standard normal draws by sigma"),
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
    "a5_dense_attack": (A5, "sparse_gaussian_attack", [("mask[grad.abs().topk(k).indices] = 1.0", "mask[:] = 1.0")],
                        "test_attack", r"at most 30 ones"),
    "a5_unclamped_image": (A5, "sparse_gaussian_attack", [(
        "delta = (x + shift.detach() * mask).clamp(0, 1) - x", "delta = shift.detach() * mask")],
        "test_attack", r"leaves \[0, 1\]"),
    "a5_ascends_the_margin": (A5, "sparse_gaussian_attack", [("margin.backward()", "(-margin).backward()")],
                              "test_attack", r"fooling rate"),
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


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Reports for the reference solutions (full notebooks) and every wrong answer, graded in one go."""
    root = tmp_path_factory.mktemp("submissions")
    submissions = {"reference": {name: grading.source_notebook(name) for name in grading.ASSIGNMENTS}}
    for wrong, (assignment, cell_id, edits, _, _) in WRONG.items():
        path = root / wrong / f"{assignment}.ipynb"
        path.parent.mkdir()
        nbformat.write(_edited(assignment, cell_id, edits), path)
        submissions[wrong] = {assignment: path}
    return grading.grade_submissions(submissions, cell_timeout=300, jobs=2)


def test_reference_solutions_get_full_marks(graded):
    for name in grading.ASSIGNMENTS:
        report = graded["reference"][name]
        assert report.max_score > 0 and not report.error, (name, report.error)
        assert report.score == report.max_score, report.to_text()
        assert [q.name for q in report.questions] == [g for g, _ in grading.grade_cells(name)]


def test_catalogue_has_at_least_six_wrong_answers_per_assignment():
    for name in grading.ASSIGNMENTS:
        assert sum(a == name for a, *_ in WRONG.values()) >= 6, name


@pytest.mark.parametrize("wrong", sorted(WRONG))
def test_wrong_answer_loses_marks_with_the_right_message(graded, wrong):
    assignment, _, _, question, pattern = WRONG[wrong]
    report = graded[wrong][assignment]
    assert report.score < report.max_score, report.to_text()
    result = {q.name: q for q in report.questions}[question]
    assert result.score < result.max_score, report.to_text()
    import re

    assert re.search(pattern, result.feedback), f"{wrong}: /{pattern}/ not in feedback:\n{result.feedback}"


def test_csv_has_a_row_per_student_and_question(graded, tmp_path):
    path = tmp_path / "grades.csv"
    grading.write_csv(graded, path)
    rows = list(csv.DictReader(path.open()))
    ref = [r for r in rows if r["student"] == "reference" and r["assignment"] == A1]
    assert [r["question"] for r in ref] == [g for g, _ in grading.grade_cells(A1)] + ["total"]
    assert float(ref[-1]["score"]) == float(ref[-1]["max_score"]) == sum(p for _, p in grading.grade_cells(A1))


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "netmoments.course", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_broken_submissions_still_get_a_report(tmp_path):
    """Crash (kernel dies), hang (time limit), deleted function, raw student version: a report, no traceback."""
    subs = tmp_path / "subs"
    cases = {
        "crash": [(None, "import os\nos._exit(1)\n")],
        "hang": [(None, "import time\ntime.sleep(3600)\n")],
        "deleted": [(None, "pass\n")],
    }
    for student, edits in cases.items():
        path = subs / student / f"{A1}.ipynb"
        path.parent.mkdir(parents=True)
        nbformat.write(_edited(A1, "relu_mean_var", edits), path)
    released = tmp_path / "released"
    done = _cli("release", str(released), "--only", A1)
    assert done.returncode == 0, done.stderr
    student_version = released / A1 / f"{A1}.ipynb"
    text = student_version.read_text()
    assert "raise NotImplementedError()" in text and "BEGIN SOLUTION" not in text and "HIDDEN" not in text
    assert "torch.where(positive" not in text and "_nm.relu_moments" not in text  # no solution, no hidden test
    (subs / "blank").mkdir()
    (subs / "blank" / f"{A1}.ipynb").write_text(text)
    out_csv = tmp_path / "grades.csv"
    done = _cli("grade-all", str(subs), "--csv", str(out_csv), "--timeout", "10")
    assert done.returncode == 0 and "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    rows = {(r["student"], r["question"]): r for r in csv.DictReader(out_csv.open())}
    for student in ("crash", "hang", "deleted", "blank"):
        assert float(rows[student, "total"]["score"]) == 0.0, (student, rows[student, "total"])
    assert "kernel" in rows["crash", "total"]["feedback"] or "could not be executed" in rows["crash", "total"]["feedback"]
    assert "ran longer than 10 s" in rows["hang", "total"]["feedback"]
    assert "is not defined" in rows["deleted", "test_relu_regular"]["feedback"]
    assert "not implemented yet" in rows["blank", "test_relu_regular"]["feedback"]


def test_grade_json_on_a_file_that_is_not_a_notebook(tmp_path):
    bogus = tmp_path / f"{A1}.ipynb"
    bogus.write_text("this is not JSON")
    done = _cli("grade", str(bogus), "--json", timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    report = json.loads(done.stdout)
    assert set(report) >= {"score", "max_score", "questions"} and report["score"] == 0.0 and report["error"]


def test_core_package_does_not_import_the_grader():
    code = "import sys, netmoments; assert 'netmoments.course' not in sys.modules and 'nbgrader' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    code = "import sys, netmoments.course.checks; assert 'nbgrader' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
