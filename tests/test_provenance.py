"""Provenance records (:mod:`netmoments.provenance`) and the rule that every committed result file of the book has
one: the command, the git commit, the package versions, the machine and the date."""
from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from netmoments import provenance

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "book" / "data"

# Data files committed before run_metadata existed, with why (strict: a file that gains a record must leave it).
LEGACY: dict[str, str] = {}


def _head_from_git_files(repo: Path) -> str:
    """HEAD's commit read from .git itself (not through `git`), to check git_state independently."""
    git = repo / ".git"
    if git.is_file():  # a worktree: ".git" names the real git dir
        git = Path(git.read_text().split(":", 1)[1].strip())
    head = (git / "HEAD").read_text().strip()
    if not head.startswith("ref: "):
        return head
    ref = head[5:]
    common = Path((git / "commondir").read_text().strip()) if (git / "commondir").is_file() else None
    for base in filter(None, (git, (git / common) if common else None)):
        if (base / ref).is_file():
            return (base / ref).read_text().strip()
        packed = base / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0]
    raise AssertionError(f"cannot resolve {ref}")


def test_run_metadata_records_command_code_packages_machine_and_date():
    before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    meta = provenance.run_metadata(["python", "-m", "netmoments.experiments", "tightness", "--out", "a b.csv"],
                                   wall_s=1.5, seed=0)
    after = dt.datetime.now(dt.timezone.utc)
    assert set(provenance.REQUIRED_KEYS) <= set(meta)
    assert meta["command"] == "python -m netmoments.experiments tightness --out 'a b.csv'"
    assert meta["wall_s"] == 1.5 and meta["seed"] == 0
    if (ROOT / ".git").exists():  # a clean clone; an exported tree has no commit to record
        assert meta["git_commit"] == _head_from_git_files(ROOT)
    assert isinstance(meta["git_dirty"], bool)
    assert meta["packages"]["torch"] == torch.__version__
    assert meta["packages"]["numpy"] == np.__version__
    assert meta["packages"]["netmoments"]
    assert meta["machine"]["logical_cpus"] >= 1 and meta["machine"]["cpu"]
    assert meta["machine"]["torch_threads"] == torch.get_num_threads()
    assert before <= dt.datetime.fromisoformat(meta["date"]) <= after
    assert json.loads(json.dumps(meta)) == meta
    assert provenance.run_metadata("make bench")["command"] == "make bench"


def test_run_metadata_rejects_bad_input():
    with pytest.raises(TypeError, match="command"):
        provenance.run_metadata(42)
    with pytest.raises(ValueError, match="clash"):
        provenance.run_metadata("x", date="yesterday")
    with pytest.raises(TypeError):
        provenance.run_metadata("x", model=object())  # not JSON-serialisable


def test_git_state_outside_a_checkout(tmp_path):
    assert provenance.git_state(tmp_path) == (None, None)


def test_git_state_sees_uncommitted_changes(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "f.txt").write_text("one")
    git("add", "f.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    commit, dirty = provenance.git_state(tmp_path)
    assert commit == _head_from_git_files(tmp_path) and dirty is False
    (tmp_path / "f.txt").write_text("two")
    assert provenance.git_state(tmp_path) == (commit, True)


def test_git_state_ignores_results_appended_under_book_data(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "book" / "data").mkdir(parents=True)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "book" / "data" / "rows.csv").write_text("a\n")
    (tmp_path / "pkg" / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    (tmp_path / "book" / "data" / "rows.csv").write_text("a\n1\n")  # a run appending its rows
    commit, dirty = provenance.git_state(tmp_path / "pkg")
    assert dirty is False and commit == _head_from_git_files(tmp_path)
    (tmp_path / "pkg" / "code.py").write_text("x = 2\n")
    assert provenance.git_state(tmp_path / "book") == (commit, True)
    assert provenance.git_state(tmp_path, paths=("book",)) == (commit, True)
    assert provenance.git_state(tmp_path, paths=("pkg",)) == (commit, True)


def test_records_are_found_in_sidecars_json_and_npz(tmp_path):
    meta = provenance.run_metadata("produce")
    csv = tmp_path / "table.csv"
    csv.write_text("a,b\n1,2\n")
    assert provenance.read_provenance(csv) is None
    side = provenance.write_sidecar(csv, meta)
    assert side.name == "table.csv.provenance.json"
    assert provenance.read_provenance(csv) == meta

    inline = tmp_path / "curves.json"
    inline.write_text(json.dumps({"curves": [1, 2], "provenance": meta}))
    assert provenance.read_provenance(inline) == meta

    md = tmp_path / "run.md"
    md.write_text("| table |")
    (tmp_path / "run.json").write_text(json.dumps(meta | {"timings": {}}))  # same-stem metadata file
    assert provenance.read_provenance(md)["command"] == "produce"

    arrays = tmp_path / "frames.npz"
    np.savez(arrays, x=np.zeros(3), provenance=np.array(json.dumps(meta)))
    assert provenance.read_provenance(arrays) == meta
    np.savez(arrays, x=np.zeros(3))
    assert provenance.read_provenance(arrays) is None


def test_runner_records_with_sittings_and_aliases_count(tmp_path):
    """The experiment runner's format: ``versions`` for ``packages``, ``finished`` for ``date``, one record per
    sitting of a resumable run; every sitting must be complete."""
    meta = provenance.run_metadata("run --resume")
    runner = {k: v for k, v in meta.items() if k not in ("packages", "date")}
    runner |= {"versions": meta["packages"], "finished": "2026-11-29 18:47:16 UTC"}
    path = tmp_path / "suite.json"
    path.write_text(json.dumps({"settings": {}, "sittings": [runner, runner | {"command": "run --resume 2"}]}))
    record = provenance.read_provenance(path)
    assert record["command"] == "run --resume 2" and record["packages"] == meta["packages"]
    assert record["date"] == "2026-11-29 18:47:16 UTC"
    broken = runner | {"command": ""}
    path.write_text(json.dumps({"sittings": [broken, runner]}))
    assert provenance.read_provenance(path) is None


@pytest.mark.parametrize("missing", provenance.REQUIRED_KEYS)
def test_incomplete_records_do_not_count(tmp_path, missing):
    meta = provenance.run_metadata("produce")
    del meta[missing]
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"provenance": meta}))
    assert provenance.read_provenance(path) is None


def _committed_data_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "book/data"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return sorted(p.relative_to(ROOT).as_posix() for p in DATA.glob("*") if p.is_file())
    return sorted(line for line in out.splitlines() if line)


DATA_FILES = [f for f in _committed_data_files() if not f.endswith(".provenance.json")]


def test_there_is_committed_data():
    assert DATA_FILES


@pytest.mark.parametrize("name", [
    pytest.param(f, marks=pytest.mark.xfail(strict=True, reason=f"no provenance yet: {LEGACY[f]}"))
    if f in LEGACY else f
    for f in DATA_FILES
])
def test_every_committed_data_file_records_its_provenance(name):
    record = provenance.read_provenance(ROOT / name)
    assert record is not None, (
        f"{name} has no provenance record (command, git commit, package versions, machine, date): write one "
        "with netmoments.provenance.run_metadata, in the file or in a sidecar (provenance.write_sidecar)")


def test_the_description_names_command_commit_machine_date_and_versions(tmp_path):
    meta = provenance.run_metadata("python -m produce --all")
    meta |= {"git_commit": "0123456789abcdef" * 2 + "01234567", "git_dirty": False,
             "packages": {"python": "3.11", "torch": "9.9", "numpy": "8.8"},
             "machine": {"system": "Linux", "cpu": "Some CPU", "logical_cpus": 3}, "date": "2030-01-02"}
    csv = tmp_path / "t.csv"
    csv.write_text("a\n1\n")
    provenance.write_sidecar(csv, meta)
    text = provenance.describe_provenance(csv)
    assert text == ("Produced by `python -m produce --all` at commit 0123456789ab on Linux, Some CPU, 3 logical CPUs, "
                    "2030-01-02; torch 9.9, numpy 8.8.")
    provenance.write_sidecar(csv, meta | {"git_dirty": True})
    assert "at commit 0123456789ab (+ uncommitted changes)" in provenance.describe_provenance(csv)
    provenance.write_sidecar(csv, meta | {"git_commit": None})
    assert "outside a git checkout" in provenance.describe_provenance(csv)


def test_the_description_of_a_run_in_sittings_counts_them_and_sums_their_wall_time(tmp_path):
    meta = provenance.run_metadata("run")
    runner = {k: v for k, v in meta.items() if k not in ("packages", "date")}
    runner |= {"versions": meta["packages"], "finished": "2026-11-29 18:47:16 UTC",
               "git_commit": "abcdef0123456789+dirty", "machine": "a 2-core box"}
    path = tmp_path / "rows.json"
    sittings = [runner | {"wall_s": 1800.0}, runner | {"wall_s": 5400.0, "command": "run --resume"}]
    path.write_text(json.dumps({"sittings": sittings}))
    rows = tmp_path / "rows.jsonl.gz"  # described by rows.json
    text = provenance.describe_provenance(rows)
    assert text.startswith("Produced by `run --resume` at commit abcdef012345 (+ uncommitted changes) on a 2-core box")
    assert text.endswith("; the last of 2 sittings, 2.0 h of wall time in all.")


def test_a_file_without_a_record_cannot_be_described(tmp_path):
    csv = tmp_path / "bare.csv"
    csv.write_text("a\n")
    with pytest.raises(ValueError, match="bare.csv.*no complete provenance record"):
        provenance.describe_provenance(csv)


@pytest.mark.parametrize("name", [f for f in DATA_FILES if f not in LEGACY])
def test_every_committed_data_file_can_be_described(name):
    text = provenance.describe_provenance(ROOT / name)
    assert text.startswith("Produced by `python -m netmoments.")
