"""The resumable task runner: order-independent rows, atomic appends, resume, Dask workers, fast failures."""
import argparse
import os
import sys
import time
from pathlib import Path

import cloudpickle
import numpy as np
import pytest

from netmoments.experiments import runner
from netmoments.experiments.runner import RunnerError, read_rows, run_tasks, seed_from_key, task_id

# The task functions below live in this test module, which Dask workers cannot import: ship them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def noisy_task(key, context=None):
    """Rows drawn from a generator seeded by the key only (a stand-in for an experiment's task)."""
    image, sigma = key
    rng = np.random.default_rng(seed_from_key(7, image, sigma))
    offset = 0.0 if context is None else context["offset"]
    return [{"image": image, "sigma": sigma, "logit": j, "value": float(rng.normal() + offset)} for j in range(3)]


def crash_once_task(key, marker_dir):
    """Kills its own worker process the first time it sees ``key`` (a worker dying mid-task)."""
    marker = Path(marker_dir) / f"seen-{key[0]}-{key[1]}"
    if key == (1, 0.5) and not marker.exists():
        marker.touch()
        os._exit(1)
    return noisy_task(key)


def cancel_once_task(key, context, marker_dir):
    """Has the scheduler cancel it the first time it sees ``key`` (as when the scheduler forgets a task)."""
    from distributed import Future, get_client, get_worker

    marker = Path(marker_dir) / f"cancelled-{key[0]}-{key[1]}"
    if key == (2, 1.0) and not marker.exists():
        marker.touch()
        get_client().cancel(Future(get_worker().get_current_task()), force=True)
        time.sleep(5)  # the cancellation reaches the runner first
    return noisy_task(key, context)


TASKS = [(i, s) for i in range(4) for s in (0.5, 1.0)]

# A conv layer's forward pass on 2,000 digits, five times (as a Monte Carlo task does); prints the page faults
# of the last four. Its 200 MB output is freed and allocated again each time: with memory reuse, ~0 faults.
REUSE_PROBE = """
import resource
import torch
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.set_num_threads(1)
x, w = torch.rand(2000, 1, 28, 28), torch.rand(32, 1, 5, 5)
for i in range(5):
    if i == 1:
        start = faults()
    y = torch.nn.functional.conv2d(x, w, padding=2)
    z = torch.relu(torch.nn.functional.max_pool2d(y, 2))
    del y, z
print(faults() - start)
"""


def reuse_probe_task(key):
    """One row: this worker's malloc environment and the page faults of :data:`REUSE_PROBE`."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(REUSE_PROBE, {})
    return [{"key": key[0], "faults": int(out.getvalue()), **{k: os.environ.get(k) for k in runner.MALLOC_ENVIRON}}]


def page_faulting_task(key):
    """Maps fresh memory and touches every page, ten times: about 160,000 page faults, i.e. kernel time."""
    import mmap

    size = 64 << 20
    for _ in range(10):
        with mmap.mmap(-1, size) as block:
            for offset in range(0, size, mmap.PAGESIZE):
                block[offset] = 1
    return [{"key": key}]


def test_kernel_seconds_are_recorded_as_part_of_cpu_seconds(tmp_path):
    summary = run_tasks([1, 2], page_faulting_task, tmp_path / "k.csv", progress=False)
    (wall1, cpu1, kernel1), (wall2, cpu2, kernel2) = summary.task_costs.values()
    assert summary.task_kernel_seconds == [kernel1, kernel2]
    for wall, cpu, kernel in summary.task_costs.values():
        assert 0.02 < kernel <= cpu + 0.02  # clock-tick resolution
    assert summary.as_dict()["task_kernel_seconds_total"] == round(kernel1 + kernel2, 3)


def test_task_id_and_seed():
    assert task_id((3, 0.05, "t2")) == '[3,0.05,"t2"]'
    assert task_id(np.int64(3)) == "3"
    assert seed_from_key(0, 1, 0.5) == seed_from_key(0, 1, 0.5)
    assert len({seed_from_key(0, i, s) for i in range(50) for s in (0.01, 0.05)}) == 100
    assert 0 <= seed_from_key(2**40, "x") < 2**63
    with pytest.raises(TypeError, match="task keys"):
        task_id((1, object()))
    with pytest.raises(ValueError, match="finite"):
        task_id((1, float("nan")))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".csv.gz", ".jsonl.gz"])
def test_in_process_run_writes_every_task_once_in_task_order(tmp_path, suffix):
    out = tmp_path / f"rows{suffix}"
    summary = run_tasks(TASKS, noisy_task, out, progress=False)
    assert summary.complete and summary.n_run == len(TASKS) and len(summary.task_seconds) == len(TASKS)
    assert all(c >= 0 for c in summary.task_cpu_seconds) and summary.as_dict()["task_cpu_seconds_total"] >= 0
    assert set(summary.task_costs) == {task_id(t) for t in TASKS}
    rows = read_rows(out)
    assert len(rows) == 3 * len(TASKS)
    assert [r["task"] for r in rows[::3]] == [task_id(t) for t in TASKS]
    expected = [row for t in TASKS for row in noisy_task(t)]
    assert [{k: r[k] for k in ("image", "sigma", "logit", "value")} for r in rows] == expected  # exact floats
    assert all(r["task_rows"] == 3 for r in rows)
    with pytest.raises(RunnerError, match="exists"):
        run_tasks(TASKS, noisy_task, out, progress=False)


def test_resume_in_two_sittings_equals_one_run(tmp_path):
    one = tmp_path / "one.csv"
    run_tasks(TASKS, noisy_task, one, progress=False)
    two = tmp_path / "two.csv"
    first = run_tasks(TASKS[:3], noisy_task, two, progress=False)  # first sitting: stopped after 3 tasks
    assert first.complete and first.n_run == 3
    with pytest.raises(RunnerError, match="resume"):
        run_tasks(TASKS, noisy_task, two, progress=False)
    second = run_tasks(TASKS, noisy_task, two, resume=True, progress=False)
    assert (second.n_skipped, second.n_run, second.complete) == (3, len(TASKS) - 3, True)
    assert two.read_bytes() == one.read_bytes()
    again = run_tasks(TASKS, noisy_task, two, resume=True, progress=False)
    assert again.n_run == 0 and two.read_bytes() == one.read_bytes()


def test_resume_drops_a_torn_tail_and_incomplete_tasks(tmp_path):
    one = tmp_path / "one.csv"
    run_tasks(TASKS, noisy_task, one, progress=False)
    lines = one.read_bytes().splitlines(keepends=True)
    # header + 2 full tasks + 1 row of the third task + half a line: a run killed while writing
    torn = tmp_path / "torn.csv"
    torn.write_bytes(b"".join(lines[: 1 + 6 + 1]) + lines[8][:10])
    assert [r["task"] for r in read_rows(torn)] == [task_id(TASKS[0])] * 3 + [task_id(TASKS[1])] * 3
    summary = run_tasks(TASKS, noisy_task, torn, resume=True, progress=False)
    assert summary.n_skipped == 2 and summary.n_run == len(TASKS) - 2
    assert torn.read_bytes() == one.read_bytes()


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".csv.gz"])
def test_gzipped_output_resumes_after_a_torn_member_and_matches_the_plain_file(tmp_path, suffix):
    import gzip

    plain = tmp_path / ("plain" + suffix[: -len(".gz")])
    run_tasks(TASKS, noisy_task, plain, progress=False)
    out = tmp_path / ("rows" + suffix)
    run_tasks(TASKS[:3], noisy_task, out, progress=False)  # sitting 1: three tasks, one gzip member each
    members = out.read_bytes()
    one_more = gzip.compress(b"this task never finished writing\n", mtime=0)
    out.write_bytes(members + one_more[: len(one_more) // 2])  # killed mid-write: a truncated member
    assert len(read_rows(out)) == 3 * 3
    summary = run_tasks(TASKS, noisy_task, out, resume=True, progress=False)
    assert (summary.n_skipped, summary.n_run, summary.complete) == (3, len(TASKS) - 3, True)
    assert gzip.decompress(out.read_bytes()) == plain.read_bytes()  # same rows, same order, same bytes
    with pytest.raises(RunnerError, match=r"\.jsonl \(optionally followed by \.gz\)"):
        run_tasks(TASKS, noisy_task, tmp_path / "rows.txt.gz", progress=False)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl.gz"])
def test_drop_tasks_makes_resume_run_them_again(tmp_path, suffix):
    from netmoments.experiments.runner import drop_tasks

    out = tmp_path / f"rows{suffix}"
    run_tasks(TASKS, noisy_task, out, progress=False)
    whole = read_rows(out)
    assert drop_tasks(out, [task_id(TASKS[-1]), task_id(TASKS[0])]) == 6
    assert {r["task"] for r in read_rows(out)} == {task_id(t) for t in TASKS[1:-1]}
    summary = run_tasks(TASKS, noisy_task, out, resume=True, progress=False)
    assert summary.n_run == 2 and read_rows(out) == whole
    assert drop_tasks(out, ["[99,1.0]"]) == 0 and read_rows(out) == whole


def test_resume_refuses_a_file_from_another_run(tmp_path):
    out = tmp_path / "rows.csv"
    run_tasks([(9, 9.0)], noisy_task, out, progress=False)
    with pytest.raises(RunnerError, match="not in this run"):
        run_tasks(TASKS, noisy_task, out, resume=True, progress=False)


def test_task_failure_keeps_finished_rows(tmp_path):
    def failing(key):
        if key == TASKS[2]:
            raise ArithmeticError("boom")
        return noisy_task(key)

    out = tmp_path / "rows.jsonl"
    with pytest.raises(RunnerError, match=r"task \[1,0.5\] failed: ArithmeticError: boom"):
        run_tasks(TASKS, failing, out, progress=False)
    assert len(read_rows(out)) == 2 * 3
    with pytest.raises(RunnerError, match="non-empty list"):
        run_tasks([(0, 1.0)], lambda key: [], tmp_path / "empty.csv", progress=False)


def test_an_interrupted_run_checkpoints_its_sitting(tmp_path):
    seen = []

    def interrupted(key):
        if key == TASKS[3]:
            raise KeyboardInterrupt
        return noisy_task(key)

    with pytest.raises(KeyboardInterrupt):
        run_tasks(TASKS, interrupted, tmp_path / "rows.csv", progress=False, checkpoint=seen.append)
    assert seen and seen[-1].n_run == 3 and not seen[-1].complete
    assert len(read_rows(tmp_path / "rows.csv")) == 3 * 3


@pytest.mark.parametrize("workers", [0, 1])
def test_a_stop_event_ends_the_run_after_the_task_it_was_set_in(tmp_path, workers):
    import threading

    if workers:
        pytest.importorskip("distributed")
    stop, seen = threading.Event(), []

    def set_after_the_first(summary):  # what a SIGTERM handler does, at a moment we control
        seen.append(summary.n_run)
        stop.set()

    out = tmp_path / "rows.csv"
    with pytest.raises(KeyboardInterrupt):
        run_tasks(TASKS, noisy_task, out, workers=workers, progress=False, stop=stop, checkpoint=set_after_the_first,
                  checkpoint_s=0.0)  # fmt: skip
    assert seen == [1, 1]  # the checkpoint that set it, then the interrupted sitting's
    assert len({r["task"] for r in read_rows(out)}) == 1
    summary = run_tasks(TASKS, noisy_task, out, resume=True, progress=False)  # a later sitting finishes the run
    assert summary.complete and summary.n_run == len(TASKS) - 1


def test_bad_arguments():
    with pytest.raises(RunnerError, match=".csv or .jsonl"):
        run_tasks(TASKS, noisy_task, "rows.txt", progress=False)
    with pytest.raises(ValueError, match="unique"):
        run_tasks([(1, 0.5), (1, 0.5)], noisy_task, "rows.csv", progress=False)
    with pytest.raises(ValueError, match="workers"):
        run_tasks(TASKS, noisy_task, "rows.csv", workers=-1, progress=False)
    parser = argparse.ArgumentParser()
    runner.add_runner_arguments(parser)
    for argv in (["--workers", "-2"], ["--workers", "two"], ["--scheduler", "nohost"], ["--workers", "2",
                                                                                          "--scheduler", "tcp://a:1"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
    args = parser.parse_args(["--workers", "2", "--resume"])
    assert runner.runner_kwargs(args)["workers"] == 2 and runner.runner_kwargs(args)["resume"]


def test_local_dask_workers_give_the_same_file_and_survive_a_dying_worker(tmp_path):
    pytest.importorskip("distributed")
    one = tmp_path / "one.csv"
    run_tasks(TASKS, noisy_task, one, context={"offset": 1.0}, progress=False)
    two = tmp_path / "two.csv"
    summary = run_tasks(TASKS, noisy_task, two, context={"offset": 1.0}, workers=2, progress=False)
    assert summary.complete and summary.workers == 2
    assert two.read_bytes() == one.read_bytes()
    # A worker dies in the middle of task (1, 0.5); its nanny restarts it and the task is run again.
    plain = tmp_path / "plain.csv"
    run_tasks(TASKS, noisy_task, plain, progress=False)
    crashed = tmp_path / "crashed.csv"
    import functools

    summary = run_tasks(TASKS, functools.partial(crash_once_task, marker_dir=str(tmp_path)), crashed, workers=2,
                        progress=False)  # fmt: skip
    assert (tmp_path / "seen-1-0.5").exists()  # it did die once
    assert summary.complete and crashed.read_bytes() == plain.read_bytes()


def test_a_task_the_scheduler_forgets_is_run_again(tmp_path):
    pytest.importorskip("distributed")
    import functools

    plain = tmp_path / "plain.csv"
    run_tasks(TASKS, noisy_task, plain, context={"offset": 1.0}, progress=False)
    cancelled = tmp_path / "cancelled.csv"
    summary = run_tasks(TASKS, functools.partial(cancel_once_task, marker_dir=str(tmp_path)), cancelled,
                        context={"offset": 1.0}, workers=2, progress=False)  # fmt: skip
    assert (tmp_path / "cancelled-2-1.0").exists()  # it was cancelled once
    assert summary.complete and cancelled.read_bytes() == plain.read_bytes()


def test_unreachable_scheduler_fails_fast_with_a_clear_message(tmp_path):
    pytest.importorskip("distributed")
    start = time.perf_counter()
    with pytest.raises(RunnerError, match="cannot reach the Dask scheduler at 'tcp://127.0.0.1:9'"):
        run_tasks(TASKS, noisy_task, tmp_path / "rows.csv", scheduler="tcp://127.0.0.1:9", connect_timeout=2,
                  progress=False)  # fmt: skip
    assert time.perf_counter() - start < 15


def test_scattered_context_is_alive_only_if_every_future_is():
    from types import SimpleNamespace as Fake

    from netmoments.experiments import runner_dask

    done, lost = Fake(status="finished"), Fake(status="cancelled")
    assert runner_dask._scattered_alive(done) and not runner_dask._scattered_alive(lost)
    assert runner_dask._scattered_alive([done, done]) and not runner_dask._scattered_alive([done, lost])
    assert runner_dask._scattered_alive({"a": done}) and not runner_dask._scattered_alive({"a": done, "b": lost})


def _probe_faults(setup: str) -> int:
    import subprocess

    code = setup + "\n" + REUSE_PROBE
    # without the MALLOC_* variables a Dask nanny of an earlier test may have left in this process's environment
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env=env).stdout)


def test_keep_freed_memory_makes_a_reused_buffer_free_of_page_faults():
    if sys.platform != "linux":
        pytest.skip("glibc malloc settings")
    pages = 4 * 2000 * 32 * 28 * 28 * 4 // 4096  # four forward passes' conv outputs
    plain = _probe_faults("")
    kept = _probe_faults("from netmoments.experiments.runner import keep_freed_memory\nassert keep_freed_memory()")
    assert plain > pages  # every pass faults its buffers in again: what the settings are for
    assert kept < pages // 100


def test_local_dask_workers_start_with_the_memory_reuse_settings(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    if sys.platform != "linux":
        pytest.skip("glibc malloc settings")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")  # as an earlier Dask cluster leaves it; ours must win
    out = tmp_path / "probe.csv"
    run_tasks([(0,)], reuse_probe_task, out, workers=1, progress=False)
    (row,) = read_rows(out)
    for name, value in runner.MALLOC_ENVIRON.items():
        assert str(row[name]) == value, name
    assert row["faults"] < 4 * 2000 * 32 * 28 * 28 * 4 // 4096 // 100  # on the worker's task thread too
