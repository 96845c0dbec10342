"""NM20's tightness protocol on the real LeNet: the task, its error decomposition, the clusters, the CLI."""
import json
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from netmoments.experiments import build_parser
from netmoments.experiments.runner import read_rows, task_id
from netmoments.experiments.tightness import (
    ROW_LISTS,
    TightnessConfig,
    bonferroni_z,
    bootstrap_ci,
    build_context,
    cluster_linearization_points,
    ci_text,
    cluster_table,
    complete_images,
    format_ci,
    image_metrics,
    interval_sign,
    join_words,
    sig_text,
    sign_phrase,
    labelled_kmeans,
    noise_factor,
    PER_IMAGE_COLUMNS,
    per_image_table,
    report_markdown,
    write_per_image_csv,
    recheck_formula,
    run_tightness,
    scaled_cluster_counts,
    summary_table,
    symmetric_relative_error,
    tightness_task,
)

SMALL = TightnessConfig(mc_samples=1500, tie_samples=2, points=("input", "dither", "tie_aware"), clusters=())


@pytest.fixture(scope="module")
def context():
    return build_context(SMALL, n_images=2)


@pytest.fixture(scope="module")
def dense_rows(context):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return tightness_task((1, 0.05, "dense"), context)
    finally:
        torch.set_num_threads(threads)


def test_symmetric_relative_error():
    a = torch.tensor([1.0, -1.0, 0.0, 3.0, 0.0])
    b = torch.tensor([3.0, 1.0, 0.0, 3.0, 2.0])
    expected = torch.tensor([2 * 2 / 4, 2.0, 0.0, 0.0, 2.0])
    assert torch.equal(symmetric_relative_error(a, b), expected)
    assert np.array_equal(symmetric_relative_error(b.numpy(), a.numpy()), expected.numpy())
    assert np.isnan(symmetric_relative_error(np.array([np.nan, 1.0]), np.array([1.0, 1.0]))[0])


def test_scaled_cluster_counts():
    assert scaled_cluster_counts(10_000) == [250, 500, 1000, 2500, 5000]  # NM20's k
    assert scaled_cluster_counts(4000) == [100, 200, 400, 1000, 2000]  # the shipped pool
    assert scaled_cluster_counts(4) == [1, 2]


def test_labelled_kmeans_clusters_within_labels():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [30, 20, 10])
    points = rng.standard_normal((60, 3)) + 5 * labels[:, None]
    assignment, centroids, centroid_labels = labelled_kmeans(points, labels, 6)
    assert np.array_equal(np.bincount(centroid_labels), [3, 2, 1])  # k_c = round(6 n_c / N), at least 1
    assert np.array_equal(centroid_labels[assignment], labels)  # no cluster mixes labels
    for c in range(len(centroids)):
        assert np.allclose(centroids[c], points[assignment == c].mean(0))
    _, _, few = labelled_kmeans(points, labels, 1)
    assert np.array_equal(np.bincount(few), [1, 1, 1])  # every label keeps a cluster
    with pytest.raises(ValueError, match="k"):
        labelled_kmeans(points, labels, 61)


def test_cluster_points_never_use_the_test_digit():
    rng = np.random.default_rng(1)
    pool_labels = np.repeat([0, 1], 40)
    pool = rng.standard_normal((80, 5)) + 3 * pool_labels[:, None]
    test_labels = np.array([0, 1, 1, 0])
    test = rng.standard_normal((4, 5)) + 3 * test_labels[:, None]
    pts = cluster_linearization_points(pool, pool_labels, test, test_labels, k=8)
    _, centroids, centroid_labels = labelled_kmeans(pool, pool_labels, 8)
    assignment = labelled_kmeans(pool, pool_labels, 8)[0]
    for t in range(4):
        same = np.flatnonzero(centroid_labels == test_labels[t])
        nearest = same[np.argmin(((centroids[same] - test[t]) ** 2).sum(1))]
        assert np.allclose(pts["centroid"][t], centroids[nearest], atol=1e-6)
        members = pool[assignment == nearest]
        far = members[np.argmax(((members - centroids[nearest]) ** 2).sum(1))]
        assert np.allclose(pts["farthest"][t], far, atol=1e-6)  # a pool member ...
        assert not np.allclose(pts["farthest"][t], test[t]) and not np.allclose(pts["centroid"][t], test[t])


def test_noise_factors():
    gen = torch.Generator().manual_seed(0)
    dense = noise_factor("dense", 0.1, 16, gen)
    assert torch.trace(dense @ dense.T).item() == pytest.approx(16 * 0.01, rel=1e-12)
    sparse = noise_factor("sparse", 0.3, 16, pixels=torch.tensor([2, 5]))
    assert torch.equal(torch.diagonal(sparse @ sparse.T) > 0, torch.isin(torch.arange(16), torch.tensor([2, 5])))
    blur = noise_factor("blur", 0.1, 784)
    cov = blur @ blur.T
    assert torch.trace(cov).item() == pytest.approx(784 * 0.01, rel=1e-12)
    assert cov[400, 401] > 0.5 * cov[400, 400]  # neighbours move together
    with pytest.raises(ValueError, match="cov"):
        noise_factor("diagonal", 0.1, 16)


def test_task_rows_decompose_the_error_and_the_closed_form_is_exact_for_the_linearized_net(dense_rows):
    rows = dense_rows
    assert [r["point"] for r in rows] == ["input", "dither", "tie_aware"]
    assert all(len(r[c]) == 10 for r in rows for c in ROW_LISTS if r[c] is not None)
    assert rows[0]["ties"] > 0 and rows[1]["ties"] == 0  # the dither removes every max-pool tie
    z = bonferroni_z(len(rows) * 10 * 2)
    for r in rows:
        get = {c: np.array(r[c], dtype=float) for c in ROW_LISTS if r[c] is not None}
        # (a) the formula error vanishes within its SE (book's Bonferroni rule over every row, logit, moment)
        assert np.all(np.abs(get["f_dmean"]) <= z * np.sqrt(get["lin_var"] / r["mc_samples"]))
        assert np.all(np.abs(get["var_exact"] - get["lin_var"]) <= z * get["lin_var_se"])
        # the decomposition is exact: total = formula - linearization, up to the 6-digit rounding of the rows
        mean_scale = np.abs(get["mean"]) + np.abs(get["mc_mean"]) + np.abs(get["f_dmean"]) + np.abs(get["l_dmean"])
        split_mean = get["f_dmean"] - get["l_dmean"]
        assert np.all(np.abs((get["mean"] - get["mc_mean"]) - split_mean) <= 1e-5 * mean_scale)
        var_scale = sum(np.abs(get[c]) for c in ("var_exact", "mc_var", "lin_var", "l_dvar"))
        split_var = (get["var_exact"] - get["lin_var"]) - get["l_dvar"]
        assert np.all(np.abs((get["var_exact"] - get["mc_var"]) - split_var) <= 1e-5 * var_scale)
    # the check has power: NM18's variance (a formula approximation) is rejected on the linearized network
    hyb = np.array(rows[0]["var_hybrid"]) - np.array(rows[0]["lin_var"])
    assert np.mean(np.abs(hyb) > z * np.array(rows[0]["lin_var_se"])) > 0.5
    # and the linearization error at p = x is real (many SEs), which is what Table 2 measures
    assert np.max(np.abs(np.array(rows[0]["l_dmean"])) / np.array(rows[0]["l_dmean_se"])) > 10


def test_task_is_deterministic_and_keyed(context, dense_rows):
    assert tightness_task((1, 0.05, "dense"), context) == dense_rows
    other = tightness_task((1, 0.2, "sparse"), context)
    assert len(other) == 1 and other[0]["cov"] == "sparse"


def test_recheck_formula_agrees_with_the_closed_form_and_with_the_row(context, dense_rows):
    checked = recheck_formula((1, 0.05, "dense"), context, "input", n_samples=10_000)
    row = {c: np.array(dense_rows[0][c], dtype=float) for c in ("mean", "var_exact", "lin_var", "lin_var_se")}
    # the same closed form as the task's row (rounded there to 6 significant digits: relative error <= 5e-6)
    assert np.allclose(checked["mean"].numpy(), row["mean"], rtol=5.01e-6, atol=0)
    assert np.allclose(checked["var"].numpy(), row["var_exact"], rtol=5.01e-6, atol=0)
    # fresh float64 draws agree with it within SE, and with the row's own (float32) Monte Carlo within both SEs
    z = bonferroni_z(30)
    assert torch.all(checked["z_mean"].abs() <= z) and torch.all(checked["z_var"].abs() <= z)
    both_se = np.sqrt(checked["mc_var_se"].numpy() ** 2 + row["lin_var_se"] ** 2)
    assert np.all(np.abs(checked["mc_var"].numpy() - row["lin_var"]) <= z * both_se)
    # the draws are fresh: another seed gives other draws
    other = recheck_formula((1, 0.05, "dense"), context, "input", n_samples=10_000, seed=2)
    assert not torch.equal(other["mc_var"], checked["mc_var"]) and torch.equal(other["var"], checked["var"])
    # the count was draws= (issue 23 item 6): still accepted, with a DeprecationWarning naming n_samples
    with pytest.warns(DeprecationWarning, match="use 'n_samples='"):
        old = recheck_formula((1, 0.05, "dense"), context, "input", draws=10_000)
    assert all(torch.equal(old[name], checked[name]) for name in checked)


def test_recheck_formula_detects_a_wrong_closed_form_and_rejects_bad_arguments(context, monkeypatch):
    from netmoments.experiments import tightness

    exact = tightness._exact_moments
    monkeypatch.setattr(tightness, "_exact_moments", lambda *a: (lambda m, v: (m, 1.1 * v))(*exact(*a)))
    wrong = recheck_formula((1, 0.05, "dense"), context, "dither", n_samples=10_000)
    assert torch.all(wrong["z_var"] > bonferroni_z(10))  # a 10 % variance error is ~7 SEs at 10^4 draws
    with pytest.raises(ValueError, match=r"no row point='centroid', k=100; its rows are \[\('input', None\)"):
        recheck_formula((1, 0.05, "dense"), context, "centroid", k=100)
    with pytest.raises(ValueError, match="n_samples must be an int >= 2"):
        recheck_formula((1, 0.05, "dense"), context, n_samples=1)
    with pytest.raises(ValueError, match="batch must be an int >= 1"):
        recheck_formula((1, 0.05, "dense"), context, batch=0.5)


def test_in_process_and_two_workers_give_the_same_file(tmp_path, context):
    pytest.importorskip("distributed")
    cfg = replace(SMALL, mc_samples=200, points=("input",))
    ctx = build_context(cfg, n_images=1)
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    run_tightness(one, n_images=1, sigmas=[0.05], covs=["sparse", "blur"], config=cfg, context=ctx, progress=False)
    run_tightness(two, n_images=1, sigmas=[0.05], covs=["sparse", "blur"], config=cfg, context=ctx, workers=2,
                  progress=False)  # fmt: skip
    assert one.read_bytes() == two.read_bytes()
    meta = json.loads(one.with_suffix(".json").read_text())
    assert meta["tasks_done"] == meta["n_tasks"] == 2
    assert meta["sittings"][0]["git_commit"] and meta["sittings"][0]["versions"]["torch"]
    assert {cov: v["n"] for cov, v in meta["sittings"][0]["cost_by_cov"].items()} == {"sparse": 1, "blur": 1}
    # resuming with other settings is refused (the file would mix two experiments)
    with pytest.raises(Exception, match="other settings"):
        run_tightness(one, n_images=1, sigmas=[0.2], covs=["sparse", "blur"], config=cfg, context=ctx,
                      resume=True, progress=False)  # fmt: skip


def test_bootstrap_ci_and_bonferroni():
    rng = np.random.default_rng(0)
    values = rng.normal(1.0, 1.0, 400)
    est, lo, hi = bootstrap_ci(values)
    assert lo < est < hi and est == pytest.approx(values.mean())
    assert hi - lo == pytest.approx(2 * 1.96 / 20, rel=0.15)  # ~ the normal-theory interval
    assert bootstrap_ci(np.ones(5)) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="per-image"):
        bootstrap_ci(np.ones((2, 2)))
    assert bonferroni_z(1) == pytest.approx(2.5758, abs=1e-4)  # z_{1 - 0.01/2}
    assert bonferroni_z(20) > bonferroni_z(2)


def test_prose_formatting_helpers():
    assert format_ci(0.0531, 0.0424, 0.0649) == "0.053 [0.042, 0.065]"
    assert format_ci(-0.0421, -0.0504, -0.0336, digits=2) == "-0.04 [-0.05, -0.03]"
    assert format_ci(-0.0001, -0.0004, 0.0002) == "0.000 [0.000, 0.000]"  # never "-0.000"
    assert format_ci(12.345, 10, 15, digits=0) == "12 [10, 15]"
    with pytest.raises(ValueError, match="low must be <= high"):
        format_ci(1.0, 2.0, 0.5)
    with pytest.raises(ValueError, match="finite"):
        format_ci(float("nan"), 0.0, 1.0)
    values = np.random.default_rng(1).normal(2.0, 1.0, 50)
    est, lo, hi = bootstrap_ci(values, np.median)
    assert ci_text(values, np.median, digits=2) == f"{est:.2f} [{lo:.2f}, {hi:.2f}]"
    assert [interval_sign(*lh) for lh in ((0.1, 0.3), (-0.3, -0.1), (-0.1, 0.2), (0.0, 0.2))] == [1, -1, 0, 0]
    with pytest.raises(ValueError, match="low must be <= high"):
        interval_sign(1.0, 0.0)
    assert join_words(["a"]) == "a" and join_words(["a", "b"]) == "a and b"
    assert join_words([1, 2, 3]) == "1, 2 and 3"
    with pytest.raises(ValueError, match="at least one"):
        join_words([])
    words = {1: "worse", -1: "better", 0: "not distinguishable"}
    assert sign_phrase([1, 1, 0], [100, 200, 2000], words, "k = ") == \
        "worse at k = 100 and 200, not distinguishable at k = 2000"
    assert sign_phrase([0, 1, 0], [1, 2, 3], words) == "not distinguishable at 1 and 3, worse at 2"
    assert sign_phrase([-1, -1], ["a", "b"], words, every="every σ") == "better at every σ"
    assert sign_phrase([-1, 0], ["a", "b"], words, every="every σ") == "better at a, not distinguishable at b"
    with pytest.raises(ValueError, match="equally long"):
        sign_phrase([1], [1, 2], words)
    with pytest.raises(ValueError, match="each with a phrase"):
        sign_phrase([2], [1], words)
    assert [sig_text(v) for v in (368.9, 3.841, 18.84, 0.05312, 1234.5, -0.0421, 0)] == \
        ["369", "3.84", "18.8", "0.0531", "1,234", "-0.0421", "0"]
    assert sig_text(3.841, 2) == "3.8"
    with pytest.raises(ValueError, match="finite"):
        sig_text(float("inf"))


def test_complete_images_is_the_longest_complete_prefix():
    def rows(tasks):  # two linearization points (rows) per task, as a dense task has several
        return [{"image": i, "task": f"{i}-{t}"} for i, t in tasks for _ in range(2)]

    full = [(i, t) for i in range(4) for t in range(3)]
    assert complete_images(rows(full), 3) == 4
    assert complete_images(rows([x for x in full if x != (1, 2)]), 3) == 1  # image 1 misses a task
    assert complete_images(rows([x for x in full if x[0] != 0]), 3) == 0  # image 0 not started
    assert complete_images([], 3) == 0
    with pytest.raises(ValueError, match="more than tasks_per_image"):
        complete_images(rows(full), 2)
    with pytest.raises(ValueError, match="tasks_per_image must be >= 1"):
        complete_images(rows(full), 0)


def test_tables_from_rows(dense_rows, context):
    rows = list(dense_rows) + tightness_task((0, 0.05, "dense"), context)
    text = summary_table(rows, covs=("dense",))
    assert text.count("\n") == 2 + 3 - 1 and "| dense | 0.05 | input | 2 |" in text
    assert "| dense | 0.05 | dither | 2 |" in text and text.splitlines()[3].split("|")[6].strip() == "–"  # no NM18 there
    m = image_metrics(rows, 0.05, "dense", "input")
    assert list(m["image"]) == [0, 1] and m["zmu"].shape == (2, 10)
    # Table 3 rows: fake a k by relabelling (the table only needs matching centroid / farthest rows)
    fake = [dict(r, point=p, k=5, clusters=5) for r in rows if r["point"] == "input" for p in ("centroid", "farthest")]
    assert "| 5 (5) | 0.05 | 2 |" in cluster_table(fake)
    with pytest.raises(ValueError, match="no rows"):
        image_metrics(rows, 0.3, "dense", "input")


def test_per_image_table_recomputes_from_the_raw_columns_and_round_trips_through_csv(dense_rows, context, tmp_path):
    import csv

    rows = list(dense_rows) + tightness_task((0, 0.05, "dense"), context)
    records = per_image_table(rows)
    assert [(r["image"], r["point"]) for r in records] == [(i, p) for i in (0, 1) for p in ("input", "dither", "tie_aware")]
    n = SMALL.mc_samples
    for rec in records:
        raw = next(r for r in rows if (r["image"], r["point"]) == (rec["image"], rec["point"]))
        a = {name: np.array([np.nan if v is None else v for v in raw[name]]) if raw[name] else np.full(10, np.nan)
             for name in ROW_LISTS}  # fmt: skip
        # straight from the definitions, not through image_metrics
        sym = lambda u, v: np.mean(2 * np.abs(u - v) / (np.abs(u) + np.abs(v)))
        assert rec["var_err_exact"] == pytest.approx(sym(a["var_exact"], a["mc_var"]), rel=1e-12)
        if rec["point"] == "input":
            assert rec["var_err_hybrid"] == pytest.approx(sym(a["var_hybrid"], a["mc_var"]), rel=1e-12)
        else:
            assert np.isnan(rec["var_err_hybrid"]) and np.isnan(rec["var_err_series"])
        dmu = a["f_dmean"] - a["l_dmean"]
        assert rec["zmu"] == pytest.approx(np.median(np.abs(dmu) / np.sqrt(a["mc_var"])), rel=1e-12)
        z_formula = np.concatenate([a["f_dmean"] / np.sqrt(a["lin_var"] / n),
                                    (a["var_exact"] - a["lin_var"]) / a["lin_var_se"]])  # fmt: skip
        assert rec["z_formula_max"] == pytest.approx(np.abs(z_formula).max(), rel=1e-12)
        assert rec["lin_var_high"] == int(np.sum(a["l_dvar"] < 0))
        assert (rec["label"], rec["ties"], rec["k"], rec["mc_samples"]) == (raw["label"], raw["ties"], None, n)
    path = tmp_path / "per_digit.csv"
    assert write_per_image_csv(rows, path) == len(records)
    with path.open() as handle:
        back = list(csv.DictReader(handle))
    assert tuple(back[0]) == PER_IMAGE_COLUMNS and len(back) == len(records)
    for rec, line in zip(records, back):
        assert line["k"] == "" and line["cov"] == rec["cov"] and int(line["image"]) == rec["image"]
        for name in ("var_err_exact", "zmu", "z_formula_max", "var_lin_part"):
            assert float(line[name]) == pytest.approx(rec[name], rel=1e-5)
        if rec["point"] == "input":
            assert float(line["var_err_hybrid"]) == pytest.approx(rec["var_err_hybrid"], rel=1e-5)
        else:
            assert line["var_err_hybrid"] == line["var_err_series"] == ""  # not computed there: empty, not "nan"
    text = report_markdown(rows)
    assert "## Table 2" in text and "## Table 3" not in text and summary_table(rows) in text


def test_cli_argument_errors_and_unreachable_scheduler(tmp_path):
    parser = build_parser()
    for argv in (["tightness", "--point", "median"], ["tightness", "--sigma", "-1"], ["tightness", "--images", "0"],
                 ["tightness", "--workers", "x"]):  # fmt: skip
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
    cmd = [sys.executable, "-m", "netmoments.experiments", "tightness"]
    bad = subprocess.run(cmd + ["--workers", "-1"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "--workers" in bad.stderr
    start = time.perf_counter()
    unreachable = subprocess.run(cmd + ["--images", "1", "--out", str(tmp_path / "x.jsonl"), "--scheduler",
                                        "tcp://127.0.0.1:9", "--connect-timeout", "2"],
                                 capture_output=True, text=True, timeout=120)  # fmt: skip
    assert unreachable.returncode == 2, unreachable.stderr[-2000:]
    assert "Traceback" not in unreachable.stderr and "cannot reach the Dask scheduler" in unreachable.stderr
    assert time.perf_counter() - start < 60  # most of it is importing torch
    assert not (tmp_path / "x.jsonl").exists()


def test_cli_tiny_run_resume_and_report(tmp_path, capsys):
    from netmoments.experiments.__main__ import main as cli_main

    out = tmp_path / "t.jsonl"
    argv = ["tightness", "--images", "1", "--sigma", "0.05", "--cov", "sparse", "--mc-samples", "100", "--out",
            str(out), "--no-progress"]  # fmt: skip
    assert cli_main(argv) == 0
    first = out.read_bytes()
    assert cli_main(argv) == 2  # exists: needs --resume
    assert "--resume" in capsys.readouterr().err
    assert cli_main(argv + ["--resume"]) == 0 and out.read_bytes() == first
    meta = json.loads(out.with_suffix(".json").read_text())
    assert len(meta["sittings"]) == 2 and "tightness --images 1" in meta["sittings"][0]["command"]
    rows = read_rows(out)
    assert [r["task"] for r in rows] == [task_id((0, 0.05, "sparse"))]
    tables, per_digit = tmp_path / "tables.md", tmp_path / "per_digit.csv"
    capsys.readouterr()
    assert cli_main(["tightness", "--report", "--out", str(out), "--tables", str(tables), "--csv", str(per_digit)]) == 0
    import signal

    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the CLI's SIGTERM handler is removed again
    printed = capsys.readouterr().out
    assert "| sparse | 0.05 | input | 1 |" in printed and "tightness --images 1" in printed
    assert tables.read_text().strip() == printed.strip()
    from netmoments.provenance import read_provenance

    for export in (tables, per_digit):  # each export says what made it and from which rows
        record = read_provenance(export)
        assert record is not None, export
        assert "--report" in record["command"] and record["source"]["rows"] == out.as_posix()
        assert record["source"]["n_rows"] == len(rows)
    lines = per_digit.read_text().splitlines()
    assert len(lines) == 2 and lines[1].startswith("0,") and ",sparse,input," in lines[1]
    assert cli_main(argv + ["--resume", "--csv", str(per_digit)]) == 2  # an export needs --report
    assert "--report" in capsys.readouterr().err


def test_cli_sigterm_stops_the_run_even_when_a_callback_swallows_the_interrupt(tmp_path, monkeypatch, capsys):
    import signal

    from netmoments.experiments import tightness
    from netmoments.experiments.__main__ import main as cli_main

    real_run = tightness.run_tightness

    def run_with_a_swallowed_sigterm(out, **kwargs):
        try:  # SIGTERM arrives while the main thread is in a callback that swallows exceptions, as Dask's GC one does
            signal.raise_signal(signal.SIGTERM)
        except KeyboardInterrupt:
            pass
        return real_run(out, **kwargs)

    monkeypatch.setattr(tightness, "run_tightness", run_with_a_swallowed_sigterm)
    out = tmp_path / "t.jsonl"
    argv = ["tightness", "--images", "2", "--sigma", "0.05", "--cov", "sparse", "--point", "input", "--mc-samples",
            "100", "--out", str(out), "--no-progress"]  # fmt: skip
    assert cli_main(argv) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not out.exists() or not read_rows(out)  # stopped before the first task
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["tasks_done"] == 0 and len(meta["sittings"]) == 1 and "stop" not in meta["sittings"][0]["runner"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_cli_gzipped_output_keeps_its_metadata_beside_it(tmp_path):
    import gzip

    from netmoments.experiments.__main__ import main as cli_main

    plain, packed = tmp_path / "t.jsonl", tmp_path / "z" / "t.jsonl.gz"
    common = ["tightness", "--images", "1", "--sigma", "0.05", "--cov", "sparse", "--mc-samples", "100",
              "--no-progress"]  # fmt: skip
    assert cli_main(common + ["--out", str(plain)]) == 0
    assert cli_main(common + ["--out", str(packed)]) == 0
    assert gzip.decompress(packed.read_bytes()) == plain.read_bytes()
    assert json.loads((tmp_path / "z" / "t.json").read_text())["tasks_done"] == 1
    assert cli_main(["tightness", "--out", str(tmp_path / "t.csv.gz"), "--images", "1"]) == 2
