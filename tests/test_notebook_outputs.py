"""No committed notebook output that nbval compares may hold digits at rounding level.

nbval reruns every notebook and compares its printed text character by character with the committed output. A
number such as ``max error 3.6e-15`` or ``gap < 1e-16`` is rounding noise: another CPU, or another kernel path of
torch or MKL on the same CPU, prints ``7.1e-15`` or ``< 1e-17`` and the test fails for no reason. A notebook that
checks agreement to round-off must instead assert a fixed bound well above rounding level and print that bound
(``assert err < 1e-12`` then ``print("agrees to below 1e-12")``).

This test executes nothing: it reads the stored outputs of every notebook under ``book/`` and
``netmoments/course/source/`` as nbval would compare them (the same sanitizer, the same skipped cells and MIME
types) and fails on

- a number below 1e-10 in magnitude, or zero, written in scientific notation (``3.6e-15``, ``< 1e-17``,
  ``0.0e+00``), unless the same text is a literal in the cell's own source, i.e. a fixed bound such as the
  ``1e-12`` of ``assert err < 1e-12``;
- any other number below 1e-10 in magnitude (``0.0000000000036``);
- a non-integer printed with 14 or more significant digits (``0.304498890522115``): its last digits are round-off;
- a negative zero as torch and NumPy print it (``-0.``), whose sign is round-off.

The rules are deliberately blunt: a genuinely tiny value (a far-tail probability such as ``1.5e-201``) is flagged
too. Print it relative to its scale, or, if its digits are the point of a table of round-off errors, tag the cell
``nbval-ignore-output`` and assert what the text draws from it.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SANITIZE_CFG = ROOT / ".nbval_sanitize.cfg"
NOTEBOOK_DIRS = (ROOT / "book", ROOT / "netmoments" / "course" / "source")

# What nbval 0.11 leaves out of a comparison (without nbdime): these keys of an output and of its data.
NOT_COMPARED = {"metadata", "traceback", "prompt_number", "output_type", "name", "execution_count",
                "application/vnd.jupyter.widget-view+json", "image/png", "image/jpeg"}
# Cells whose output nbval does not compare: by tag, or by a comment marker in the source.
IGNORE_TAGS = {"nbval-ignore-output", "nbval-skip", "pytest-validate-ignore-output"}
IGNORE_COMMENTS = {"NBVAL_IGNORE_OUTPUT", "NBVAL_SKIP", "PYTEST_VALIDATE_IGNORE_OUTPUT"}

SMALLEST = 1e-10  # smaller than a million ulps of a value of order 1
MAX_DIGITS = 13  # significant digits; float64 carries about 16, and a computed value's last two or three are noise

NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.])")
# A negative zero as torch and NumPy print one ("-0." in "tensor([-0., 1.])"): the sign of an exact 0 is round-off.
# ("-0.00" is left alone: it is usually a small negative number rounded for display, such as -0.003.)
NEGATIVE_ZERO = re.compile(r"(?<![\w.])-0\.?(?![\w.]|\d)")


def notebooks() -> list[Path]:
    found = []
    for folder in NOTEBOOK_DIRS:
        found += [p for p in folder.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts and "_build" not in p.parts]
    return sorted(found)


def sanitize_patterns(text: str) -> list[tuple[str, str]]:
    """(regex, replacement) pairs, read exactly as nbval reads its ``--nbval-sanitize-with`` file."""
    return re.findall(r"^regex: (.*)$\n^replace: (.*)$", text, flags=re.MULTILINE)


def sanitize(text: str, patterns: list[tuple[str, str]]) -> str:
    for regex, replace in patterns:
        text = re.sub(regex, replace, text)
    return text


def is_compared(cell: dict) -> bool:
    tags = set(cell.get("metadata", {}).get("tags", []))
    if tags & IGNORE_TAGS:
        return False
    source = "".join(cell.get("source", ""))
    return not any(line.strip().lstrip("#").strip() in IGNORE_COMMENTS
                   for line in source.splitlines() if line.strip().startswith("#"))


def compared_texts(cell: dict) -> list[str]:
    """The text of every output nbval compares (streams, and every compared MIME type of rich outputs)."""
    texts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            texts.append(_text(output.get("text", "")))
        for key, value in output.get("data", {}).items():
            if key not in NOT_COMPARED:
                texts.append(_text(value))
    return texts


def _text(value) -> str:
    if isinstance(value, list):
        return "".join(value)
    return value if isinstance(value, str) else json.dumps(value)


def _significant_digits(token: str) -> int:
    mantissa = re.split(r"[eE]", token.lstrip("+-"))[0].replace(".", "").lstrip("0")
    return len(mantissa)


def _is_literal(token: str, source: str) -> bool:
    return re.search(r"(?<![\w.])" + re.escape(token) + r"(?![\w.])", source) is not None


def rounding_level_numbers(text: str, source: str) -> list[str]:
    """The numbers in ``text`` (an output of a cell whose code is ``source``) that show rounding-level digits."""
    found = []
    for match in NUMBER.finditer(text):
        token = match.group()
        value = abs(float(token))
        scientific = "e" in token.lower()
        if ("." in token or scientific) and _significant_digits(token) > MAX_DIGITS:
            found.append(token)
        elif value < SMALLEST and (scientific or value != 0) and not (scientific and _is_literal(token, source)):
            found.append(token)
    found += [m.group() for m in NEGATIVE_ZERO.finditer(text)]
    return found


def offending_outputs(path: Path, patterns: list[tuple[str, str]]) -> list[str]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    problems, code_index = [], -1
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        code_index += 1
        if not is_compared(cell):
            continue
        source = "".join(cell.get("source", ""))
        for text in compared_texts(cell):
            for line in sanitize(text, patterns).splitlines():
                bad = rounding_level_numbers(line, source)
                if bad:
                    problems.append(f"{path.relative_to(ROOT)}: cell {index} (nbval's Cell {code_index}) prints "
                                    f"{', '.join(bad)} in: {line.strip()[:160]}")
    return problems


PATTERNS = sanitize_patterns(SANITIZE_CFG.read_text(encoding="utf-8"))
NOTEBOOKS = notebooks()


def test_the_notebooks_are_found():
    names = {p.name for p in NOTEBOOKS}
    assert {"05_computing_phi2.ipynb", "06_linearizing_deep_networks.ipynb"} <= names
    assert any("netmoments/course/source" in p.as_posix() for p in NOTEBOOKS)
    assert PATTERNS, ".nbval_sanitize.cfg holds no regex/replace pairs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_rounding_level_digits_in_compared_outputs(path):
    problems = offending_outputs(path, PATTERNS)
    assert not problems, (
        "outputs that nbval compares print rounding-level digits, which differ between CPUs and kernel paths; "
        "assert a fixed bound and print it instead (`assert err < 1e-12`, then print 'below 1e-12'), or round "
        "to fewer digits:\n" + "\n".join(problems))


# The detector itself: what it must catch and what it must let through.
@pytest.mark.parametrize("text", [
    "identity gap < 1e-17;  5 terms: raw 1.6e+00",  # a computed order of magnitude
    "max |g(x) - LeNet(x)| = 7.1e-15",
    "pruning changes the exact variance by at most 1.9e-16 (relative)",
    "max |c2 - fc2.bias| = 0.0e+00",
    "  0e+00  4.666e-02   0e+00",
    "c( 0.5) = 0.304498890522115",
    "gap 0.0000000000036",
    "tensor([-0.,  0.5000])",
    "[-0.  1.]",
])
def test_the_detector_catches(text):
    assert rounding_level_numbers(text, source="print(x)")


@pytest.mark.parametrize("text, source", [
    ("agrees to below 1e-12", "assert err < 1e-12\nprint('agrees to below 1e-12')"),
    ("exact (error < 1e-10) up to t = 1e-04", "steps[err < 1e-10]"),
    ("a = 0.5: |I_N - I| at N = 5, 10: 4.7e-06, 7.7e-09", ""),
    ("Var = 5.8260e-01; 1.451e+09 multiplications", ""),
    ("exact 3.276593518299 (reference 3.276593518299)", ""),
    ("tensor([0.0000, 0.0048, -0.5000]) 0 -0.5 -0.0001 -0.00 [-0.01, 0.01] x-0", ""),
    ("one digit: TIME; batch of 8: TIME per digit", ""),
    ("seed 12345678901234567, version 2.13.0, 9,000 tasks, 2026-11-29", ""),
])
def test_the_detector_lets_through(text, source):
    assert rounding_level_numbers(text, source) == []


def test_the_sanitizer_is_applied():
    # nbval compares sanitized text: a timing such as "3e-12 s" would be replaced before the comparison.
    assert rounding_level_numbers(sanitize("took 3e-12 s", [(r"\d+(\.\d+)?(e-\d+)?\s?s\b", "TIME")]), "") == []
    assert rounding_level_numbers("took 3e-12 s", "") == ["3e-12"]
