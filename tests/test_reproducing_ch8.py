"""Appendix A2's section on chapter 8 states what the layer-wise runs' metadata record.

The page is plain text, so this test derives each run's table row from ``book/data/<run>.json`` and the rows
file, and checks that every command of the section, expanded, parses with the CLI and asks for exactly the
settings the run was written with (so a reader who copies it reproduces that run, or resumes it).
"""
from __future__ import annotations

import gzip
import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "book" / "A2_reproducing_the_experiments.md"
DATA = ROOT / "book" / "data"
RUNS = ["layerwise_dense", "layerwise_dense_tsl", "layerwise_dense_mc", "layerwise_dense_mc300",
        "layerwise_dense_mc3000", "layerwise_dense_ref", "layerwise_dense_full", "layerwise_dense_unscented",
        "layerwise_dense_truth1e5", "layerwise_sparse_blur", "layerwise_mlp_truth", "layerwise_mlp",
        "layerwise_deep_cnn_truth", "layerwise_deep_cnn"]


def section() -> str:
    text = PAGE.read_text(encoding="utf8")
    return text[text.index("(reproduce-ch8)="):text.index("(reproduce-ch9)=")]


def run_row(run: str) -> str:
    """The page's table row of ``run``, from its metadata and its rows."""
    meta = json.loads((DATA / f"{run}.json").read_text(encoding="utf8"))
    settings, sittings = meta["settings"], meta["sittings"]
    with gzip.open(DATA / f"{run}.jsonl.gz", "rt") as f:
        n_rows = sum(1 for _ in f)
    images = settings["images"]
    contiguous = images == list(range(min(images), max(images) + 1))
    digits = f"{min(images)}–{max(images)}" if contiguous else str(len(images))
    cpu = sum(s.get("task_cpu_seconds_total") or 0 for s in sittings)
    ran = sum(s.get("n_run") or 0 for s in sittings)
    return (f"| `{run}` | {settings.get('model', 'lenet')} | {digits} | "
            f"{', '.join(f'{s:g}' for s in settings['sigmas'])} | {', '.join(settings['covs'])} | "
            f"{', '.join(settings['methods'])} | {n_rows:,} | {len(sittings)} | {cpu / max(ran, 1):.1f} | "
            f"`{sittings[-1]['git_commit'][:12]}` |")


def section_commands() -> list[list[str]]:
    """The section's layerwise commands as argument lists, with its shell variables and loop expanded."""
    text = section().replace("\\\n", " ")
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    variables = dict(re.findall(r'^(\w+)="?([^"\n]*)"?$', block, re.M))
    commands, loop = [], None
    for line in block.splitlines():
        line = line.split("#")[0].strip()
        header = re.match(r"for (\w+) in ([\w ]+); do$", line)
        if header:
            loop = (header.group(1), header.group(2).split())
            continue
        if line == "done":
            loop = None
        if not line.startswith(("$L", "python -m")):
            continue
        expansions = [line]
        if loop is not None:
            name, values = loop
            expansions = [line.replace("${" + name + "}", v).replace("$" + name, v) for v in values]
        for command in expansions:
            for name, value in variables.items():
                command = command.replace(f"${name}", value)
            commands.append(shlex.split(command))
    return commands


def test_every_run_has_its_row():
    text = section()
    for run in RUNS:
        assert run_row(run) in text, f"row missing or stale on the page:\n{run_row(run)}"


def test_each_command_asks_for_its_runs_settings():
    from netmoments.experiments import build_parser
    from netmoments.experiments.layerwise import LayerwiseConfig

    parser = build_parser()
    by_out = {}
    for argv in section_commands():
        assert argv[:3] == ["python", "-m", "netmoments.experiments"], argv
        try:
            args = parser.parse_args(argv[3:])
        except SystemExit as err:  # argparse exits on a bad argument
            pytest.fail(f"the page shows a command the CLI rejects ({err}): {shlex.join(argv)}")
        if not args.report:
            by_out[Path(args.out).name.removesuffix(".jsonl.gz")] = args
    assert sorted(by_out) == sorted(RUNS), "one command per run"
    for run, args in by_out.items():
        settings = json.loads((DATA / f"{run}.json").read_text(encoding="utf8"))["settings"]
        asked = {"images": args.images, "sigmas": args.sigmas, "covs": args.covs, "methods": args.methods,
                 "model": args.model, "truth_draws": args.truth_draws}
        for key, value in asked.items():
            recorded = settings.get(key, {"model": "lenet", "truth_draws": 10_000}.get(key))
            assert recorded == value, f"{run}: the page's command asks for {key}={value}, the run has {recorded}"
        # the earliest runs' configurations predate the draw options and used their defaults
        config = {"mc_draws": LayerwiseConfig.mc_draws, "cv_draws": LayerwiseConfig.cv_draws, **settings["config"]}
        assert (args.mc_draws, args.cv_draws) == (config["mc_draws"], config["cv_draws"]), run


def test_the_section_detects_a_stale_row():
    """The row check can fail: a row built from other metadata is not on the page."""
    real = run_row("layerwise_dense_full")
    assert real in section()
    assert real.replace("| 90 |", "| 91 |") not in section()
