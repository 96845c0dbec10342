"""The table helpers of chapters 1-4 (netmoments.viz.monte_carlo_table and the comparison and formatter it prints,
bonferroni_threshold)."""
import pytest
import torch
from scipy import stats

import netmoments as nm
from netmoments import viz

f64 = dict(dtype=torch.float64)


def test_bonferroni_threshold_matches_scipy():
    for k, level in [(1, 0.01), (9, 0.01), (40, 0.05)]:
        assert viz.bonferroni_threshold(k, level) == pytest.approx(stats.norm.ppf(1 - level / (2 * k)), rel=1e-12)


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_bonferroni_threshold_rejects_bad_counts(bad):
    with pytest.raises(ValueError, match="n_compared"):
        viz.bonferroni_threshold(bad)


def _result():
    # a hand-made Monte Carlo result for p = 2 outputs, so every z-score is known in advance
    return nm.MonteCarloResult(
        mean=torch.tensor([1.0, 2.0], **f64), var=torch.tensor([4.0, 9.0], **f64),
        mean_se=torch.tensor([0.1, 0.5], **f64), var_se=torch.tensor([1.0, 2.0], **f64),
        cov=torch.tensor([[4.0, 1.0], [1.0, 9.0]], **f64), cov_se=torch.tensor([[1.0, 0.25], [0.25, 2.0]], **f64),
        n_samples=100)


def test_monte_carlo_table_scores_rows_and_threshold(capsys):
    mean = torch.tensor([1.4, 1.0], **f64)
    cov = torch.tensor([[6.0, 0.5], [0.5, 9.0]], **f64)
    table = viz.monte_carlo_table(_result(), {"f": (mean, cov)}, ["a", "b"])
    assert table.rows == ["E[a]", "E[b]", "Var[a]", "Var[b]", "Cov[a,b]"]
    torch.testing.assert_close(table.z["f"], torch.tensor([4.0, 2.0, 2.0, 0.0, 2.0], **f64), rtol=1e-12, atol=1e-12)
    assert table.threshold == pytest.approx(stats.norm.ppf(1 - 0.01 / 10), rel=1e-12)
    out = capsys.readouterr().out
    assert "Cov[a,b]" in out and "1 of 5 above it" in out  # only E[a] (z = 4) exceeds z_{1 - 0.001} = 3.09


def test_monte_carlo_table_means_only_and_bad_labels():
    table = viz.monte_carlo_table(_result(), {"f": (torch.tensor([1.0, 2.5], **f64), None)},
                                  variances=False, covariances=False)
    torch.testing.assert_close(table.z["f"], torch.tensor([0.0, 1.0], **f64))
    with pytest.raises(ValueError, match="no second moment"):
        viz.monte_carlo_table(_result(), {"f": (torch.zeros(2, **f64), None)})
    with pytest.raises(ValueError, match="labels must name"):
        viz.monte_carlo_table(_result(), {"f": (torch.zeros(2, **f64), torch.ones(2, **f64))}, ["only one"],
                              covariances=False)


def test_monte_carlo_comparison_computes_without_printing(capsys):
    mean = torch.tensor([1.4, 1.0], **f64)
    cov = torch.tensor([[6.0, 0.5], [0.5, 9.0]], **f64)
    comparison = viz.monte_carlo_comparison(_result(), {"f": (mean, cov)}, ["a", "b"])
    assert capsys.readouterr().out == ""
    assert comparison.rows == ["E[a]", "E[b]", "Var[a]", "Var[b]", "Cov[a,b]"]
    torch.testing.assert_close(comparison.estimate, torch.tensor([1.0, 2.0, 4.0, 9.0, 1.0], **f64))
    torch.testing.assert_close(comparison.std_err, torch.tensor([0.1, 0.5, 1.0, 2.0, 0.25], **f64))
    torch.testing.assert_close(comparison.values["f"], torch.tensor([1.4, 1.0, 6.0, 9.0, 0.5], **f64))
    torch.testing.assert_close(comparison.z["f"], torch.tensor([4.0, 2.0, 2.0, 0.0, 2.0], **f64), rtol=1e-12,
                               atol=1e-12)
    assert comparison.level == 0.01
    assert comparison.threshold == pytest.approx(stats.norm.ppf(1 - 0.01 / 10), rel=1e-12)


def test_monte_carlo_table_prints_the_formatted_comparison(capsys):
    forms = {"f": (torch.tensor([1.4, 1.0], **f64), torch.tensor([[6.0, 0.5], [0.5, 9.0]], **f64)),
             "g": (torch.tensor([1.0, 2.0], **f64), torch.tensor([[4.0, 1.0], [1.0, 9.0]], **f64))}
    table = viz.monte_carlo_table(_result(), forms, digits=3, level=0.05)
    printed = capsys.readouterr().out
    comparison = viz.monte_carlo_comparison(_result(), forms, level=0.05)
    text = viz.format_monte_carlo_table(comparison, digits=3)
    assert printed == text + "\n"
    lines = text.splitlines()
    assert len(lines) == 1 + len(comparison.rows) + 1  # header, one line per row, the verdict
    assert lines[1].startswith("E[y1]") and "1.000 ± 0.100" in lines[1] and "1.400   4.00" in lines[1]
    assert lines[-1].startswith("Bonferroni threshold for 5 numbers at level 0.05: ")
    assert lines[-1].endswith("f: 1 of 5 above it, g: 0 of 5 above it")
    assert table.rows == comparison.rows and table.threshold == comparison.threshold
    assert all(torch.equal(table.z[k], comparison.z[k]) for k in ("f", "g"))


def test_a_width_moves_the_verdicts_to_their_own_line(capsys):
    forms = {"f": (torch.tensor([1.4, 1.0], **f64), torch.tensor([[6.0, 0.5], [0.5, 9.0]], **f64)),
             "g": (torch.tensor([1.0, 2.0], **f64), torch.tensor([[4.0, 1.0], [1.0, 9.0]], **f64))}
    comparison = viz.monte_carlo_comparison(_result(), forms, level=0.05)
    one_line = viz.format_monte_carlo_table(comparison, digits=3).splitlines()
    wrapped = viz.format_monte_carlo_table(comparison, digits=3, width=76).splitlines()
    assert len(one_line[-1]) > 76 and wrapped[:-2] == one_line[:-1]
    assert wrapped[-2].startswith("Bonferroni threshold for 5 numbers") and wrapped[-2].endswith(";")
    assert wrapped[-1] == "f: 1 of 5 above it, g: 0 of 5 above it"
    assert all(len(line) <= 76 for line in wrapped[-2:])
    # wide enough: unchanged; and monte_carlo_table passes the width on
    assert viz.format_monte_carlo_table(comparison, digits=3, width=200).splitlines() == one_line
    viz.monte_carlo_table(_result(), forms, digits=3, level=0.05, width=76)
    assert capsys.readouterr().out.splitlines() == wrapped


def test_the_formula_check_table_has_one_row_per_budget_in_order():
    check = {(0.05, 300): (((0.051, 0.05, 0.0526), (0.04, 0.038, 0.042)), (0.0512, 0.0391)),
             (0.2, 3000): (((0.0181, 0.017, 0.019), (0.0123, 0.011, 0.013)), (0.018, 0.0124))}
    lines = viz.format_formula_check(check).split("\n")
    columns = [line.replace("\\|", "").count("|") for line in lines]  # escaped pipes are text
    assert len(lines) == 4 and columns == [7, 7, 7, 7]
    assert lines[2] == "| 0.05 | 300 | 0.051 [0.050, 0.053] | 0.051 | 0.040 [0.038, 0.042] | 0.039 |"
    assert lines[3].startswith("| 0.2 | 3,000 | 0.018 [0.017, 0.019] | 0.018 |")
