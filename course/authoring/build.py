"""Write nbgrader source notebooks from the percent-format scripts next to this file.

    .venv/bin/python course/authoring/build.py [a1 ...]     # then execute the notebooks (see the Makefile)

Cell headers (one per cell):
    # %% [markdown]                       markdown
    # %% [code] tags=a,b                  ordinary code
    # %% [solution] id=NAME               student's blank: the part between ### BEGIN/END SOLUTION is removed
    # %% [tests] id=NAME points=P         graded test cell (visible tests; ### BEGIN/END HIDDEN TESTS removed)
Every cell that can raise in the student version (tests, and code that calls a blank) gets the
``raises-exception`` tag so the book's strict build and nbval accept the NotImplementedError.
The notebooks under netmoments/course/source/ are the canonical sources; these scripts are only a
convenient way to write them.
"""
import re
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
DEST = HERE.parents[1] / "netmoments" / "course" / "source"
HEADER = re.compile(r"^# %% \[(markdown|code|solution|tests)\](.*)$")


def parse(text: str):
    cells, kind, opts, lines = [], None, {}, []

    def flush():
        if kind is not None:
            body = "\n".join(lines).strip("\n")
            cells.append((kind, opts, body))

    for line in text.splitlines():
        m = HEADER.match(line)
        if m:
            flush()
            kind, lines = m.group(1), []
            opts = dict(kv.split("=", 1) for kv in m.group(2).split())
        else:
            lines.append(line)
    flush()
    return cells


def build(script: Path) -> Path:
    name = script.stem
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3 (netmoments)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "netmoments": {"assignment": name},
    }
    for i, (kind, opts, body) in enumerate(parse(script.read_text())):
        if kind == "markdown":
            md = "\n".join(l[2:] if l.startswith("# ") else l[1:] if l.startswith("#") else l
                           for l in body.splitlines())
            cell = nbformat.v4.new_markdown_cell(md)
        else:
            cell = nbformat.v4.new_code_cell(body)
        tags = [t for t in opts.get("tags", "").split(",") if t]
        if kind == "tests":
            tags.append("raises-exception")
            cell.metadata["nbgrader"] = {"grade": True, "solution": False, "locked": True, "task": False,
                                         "grade_id": opts["id"], "points": float(opts["points"]),
                                         "schema_version": 3}
        elif kind == "solution":
            cell.metadata["nbgrader"] = {"grade": False, "solution": True, "locked": False, "task": False,
                                         "grade_id": opts["id"], "schema_version": 3}
        # Other cells carry no nbgrader metadata: students may edit or delete them (grading only needs the
        # solution cells and the graded test cells, which nbgrader restores from its database).
        if tags:
            cell.metadata["tags"] = sorted(set(tags))
        nb.cells.append(cell)
    out = DEST / name / f"{name}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out)
    return out


if __name__ == "__main__":
    wanted = sys.argv[1:]
    for script in sorted(HERE.glob("a*_*.py")):
        if not wanted or any(script.stem.startswith(w) for w in wanted):
            print(build(script))
