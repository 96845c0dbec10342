"""Runs that never lose data: the paths around the runner's resume machinery, as an adversarial user takes them.

Two runs on one output, resuming with other flags after a kill, exports and single attacks aimed at results files,
damaged files read or resumed, arguments that make no sense, schedulers that never answer. Every test here failed
before its fix (see the comments); each is kept to tiny settings and a few seconds.
"""
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest

from netmoments.experiments import build_parser, runner, runner_dask, runner_files
from netmoments.experiments.runner import (
    OutputInUse, RunnerError, RunnerWarning, output_lock, read_rows, run_tasks, scan_file, seed_from_key, task_id,
)

REPO = Path(__file__).resolve().parents[1]
TASKS = [(i, s) for i in range(4) for s in (0.5, 1.0)]


def rows_of(key, context=None):
    """Three rows seeded by the key only (a stand-in for an experiment's task)."""
    import random

    rng = random.Random(seed_from_key(3, *key))
    return [{"image": key[0], "sigma": key[1], "logit": j, "value": rng.random()} for j in range(3)]


def interrupted_after(n):
    """A task function that stops the run (as Ctrl-C would) at the ``n``-th task: leaves one gzip member per task."""
    def fn(key):
        if key == TASKS[n]:
            raise KeyboardInterrupt
        return rows_of(key)

    return fn


def _python(code: str, *args, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs)


HOLD_LOCK = """
    import sys, types
    # the runner's modules alone (stdlib only): importing the package would import torch, seconds per holder
    package = sys.modules["experiments"] = types.ModuleType("experiments")
    package.__path__ = [sys.argv[1]]
    from experiments import runner
    with runner.output_lock(*sys.argv[2:]):
        print("locked", flush=True)
        sys.stdin.read()  # until the test closes stdin (or kills this process)
"""


@pytest.fixture
def holder(tmp_path):
    """Start another process that holds the lock on given paths; yields a function that starts it."""
    procs = []

    def start(*paths):
        proc = _python(HOLD_LOCK, REPO / "netmoments" / "experiments", *paths)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "locked", proc.stderr.read()
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


# ------------------------------------------------------------------------------------------------ one run per output


def test_a_second_run_on_one_output_fails_at_once_naming_the_first(tmp_path, holder):
    # Before: two runs on one --out both appended and rewrote it; 5 of 24 tasks were left, reported "complete".
    out = tmp_path / "rows.csv"
    proc = holder(out)
    start = time.perf_counter()
    with pytest.raises(OutputInUse, match=rf"rows.csv is in use by another run \(pid {proc.pid}\)"):
        run_tasks(TASKS, rows_of, out, progress=False)
    assert time.perf_counter() - start < 2 and not out.exists()
    proc.stdin.close()  # the other run ends: its lock (and lock file) go, and this run can start
    proc.wait(timeout=30)
    assert not list(tmp_path.glob(".*.lock"))
    summary = run_tasks(TASKS, rows_of, out, progress=False)
    assert summary.complete and len(read_rows(out)) == 3 * len(TASKS)
    assert not list(tmp_path.glob(".*.lock"))  # removed again after the run


def test_a_killed_run_leaves_no_lock_behind(tmp_path, holder):
    out = tmp_path / "rows.jsonl"
    proc = holder(out)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert list(tmp_path.glob(".*.lock"))  # the file stays, but the kernel dropped the lock with the process
    assert run_tasks(TASKS, rows_of, out, progress=False).complete


def test_the_lock_holds_for_every_spelling_of_the_file_and_is_reentrant(tmp_path, holder, monkeypatch):
    out = tmp_path / "rows.csv"
    (tmp_path / "link.csv").symlink_to(out)
    holder(out)
    monkeypatch.chdir(tmp_path)
    for spelling in ("rows.csv", "./rows.csv", tmp_path / "link.csv"):
        with pytest.raises(OutputInUse):
            run_tasks(TASKS, rows_of, spelling, progress=False)
    mine = tmp_path / "mine.csv"
    with output_lock(mine):  # a command locks its files first, then its run locks the output again
        assert run_tasks(TASKS, rows_of, mine, progress=False).complete
    assert runner.output_in_use(mine) is None


def test_two_cli_runs_on_one_output_one_fails_at_once(tmp_path, holder, capsys):
    from netmoments.experiments.__main__ import main as cli_main

    out = tmp_path / "t.jsonl"
    proc = holder(out)
    start = time.perf_counter()
    code = cli_main(["tightness", "--images", "1", "--sigma", "0.05", "--cov", "sparse", "--mc-samples", "100",
                     "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and f"error: {out} is in use by another run (pid {proc.pid})" in err, err
    assert time.perf_counter() - start < 5  # at once: before the digits are loaded
    assert not out.exists() and not out.with_suffix(".json").exists()
    # the metadata file is locked too: a run on t.jsonl.gz (same t.json) cannot take it over
    proc2 = holder(out.with_suffix(".json"))
    code = cli_main(["tightness", "--images", "1", "--out", str(tmp_path / "t.jsonl.gz"), "--no-progress"])
    assert code == 2 and f"(pid {proc2.pid})" in capsys.readouterr().err
    suite = tmp_path / "s.csv"
    proc3 = holder(suite)
    assert cli_main(["attack", "--suite", "sparse", "--out", str(suite), "--no-progress"]) == 2
    assert f"is in use by another run (pid {proc3.pid})" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ resume settings

KILL_SUITE_AT_CHUNK_1 = """
    import os, signal, sys
    from netmoments.experiments import attack_suite

    def fake_task(key, ctx, only=None):
        if key[1] == 1:
            os.kill(os.getpid(), signal.SIGKILL)  # killed for good, in the middle of the run: no checkpoint
        _, labels, index = ctx.batch(key[1])
        return [dict(image=int(i), label=int(y), method="fake") for i, y in zip(index, labels)]

    attack_suite.suite_task = fake_task
    attack_suite.run_suite("sparse", sys.argv[1], images=6, chunk=2, progress=False)
"""


def test_a_suite_killed_before_its_first_checkpoint_refuses_a_resume_with_other_settings(tmp_path, monkeypatch):
    # Before: the metadata (the settings) was first written at the 60 s checkpoint; after a kill, --resume
    # --split train appended training digits to a file of test digits, all labelled "train".
    from netmoments.experiments import attack_suite

    out = tmp_path / "suite.csv"
    proc = _python(KILL_SUITE_AT_CHUNK_1, out)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert len({r["task"] for r in read_rows(out)}) == 1
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["settings"]["split"] == "test" and meta["tasks_done"] == 0  # written before the first task

    def fake_task(key, ctx, only=None):
        _, labels, index = ctx.batch(key[1])
        return [dict(image=int(i), label=int(y), method="fake") for i, y in zip(index, labels)]

    monkeypatch.setattr(attack_suite, "suite_task", fake_task)
    before = out.read_bytes()
    for other in (dict(split="train", images=6, chunk=2), dict(split="test", images=6, chunk=3)):
        with pytest.raises(RunnerError, match="other settings"):
            attack_suite.run_suite("sparse", out, resume=True, progress=False, **other)
        assert out.read_bytes() == before
    # no metadata at all (deleted, or never written by an older version): refused, not guessed
    meta_text = out.with_suffix(".json").read_text()
    out.with_suffix(".json").unlink()
    with pytest.raises(RunnerError, match="metadata file .* is missing"):
        attack_suite.run_suite("sparse", out, split="test", images=6, chunk=2, resume=True, progress=False)
    out.with_suffix(".json").write_text(meta_text)
    meta = attack_suite.run_suite("sparse", out, split="test", images=6, chunk=2, resume=True, progress=False)
    assert meta["tasks_done"] == meta["n_tasks"] == 3 and len(read_rows(out)) == 6


KILL_TIGHTNESS_AT_TASK_1 = """
    import os, signal, sys
    from netmoments.experiments import tightness
    from netmoments.experiments.__main__ import main

    real = tightness.tightness_task

    def task(key, ctx):
        if key[0] == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(key, ctx)

    tightness.tightness_task = task
    main(sys.argv[1:])
"""


def test_tightness_killed_before_its_first_checkpoint_refuses_a_resume_with_other_seed_or_draws(tmp_path, capsys):
    # Before: after a kill within the first 120 s, --resume --seed 7 --mc-samples 1000 mixed seeds and draw counts
    # under one label.
    from netmoments.experiments.__main__ import main as cli_main

    out = tmp_path / "t.jsonl"
    argv = ["tightness", "--images", "3", "--sigma", "0.05", "--cov", "sparse", "--point", "input", "--mc-samples",
            "100", "--out", str(out), "--no-progress"]
    proc = _python(KILL_TIGHTNESS_AT_TASK_1, *argv)
    proc.communicate(timeout=180)
    assert proc.returncode == -signal.SIGKILL
    before = out.read_bytes()
    assert len(read_rows(out)) == 1
    for other in (["--seed", "7"], ["--mc-samples", "1000"], ["--sigma", "0.2"]):
        assert cli_main(argv + ["--resume"] + other) == 2
        err = capsys.readouterr().err
        assert "other settings" in err and "Traceback" not in err, err
        assert out.read_bytes() == before
    assert cli_main(argv) == 2 and "--resume" in capsys.readouterr().err  # a fresh run never overwrites
    assert cli_main(argv + ["--resume"]) == 0
    assert [r["image"] for r in read_rows(out)] == [0, 1, 2]
    capsys.readouterr()
    # an existing metadata file of another run is not overwritten by a fresh run on another --out
    assert cli_main(argv[:-3] + ["--out", str(tmp_path / "u.jsonl"), "--metadata", str(out.with_suffix(".json")),
                                 "--no-progress"]) == 2
    assert "exists" in capsys.readouterr().err


def test_the_metadata_of_a_run_that_finished_no_task_does_not_block_a_fresh_run(tmp_path, capsys):
    from netmoments.experiments.__main__ import main as cli_main

    out = tmp_path / "t.jsonl"
    out.with_suffix(".json").write_text(json.dumps({"settings": {"n_images": 9}, "sittings": [{}], "tasks_done": 0}))
    argv = ["tightness", "--images", "1", "--sigma", "0.05", "--cov", "sparse", "--point", "input", "--mc-samples",
            "100", "--out", str(out), "--no-progress"]
    assert cli_main(argv) == 0
    assert json.loads(out.with_suffix(".json").read_text())["settings"]["n_images"] == 1


# ------------------------------------------------------------------------------------------------ overwrites


def test_a_single_attack_never_overwrites_without_force_and_never_shares_the_suites_default(tmp_path, capsys):
    # Before: `attack` (single mode) overwrote silently, and its default --out was the suite's: it destroyed a
    # suite's results.
    from netmoments.experiments.__main__ import main as cli_main
    from netmoments.experiments.attack import SINGLE_OUT, single_stem, suite_out

    singles = {single_stem(SINGLE_OUT).with_suffix(s) for s in (".csv", ".json", ".npz")}
    assert not singles & {Path(suite_out(s)) for s in ("sparse", "ablation", "smooth", "targeted")}
    assert not singles & {Path(suite_out(s)).with_suffix(".json") for s in ("sparse", "ablation", "smooth")}
    results = tmp_path / "attack.csv"
    results.write_text("task,task_rows,image\n\"[\\\"sparse\\\",0]\",1,0\n")  # a suite's results
    before = results.read_bytes()
    tiny = ["--images", "1", "--steps", "1", "--samples", "2", "--structure", "smooth", "--no-progress"]
    start = time.perf_counter()
    assert cli_main(["attack", "--out", str(tmp_path / "attack")] + tiny) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "attack.csv exists; pass --force" in err and "Traceback" not in err
    assert results.read_bytes() == before and time.perf_counter() - start < 5  # refused before computing
    assert not (tmp_path / "attack.npz").exists()
    assert cli_main(["attack", "--out", str(tmp_path / "attack.json"), "--force"] + tiny) == 0
    assert results.read_bytes() != before and (tmp_path / "attack.npz").exists()
    assert not list(tmp_path.glob(".*tmp*")) and not list(tmp_path.glob(".*.lock"))


def test_exports_and_metadata_never_name_the_results_or_each_other(tmp_path, capsys):
    # Before: --tables t.jsonl replaced the results with the tables; --csv t.json replaced the metadata.
    from netmoments.experiments.__main__ import main as cli_main

    out, meta = tmp_path / "t.jsonl", tmp_path / "t.json"
    assert cli_main(["tightness", "--images", "1", "--sigma", "0.05", "--cov", "sparse", "--point", "input",
                     "--mc-samples", "100", "--out", str(out), "--no-progress"]) == 0
    files = {p: p.read_bytes() for p in (out, meta)}
    report = ["tightness", "--report", "--out", str(out)]
    md = tmp_path / "tables.md"
    for exports in (["--tables", str(out)], ["--csv", str(meta)], ["--tables", str(md), "--csv", str(md)],
                    ["--tables", str(md), "--csv", f"{md}.provenance.json"],
                    ["--csv", str(md), "--tables", str(tmp_path / "x.md"), "--metadata", f"{md}.provenance.json"],
                    ["--tables", str(tmp_path / "link.md")]):
        if "link.md" in exports[-1]:
            (tmp_path / "link.md").symlink_to(out)
        assert cli_main(report + exports) == 2, exports
        err = capsys.readouterr().err
        assert "would overwrite" in err and "Traceback" not in err, err
        assert {p: p.read_bytes() for p in files} == files and not md.exists()
    # a run whose --metadata is its own --out
    run = ["tightness", "--images", "1", "--out", str(tmp_path / "r.jsonl"), "--no-progress"]
    assert cli_main(run + ["--metadata", str(tmp_path / "r.jsonl")]) == 2
    assert "the output itself" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ damaged files


def _members(path: Path) -> list[tuple[int, int]]:
    """(start, end) of each gzip member of ``path``."""
    raw, spans, pos = path.read_bytes(), [], 0
    view = memoryview(raw)
    while pos < len(raw):
        _, end = runner_files._gzip_member(view, pos)
        spans.append((pos, end))
        pos = end
    return spans


def _interrupted_gz(tmp_path, n=6) -> Path:
    out = tmp_path / "rows.jsonl.gz"
    with pytest.raises(KeyboardInterrupt):
        run_tasks(TASKS, interrupted_after(n), out, progress=False)
    assert len(_members(out)) == n  # one member per task
    return out


def test_a_corrupt_gzip_member_hides_nothing_after_it_and_resume_keeps_the_file(tmp_path):
    # Before: reading stopped at the corrupt member (tasks 3-5 vanished without a word), and --resume rewrote the
    # file without them.
    out = _interrupted_gz(tmp_path)
    start, end = _members(out)[2]
    raw = bytearray(out.read_bytes())
    raw[(start + end) // 2] ^= 0xFF  # one flipped bit-pattern inside task 2's member
    out.write_bytes(bytes(raw))
    scan = scan_file(out)
    assert scan.broken_at == start and f"gzip member at byte {start} cannot be read" in scan.damage
    assert scan.tasks == [task_id(t) for t in TASKS[:2] + TASKS[3:6]]  # everything but the damaged task
    assert "3 complete task(s) follow it" in scan.damage
    with pytest.warns(RunnerWarning, match=f"damaged: the gzip member at byte {start}"):
        assert len(read_rows(out)) == 5 * 3
    for attempt in (lambda: run_tasks(TASKS, rows_of, out, resume=True, progress=False),
                    lambda: runner.drop_tasks(out, [task_id(TASKS[0])])):
        with pytest.raises(RunnerError, match=f"is damaged: the gzip member at byte {start}.*left as it is"):
            attempt()
        assert out.read_bytes() == bytes(raw)


def test_damage_in_a_text_file_is_told_from_a_torn_tail(tmp_path):
    plain = tmp_path / "rows.jsonl"
    run_tasks(TASKS[:4], rows_of, plain, progress=False)
    lines = plain.read_bytes().splitlines(keepends=True)
    cases = {
        "garbage line": lines[:3] + [b"{not json\n"] + lines[3:],  # before: a JSONDecodeError traceback
        "task cut short": lines[:2] + lines[3:],  # before: the task was dropped and resume rewrote the file
        "task twice": lines + lines[:3],  # before: both copies were dropped (twice the rows it announced)
    }
    for name, content in cases.items():
        plain.write_bytes(b"".join(content))
        scan = scan_file(plain)
        assert scan.damage and scan.broken_at is not None and scan.torn_tail is None, name
        assert set(scan.tasks) >= {task_id(t) for t in TASKS[1:4]}, name
        with pytest.raises(RunnerError, match="is damaged"):
            run_tasks(TASKS, rows_of, plain, resume=True, progress=False)
        assert plain.read_bytes() == b"".join(content), name
    # what a killed write leaves is a torn tail, not damage: resume drops it and goes on
    plain.write_bytes(b"".join(lines[:5]) + lines[5][:7])
    scan = scan_file(plain)
    assert scan.damage is None and "task" in scan.torn_tail and "torn last line" in scan.torn_tail
    assert run_tasks(TASKS, rows_of, plain, resume=True, progress=False).complete
    csv = tmp_path / "rows.csv"
    run_tasks(TASKS[:3], rows_of, csv, progress=False)
    lines = csv.read_bytes().splitlines(keepends=True)
    csv.write_bytes(b"".join(lines[:1] + lines[1:3] + lines[4:]))  # the first task cut short, mid-file
    assert "has 2 of the 3 rows" in scan_file(csv).damage


def test_zeros_after_a_crash_are_a_torn_tail(tmp_path):
    out = _interrupted_gz(tmp_path, 3)
    out.write_bytes(out.read_bytes() + b"\0" * 4096)  # a size that reached the disk before the data did
    scan = scan_file(out)
    assert scan.damage is None and "zero bytes" in scan.torn_tail and len(scan.tasks) == 3
    assert run_tasks(TASKS, rows_of, out, resume=True, progress=False).complete


def test_a_run_checks_that_every_task_is_in_the_file_before_calling_itself_complete(tmp_path):
    out = tmp_path / "rows.csv"

    def meddling(key):  # something else rewrites the file behind the run's back
        if key == TASKS[-1]:
            runner.atomic_write(out, out.read_bytes().splitlines(keepends=True)[0])
        return rows_of(key)

    with pytest.raises(RunnerError, match="should now hold all 8 tasks, but 7 are missing"):
        run_tasks(TASKS, meddling, out, progress=False)


def test_report_counts_tasks_in_the_rows_and_warns_about_an_incomplete_or_damaged_file(tmp_path, capsys):
    # Before: --report printed normal tables and "tasks done: 2 of 2" (from the metadata) for a file that had lost
    # a task, and a corrupt gzip member silently hid the task after it.
    from netmoments.experiments.__main__ import main as cli_main

    out = tmp_path / "t.jsonl.gz"
    argv = ["tightness", "--images", "2", "--sigma", "0.05", "--cov", "sparse", "--point", "input", "--mc-samples",
            "100", "--out", str(out), "--no-progress"]
    assert cli_main(argv) == 0
    lines = gzip.decompress(out.read_bytes()).splitlines(keepends=True)
    assert len(lines) == 2
    out.write_bytes(gzip.compress(lines[0], mtime=0) + b"not gzip at all" + gzip.compress(lines[1], mtime=0))
    capsys.readouterr()
    assert cli_main(["tightness", "--report", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "is damaged: the gzip member at byte" in captured.err and "1 complete task(s) follow it" in captured.err
    assert "tasks done: 2 of 2;" in captured.out and "| sparse | 0.05 | input | 2 |" in captured.out
    out.write_bytes(gzip.compress(lines[0], mtime=0))  # the second task lost
    assert cli_main(["tightness", "--report", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "tasks done: 1 of 2 (INCOMPLETE" in captured.out and "| sparse | 0.05 | input | 1 |" in captured.out
    assert "holds 1 of the 2 tasks of its run" in captured.err
    out.with_suffix("").with_suffix(".json").unlink()
    assert cli_main(["tightness", "--report", "--out", str(out)]) == 0
    assert "no metadata" in capsys.readouterr().err


def test_report_says_when_a_run_is_still_writing_the_file(tmp_path, holder, capsys):
    from netmoments.experiments.__main__ import main as cli_main

    out = tmp_path / "t.jsonl"
    assert cli_main(["tightness", "--images", "1", "--sigma", "0.05", "--cov", "sparse", "--point", "input",
                     "--mc-samples", "100", "--out", str(out), "--no-progress"]) == 0
    proc = holder(out)
    capsys.readouterr()
    assert cli_main(["tightness", "--report", "--out", str(out)]) == 0
    assert f"being written by a run in progress (pid {proc.pid})" in capsys.readouterr().err
    assert runner.output_in_use(out) == str(proc.pid)
    proc.kill()
    proc.wait(timeout=30)
    assert runner.output_in_use(out) is None  # the lock file stays behind a killed run, but names no live process


# ------------------------------------------------------------------------------------------------ arguments


def test_every_attack_argument_is_checked_by_the_parser():
    # Before: --images -1 attacked 999 digits (a slice [0:-1]) and was killed for memory at 20 GB; options of
    # another mode (--suite sparse --steps 5, a single attack with --workers or --resume) were silently ignored.
    from netmoments.experiments.__main__ import main as cli_main

    bad = [["--images", "-1"], ["--images", "0"], ["--steps", "0"], ["--samples", "-5"], ["--chunk", "0"],
           ["--target", "10"], ["--target", "x"], ["--l1-weight", "-1"], ["--l1-weight", "nan"], ["--seed", "-1"],
           ["--seed", str(2**32)], ["--device", "toaster"], ["--suite", "sparse", "--steps", "5"],
           ["--suite", "sparse", "--target", "3"], ["--workers", "2"], ["--resume"], ["--chunk", "4"],
           ["--suite", "sparse", "--tune", "t.json"], ["--book-data", "d", "--images", "3"],
           ["--tune", "t.json", "--device", "cpu"], ["--suite", "sparse", "--force"],
           ["--suite", "sparse", "--connect-timeout", "-1"], ["--suite", "sparse", "--connect-timeout", "nan"],
           ["--suite", "sparse", "--connect-timeout", "inf"], ["--suite", "sparse", "--scheduler", "http://h:80"],
           ["--suite", "sparse", "--scheduler", "tcp://h:99999"]]
    for argv in bad:
        with pytest.raises(SystemExit) as exit_info:  # the parser's error, before anything is loaded or written
            cli_main(["attack", *argv])
        assert exit_info.value.code == 2, argv
    args = build_parser().parse_args(["attack", "--suite", "sparse", "--split", "train", "--chunk", "4",
                                      "--workers", "1"])
    assert args.chunk == 4 and args.split == "train"


def test_attack_errors_are_one_line_not_tracebacks(tmp_path, capsys):
    from netmoments.experiments.__main__ import main as cli_main

    done = subprocess.run([sys.executable, "-m", "netmoments.experiments", "attack", "--images", "-1"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2 and "argument --images: must be >= 1" in done.stderr
    assert "Traceback" not in done.stderr
    blocker = tmp_path / "a-file"  # a file where a folder should be: no output can be written below it
    blocker.write_text("")
    for argv in (["--out", str(blocker / "x"), "--images", "1"], ["--tune", str(blocker / "t.json")],
                 ["--book-data", str(blocker)], ["--suite", "sparse", "--out", str(blocker / "s.csv")]):
        start = time.perf_counter()
        assert cli_main(["attack", *argv, "--no-progress"]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: cannot write") and err.count("\n") == 1, err
        assert time.perf_counter() - start < 5, argv  # found before any digit is loaded or attacked
    assert blocker.read_text() == ""


def test_workers_are_capped_by_the_machines_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(runner_dask, "_memory_bytes", lambda: 2 * 2**30)
    assert runner.max_workers() == 2
    parser = build_parser()
    assert parser.parse_args(["tightness", "--workers", "2"]).workers == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["tightness", "--workers", "3"])
    with pytest.raises(ValueError, match="3 workers need about 2.4 GiB"):
        run_tasks(TASKS, rows_of, tmp_path / "never.csv", workers=3, progress=False)
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------ schedulers


class _Listener:
    """A TCP listener on 127.0.0.1 (loopback only) that accepts connections and then does ``reply(conn)``."""

    def __init__(self, reply):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.address = f"tcp://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns, self.stop = [], threading.Event()
        self.reply = reply
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)
            self.reply(conn)

    def close(self):
        self.stop.set()
        self.thread.join(5)
        for conn in self.conns:
            conn.close()
        self.sock.close()


def _bounded(fn, seconds):
    """Run ``fn`` on a thread; fail the test (instead of hanging it) if it takes longer than ``seconds``."""
    box = {}

    def target():
        try:
            fn()
        except BaseException as err:  # handed to the test
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    start = time.perf_counter()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting after {seconds} s"
    return box.get("error"), time.perf_counter() - start


class _HTTPServer:
    """Python's own HTTP server on 127.0.0.1 (it answers 400 to whatever Dask sends it)."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
        self.server.daemon_threads = True
        self.address = f"tcp://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("kind", ["silent", "http", "banner"])
def test_a_scheduler_address_that_never_answers_fails_within_the_deadline(tmp_path, kind):
    # Before: a listener that accepts and never answers hung the run forever (despite --connect-timeout 5), and an
    # HTTP server there gave a MemoryError traceback (Dask read "HTTP/1.1" as a frame length: 3 EiB).
    pytest.importorskip("distributed")
    if kind == "http":
        listener = _HTTPServer()
    else:
        listener = _Listener({"silent": lambda conn: None,
                              "banner": lambda conn: conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")}[kind])
    try:
        err, seconds = _bounded(lambda: run_tasks(TASKS, rows_of, tmp_path / "rows.csv", scheduler=listener.address,
                                                  connect_timeout=1, progress=False), 30)
    finally:
        listener.close()
    assert isinstance(err, RunnerError), repr(err)
    expected = "is not a Dask scheduler" if kind == "banner" else "sent nothing within 1 s"
    assert expected in str(err) and listener.address in str(err)
    assert seconds < 10 and not (tmp_path / "rows.csv").exists()


def test_the_cli_refuses_a_silent_scheduler_and_bad_timeouts(tmp_path, capsys):
    pytest.importorskip("distributed")
    from netmoments.experiments.__main__ import main as cli_main

    parser = build_parser()
    for value in ("-1", "0", "nan", "inf", "1e300", "soon"):
        with pytest.raises(SystemExit):
            parser.parse_args(["tightness", "--connect-timeout", value])
    with pytest.raises(ValueError, match="connect_timeout"):
        run_tasks(TASKS, rows_of, tmp_path / "x.csv", scheduler="tcp://127.0.0.1:9", connect_timeout=float("nan"),
                  progress=False)
    listener = _Listener(lambda conn: None)
    codes = []
    try:
        for command in (["tightness", "--images", "1", "--out", str(tmp_path / "t.jsonl")],
                        ["attack", "--suite", "sparse", "--images", "1", "--out", str(tmp_path / "s.csv")]):
            err, seconds = _bounded(lambda: codes.append(cli_main(command + ["--scheduler", listener.address,
                                                                             "--connect-timeout", "1",
                                                                             "--no-progress"])), 60)
            assert err is None and seconds < 30
    finally:
        listener.close()
    captured = capsys.readouterr().err
    assert codes == [2, 2] and captured.count("sent nothing within 1 s") == 2 and "Traceback" not in captured


def test_a_real_scheduler_still_answers_the_probe(tmp_path):
    distributed = pytest.importorskip("distributed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                                           dashboard_address=None)
    try:
        assert cluster.scheduler_address.startswith("tcp://")
        summary = run_tasks(TASKS, rows_of, tmp_path / "rows.csv", scheduler=cluster.scheduler_address,
                            connect_timeout=10, progress=False)
    finally:
        cluster.close()
    assert summary.complete and len(read_rows(tmp_path / "rows.csv")) == 3 * len(TASKS)
