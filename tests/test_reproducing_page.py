"""The appendix page "Reproducing the experiments" states what the committed runs' metadata files record.

``book/A2_reproducing_the_experiments.md`` is plain text: it cannot compute anything when the book is built. So
that it cannot go stale silently, this test derives every table row and number the page states from
``book/data/*.json`` (and the widget file's embedded record) and fails when the page does not contain it, and it
parses every ``python -m netmoments.experiments`` command on the page with the package's own argument parser.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "book" / "A2_reproducing_the_experiments.md"
DATA = ROOT / "book" / "data"
SUITES = ("sparse", "smooth", "targeted", "ablation", "ablation-truth", "ablation-exact", "calibration",
          "sparse-search", "sparse-search-fmn")


def suite_file(suite: str) -> str:
    """The metadata name of ``--suite`` ``suite``'s committed run (``attack_<suite>`` with ``_`` for ``-``)."""
    return f"attack_{suite.replace('-', '_')}"
PREFIX = "python -m netmoments.experiments "


def page_text() -> str:
    # A command broken over lines with a trailing backslash is one command.
    return PAGE.read_text(encoding="utf8").replace("\\\n", " ")


def flat_text() -> str:
    """The page with every run of whitespace made one space: a claim may break across lines."""
    return re.sub(r"\s+", " ", page_text())


def meta(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text(encoding="utf8"))


def tightness_sitting_rows(m: dict) -> list[str]:
    """One markdown table row per sitting of the tightness run."""
    rows = []
    for i, s in enumerate(m["sittings"], 1):
        where = f"{s['workers']} workers" if s["workers"] else "in-process"
        load = f"{s['load_average_at_start'][0]:.1f} / {s['load_average_at_end'][0]:.1f}"
        rows.append(f"| {i} | {s['started'][:16]} | `{s['git_commit'][:12]}` | {where} | {s['n_run']} | "
                    f"{s['wall_s'] / 3600:.2f} | {load} |")
    return rows


def tightness_cost(m: dict) -> dict:
    """CPU cost per task and covariance family: the sittings that record kernel time (memory reuse) and the
    earlier ones, with the projections the page states."""
    def summed(sittings):
        cost = {}
        for sitting in sittings:
            for cov, c in sitting.get("cost_by_cov", {}).items():
                total = cost.setdefault(cov, {"n": 0, "cpu_s": 0.0, "kernel_s": 0.0, "wall_s": 0.0})
                for key in total:
                    total[key] += c.get(key, 0.0)
        return cost

    recent = [s for s in m["sittings"]
              if s.get("cost_by_cov") and all("kernel_s" in c for c in s["cost_by_cov"].values())]
    earlier = [s for s in m["sittings"] if s not in recent]
    late, early = summed(recent), summed(earlier)
    cpu = {cov: c["cpu_s"] / c["n"] for cov, c in late.items()}
    n_sigma = len(m["settings"]["sigmas"])
    digit_cpu = n_sigma * sum(cpu.values())
    wall_per_cpu = sum(c["wall_s"] for c in late.values()) / sum(c["cpu_s"] for c in late.values())
    kernel = sum(c["kernel_s"] for c in late.values()) / sum(c["cpu_s"] for c in late.values())
    return {"recent": recent, "earlier": earlier, "late": late, "early": early, "digit_cpu": digit_cpu,
            "full_cpu_h": m["settings"]["n_images"] * digit_cpu / 3600, "wall_per_cpu": wall_per_cpu,
            "kernel": kernel, "nm20_cpu_h": 10_000 * n_sigma * cpu["dense"] / 3600}


def cost_rows(m: dict) -> list[str]:
    c = tightness_cost(m)
    rows = []
    for label, group, n in (("earlier", c["early"], len(c["earlier"])), ("memory reuse", c["late"],
                                                                         len(c["recent"]))):
        for cov, g in sorted(group.items()):
            kernel = f"{100 * g['kernel_s'] / g['cpu_s']:.1f} %" if g.get("kernel_s") else "not recorded"
            rows.append(f"| {label} ({n}) | {cov} | {g['n']} | {g['cpu_s'] / g['n']:.1f} | "
                        f"{g['wall_s'] / g['n']:.1f} | {kernel} |")
    return rows


def suite_rows() -> list[str]:
    rows = []
    for suite in SUITES:
        m = meta(suite_file(suite))
        last = m["sittings"][-1]
        cpu = sum(s["task_cpu_seconds_total"] for s in m["sittings"]) / sum(s["n_run"] for s in m["sittings"])
        loads = " ; ".join(f"{s['load_average_at_start'][0]:.1f} / {s['load_average_at_end'][0]:.1f}"
                           for s in m["sittings"])
        rows.append(f"| {suite} | {last['finished'][:16]} | `{last['git_commit'][:12]}` | {len(m['sittings'])} | "
                    f"{m['tasks_done']} | "
                    f"{m['images_done']} | {m['wall_s_total'] / 3600:.2f} | {cpu:.1f} | {loads} |")
    return rows


def page_commands(text: str) -> list[str]:
    found = re.findall(r"python -m netmoments\.experiments [^\n`]*", text)
    return [" ".join(line.split("  #")[0].strip("` ").split()) for line in found]


def test_the_page_is_in_the_table_of_contents():
    toc = (ROOT / "_toc.yml").read_text(encoding="utf8")
    assert "book/A2_reproducing_the_experiments" in toc


def test_every_command_on_the_page_is_valid():
    from netmoments.experiments import build_parser

    text = page_text()
    # chapter 8's section abbreviates its commands with shell variables: tests/test_reproducing_ch8.py expands them
    text = text[:text.index("(reproduce-ch8)=")] + text[text.index("(reproduce-ch9)="):]
    commands = page_commands(text)
    assert len(commands) >= 8, "the page should show the run commands of chapters 7 and 9"
    parser = build_parser()
    for command in commands:
        argv = shlex.split(command[len(PREFIX):])
        try:
            parser.parse_args(argv)
        except SystemExit as err:  # argparse exits on a bad argument
            pytest.fail(f"the page shows a command the CLI rejects ({err}): {command}")


def test_the_recorded_commands_are_on_the_page():
    text = page_text()
    recorded = [meta("tightness_scale")["sittings"][-1]["command"], meta("attack_tuning")["command"]]
    recorded += [meta(suite_file(s))["sittings"][-1]["command"] for s in SUITES]
    recorded.append(json.loads(str(np.load(DATA / "attacks_widget.npz")["provenance"]))["command"])
    for name in ("tightness_scale_tables.md", "tightness_scale_per_digit.csv"):
        recorded.append(json.loads((DATA / f"{name}.provenance.json").read_text(encoding="utf8"))["command"])
    commands = page_commands(text)
    for command in recorded:
        assert command in commands, f"the recorded command is not on the page: {command}"


def test_the_tightness_sittings_and_costs_match_the_metadata():
    text = flat_text()
    m = meta("tightness_scale")
    for row in tightness_sitting_rows(m) + cost_rows(m):
        assert row in text, f"row missing or stale on the page:\n{row}"
    c = tightness_cost(m)
    loads = [s[k][0] for s in m["sittings"] for k in ("load_average_at_start", "load_average_at_end")]
    config = m["settings"]["config"]
    for claim in (f"{len(m['sittings'])} sittings", f"{m['wall_s_total'] / 3600:.1f} h of wall time",
                  f"{c['digit_cpu']:.0f} CPU seconds per digit", f"{c['full_cpu_h']:.1f} CPU hours",
                  f"{c['wall_per_cpu']:.2f} times", f"{100 * c['kernel']:.1f} %", f"{c['nm20_cpu_h']:.0f} CPU hours",
                  f"between {min(loads):.1f} and {max(loads):.1f}", f"{m['tasks_done']:,} tasks",
                  f"{config['mc_samples']:,} draws", f"`{m['settings']['fingerprint']}`"):
        assert claim in text, f"the page does not say {claim!r}"
    versions = m["sittings"][-1]["versions"]
    for name in ("torch", "numpy", "scipy", "dask", "scikit-learn", "python"):
        assert f"{name} {versions[name]}" in text.lower(), f"{name}'s version on the page is not {versions[name]}"


def test_the_malloc_settings_are_the_runners():
    from netmoments.experiments.runner import MALLOC_ENVIRON

    text = flat_text()
    for key, value in MALLOC_ENVIRON.items():
        assert f"{key}={value}" in text, f"the page does not give {key}={value}"


def test_the_attack_suites_match_the_metadata():
    text = flat_text()
    for row in suite_rows():
        assert row in text, f"row missing or stale on the page:\n{row}"
    tuning = meta("attack_tuning")
    for claim in (f"`{tuning['git_commit'][:12]}`", f"{tuning['images']} training digits", tuning["date"],
                  f"{tuning['wall_s']:.0f} s"):
        assert claim in text, f"the page does not say {claim!r} about the tuning run"
    fair = meta("attack_tuning_fair")
    for claim in (f"`{fair['git_commit'][:12]}`", fair["date"], f"{fair['wall_s']:.0f} s", fair["command"]):
        assert claim in text, f"the page does not say {claim!r} about the ablation's tuning run"
    search = meta("attack_tuning_search")
    for claim in (f"`{search['git_commit'][:12]}`", search["date"], f"{search['wall_s']:.0f} s", search["command"],
                  f"first {search['images']} training digits"):
        assert claim in text, f"the page does not say {claim!r} about the support searches' tuning run"
    smooth = meta("attack_tuning_smooth")
    for claim in (f"`{smooth['git_commit'][:12]}`", smooth["date"], f"{smooth['wall_s']:.0f} s", smooth["command"],
                  f"first {smooth['images']} training digits"):
        assert claim in text, f"the page does not say {claim!r} about blurred PGD's tuning run"
    widget = json.loads(str(np.load(DATA / "attacks_widget.npz")["provenance"]))
    assert f"`{widget['git_commit'][:12]}`" in text
    assert f"{widget['date'][:16].replace('T', ' ')} UTC" in text, "the widget's date on the page is stale"
    versions = meta("attack_sparse")["sittings"][-1]["versions"]
    for name in ("foolbox", "scikit-image", "torch"):
        assert f"{name} {versions[name]}" in text, f"{name}'s version on the page is not {versions[name]}"


def test_the_chapters_link_to_their_sections():
    text = PAGE.read_text(encoding="utf8")
    for label in ("reproduce-ch7", "reproduce-ch8", "reproduce-ch9"):
        assert f"({label})=" in text, f"the page lacks the target {label}"
    for chapter, label in (("07_how_tight_is_it", "reproduce-ch7"), ("09_gaussian_attacks", "reproduce-ch9")):
        notebook = json.loads((ROOT / "book" / f"{chapter}.ipynb").read_text(encoding="utf8"))
        markdown = "".join("".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "markdown")
        assert f"{{ref}}`" in markdown and label in markdown, f"{chapter} does not link to {label}"
