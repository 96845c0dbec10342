"""One meaning per symbol: the letters the notation page declares **one meaning** are not used for anything else.

``book/notation.md`` gives a few letters a single meaning for the whole book, because each of them once meant
several things: $N$ (Monte Carlo draws, not series terms or test digits), $p$ (the linearization point, not the
output dimension, a fraction or a density), $h_i$ (the standardized mean, never a function) and $d_i$ (the
distance to the kink, not a dimension, a direction or a diagonal). A regex cannot read mathematics, but it can
catch the phrasings in which the banned meanings came back: "$N$-term series", "$I_N$", "$N$ test digits",
"$B \\in \\mathbb{R}^{p \\times m}$", "$p = 5$ outputs", "$h(x + \\varepsilon)$", "$\\mathrm{diag}(d)$",
"$x + t\\,d$". The Markdown of every book page and notebook (the course's student notebooks included) is scanned;
code cells are not, since a code name is not a symbol of the text.

A few uses sit in chapters that other people are editing; they are listed in ``PENDING`` with the replacement the
notation page asks for. A pending entry allows that one rule in that one file, nothing else.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
NOTATION = BOOK / "notation.md"

# symbol as the notation page's first column starts it -> {rule name: regex of a banned meaning}
RULES: dict[str, dict[str, str]] = {
    "$N$": {
        "N as series terms": r"\$N\$[- ]terms?\b|\bterms,? \$N\$|\bI_N\b|\bterms=N\b|\$N = \d+\$[^.\n]{0,40}\bterms?\b",
        "N as test digits": r"\$N\$ (?:test |MNIST )?(?:digits|images)\b",
    },
    "$p$": {
        "p as the output dimension": (r"\\mathbb\{R\}\^\{?p\s*\\times|\$p\s*=\s*\d+\$,? outputs|\$p\$ outputs"
                                      r"|\$p \\times p\$|output dimension \$p\$|\bO\(pm\^2\)"),
        "p as a fraction": r"fraction \$p\$|\\hat\s*\{?p\}?(?![A-Za-z])",
        "p as a density": r"(?<![\\A-Za-z_])p\(t\)",
    },
    "$h_i": {
        "h as a function": r"(?<![\\A-Za-z_{])h\((?:x|X)\b",
    },
    "$d_i": {
        "d as a dimension": r"\$d\$ dimensions|\\chi\^2_d\b|\bI_d\b",
        "d as a direction": r"direction \$d\$|\+ t\s*\\,\s*d\b(?!_)|\$d \\sim",
        "d as a diagonal": r"\\mathrm\{diag\}\(d\)",
    },
}
COMPILED = {(sym, name): re.compile(rx) for sym, rules in RULES.items() for name, rx in rules.items()}

# (file relative to book/, rule name) -> the fix the notation page asks for. Chapters edited by others.
PENDING = {
}


def violations(text: str) -> list[tuple[str, str, str]]:
    """(symbol, rule name, matched text) for every banned use in a piece of Markdown."""
    found = []
    for (sym, name), rx in COMPILED.items():
        for m in rx.finditer(text):
            found.append((sym, name, m.group(0)))
    return found


def markdown_of(path: Path) -> str:
    """The Markdown a reader sees: a page, or the Markdown cells of a notebook."""
    if path.suffix == ".md":
        return path.read_text(encoding="utf-8")
    nb = json.loads(path.read_text(encoding="utf-8"))
    return "\n\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")


def book_pages() -> list[Path]:
    # The notation page names the banned uses on purpose (its table of replacements).
    pages = [p for p in BOOK.glob("*.md") if p != NOTATION]
    pages += sorted(BOOK.glob("*.ipynb")) + sorted((BOOK / "course").glob("*.ipynb"))
    return sorted(pages)


def declared_one_meaning() -> set[str]:
    """First-column cells of the notation page's rows that say **one meaning**."""
    rows = [line for line in NOTATION.read_text(encoding="utf-8").splitlines() if line.startswith("| $")]
    return {row.split("|")[1].strip() for row in rows if "**one meaning**" in row}


def test_every_rule_belongs_to_a_symbol_the_notation_page_declares_single_meaning():
    declared = declared_one_meaning()
    for sym in RULES:
        assert any(cell.startswith(sym) for cell in declared), (
            f"{sym}: the notation page no longer declares it **one meaning**; update the page or the rules")


def test_no_symbol_is_used_with_a_banned_meaning():
    problems = []
    for path in book_pages():
        rel = path.relative_to(BOOK).as_posix()
        for sym, name, hit in violations(markdown_of(path)):
            if (rel, name) not in PENDING:
                problems.append(f"{rel}: {name} ({sym} has one meaning, see notation.md): {hit!r}")
    assert not problems, "\n".join(problems)


PLANTED = [
    ("the series with $N$ terms", "N as series terms"),
    ("NM20's $N$-term series", "N as series terms"),
    ("the truncated integral $I_N$", "N as series terms"),
    ("(NM20 use $N = 5$, the number of terms)", "N as series terms"),
    ("the first $N$ test digits", "N as test digits"),
    ("with $B \\in \\mathbb{R}^{p \\times m}$", "p as the output dimension"),
    ("$m = 32$ hidden units and $p = 5$ outputs", "p as the output dimension"),
    ("without forming the $p \\times p$ matrix", "p as the output dimension"),
    ("the standard error of a fraction $p$ from $N$ draws", "p as a fraction"),
    ("With $\\hat p = 1$ the interval", "p as a fraction"),
    ("integrate $t\\,p(t)$", "p as a density"),
    ("$c_1 = \\mathbb{E}[h(x + \\varepsilon)] - Ax$", "h as a function"),
    ("$\\mathrm{Cov}(h(X), Y)$", "h as a function"),
    ("in $d$ dimensions", "d as a dimension"),
    ("a random unit direction $d$", "d as a direction"),
    ("at $x + t\\,d$ from each point", "d as a direction"),
    ("the covariance $LL^\\top + \\mathrm{diag}(d)$", "d as a diagonal"),
]


@pytest.mark.parametrize("text, rule", PLANTED)
def test_a_planted_banned_use_is_caught(text, rule):
    assert rule in {name for _, name, _ in violations(text)}


def test_the_book_s_own_notation_passes():
    clean = ("$N = 10^4$ draws; the $n_{\\mathrm{terms}}$-term series; $n_{\\mathrm{img}}$ test digits; "
             "$B \\in \\mathbb{R}^{n_{\\mathrm{out}} \\times m}$; the linearization point $p = x$; $q_p$; "
             "$J_f(p)$; $\\hat P$; $h_i = \\mu_i/\\sigma_i$; $\\Phi_2(h, k; \\rho)$; $\\varphi(h)$; "
             "$f_{\\mathrm{before}}(x + \\varepsilon)$; $d_i = (h_i - \\rho h_j)/s$; $\\Phi(d_j)$; "
             "$x + t\\,\\zeta$; $\\mathrm{diag}(\\psi)$; $\\chi^2_n$; $dt$, $d\\theta$")
    assert violations(clean) == []


def test_a_planted_page_fails_the_scan(tmp_path):
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": ["Take $p = 4$ outputs.\n"]},
                    {"cell_type": "code", "metadata": {}, "source": ["p = 4  # code is not scanned\n"],
                     "outputs": [], "execution_count": None}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "planted.ipynb"
    path.write_text(json.dumps(nb), encoding="utf-8")
    assert [name for _, name, _ in violations(markdown_of(path))] == ["p as the output dimension"]
