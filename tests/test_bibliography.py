"""The back matter holds together: every bibliography entry is cited, every glossary link leads to a chapter, and
every further-reading page is in the table of contents.

``book/bibliography.md`` lists the whole of ``book/references.bib`` (``:all:``), so an entry that no page cites
would sit in the bibliography unexplained; these tests make sure none does. Nothing is built or executed: the
checks read the Markdown pages, the Markdown cells of the notebooks, the glossary and ``_toc.yml``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
BIB = BOOK / "references.bib"
GLOSSARY = BOOK / "glossary.md"
TOC = ROOT / "_toc.yml"

ENTRY = re.compile(r"^@(\w+)\s*\{\s*([^,\s]+)\s*,", re.MULTILINE)
# {cite}`a,b`, {cite:p}`a`, {cite:t}`a`, {cite:ps}`a`, ...
CITE = re.compile(r"\{cite(?::\w+)?\}`([^`]+)`")
DOC_LINK = re.compile(r"\{doc\}`(?:[^`<]*<([^>`]+)>|([^`<>]+))`")
FURTHER_READING = sorted(BOOK.glob("further_reading_*.md"))


def bib_keys(text: str) -> list[str]:
    """The keys of a BibTeX file's entries, in file order (``@comment``/``@string``/``@preamble`` excluded)."""
    return [key for kind, key in ENTRY.findall(text) if kind.lower() not in {"comment", "string", "preamble"}]


def cited_keys(texts: list[str]) -> set[str]:
    """Every key cited by a ``{cite...}`` role in any of the texts."""
    cited = set()
    for text in texts:
        for group in CITE.findall(text):
            cited.update(key.strip() for key in group.split(",") if key.strip())
    return cited


def uncited(keys, texts: list[str]) -> set[str]:
    return set(keys) - cited_keys(texts)


def book_texts() -> list[str]:
    """The Markdown pages of the book and the Markdown cells of its notebooks (course notebooks included)."""
    texts = []
    for path in sorted(BOOK.rglob("*.md")):
        if "_build" not in path.parts:
            texts.append(path.read_text(encoding="utf8"))
    for path in sorted(BOOK.rglob("*.ipynb")):
        if "_build" in path.parts or ".ipynb_checkpoints" in path.parts:
            continue
        cells = json.loads(path.read_text(encoding="utf8"))["cells"]
        texts += ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
                  for c in cells if c["cell_type"] == "markdown"]
    return texts


def doc_target_exists(target: str, base: Path = BOOK) -> bool:
    """Whether a ``{doc}`` target (relative to ``base``, without suffix) names a page of the book."""
    stem = base / target
    return any(stem.with_name(stem.name + suffix).is_file() for suffix in (".md", ".ipynb"))


def doc_targets(text: str) -> list[str]:
    return [explicit or bare for explicit, bare in DOC_LINK.findall(text)]


def glossary_entries(text: str) -> list[tuple[str, str]]:
    """``(term, definition)`` pairs of the MyST ``{glossary}`` block: a term is an unindented line, its
    definition the indented lines after it."""
    block = re.search(r"```\{glossary\}\n(.*?)\n```", text, re.DOTALL)
    assert block, "no {glossary} directive found"
    entries: list[tuple[str, list[str]]] = []
    for line in block.group(1).split("\n"):
        if not line.strip() or line.startswith(":"):
            continue
        if line[0].isspace():
            assert entries, f"a definition line before any term: {line!r}"
            entries[-1][1].append(line.strip())
        else:
            entries.append((line.strip(), []))
    return [(term, " ".join(lines)) for term, lines in entries]


def toc_order() -> list[tuple[str | None, str]]:
    """``(part caption, file)`` for every chapter of ``_toc.yml``, in reading order."""
    toc = yaml.safe_load(TOC.read_text(encoding="utf8"))
    order = []
    for part in toc["parts"]:
        for chapter in part.get("chapters", []):
            order.append((part.get("caption"), chapter["file"]))
    return order


# ---------------------------------------------------------------- the bibliography


def test_bibliography_is_large_and_has_no_duplicates():
    keys = bib_keys(BIB.read_text(encoding="utf8"))
    assert len(keys) >= 35, f"{len(keys)} entries, at least 35 expected"
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    assert not duplicates, f"duplicate BibTeX keys: {duplicates}"


def test_every_entry_is_cited_somewhere():
    keys = bib_keys(BIB.read_text(encoding="utf8"))
    missing = uncited(keys, book_texts())
    assert not missing, f"in references.bib but cited on no page (bibliography.md lists :all:): {sorted(missing)}"


def test_the_citation_detector_can_fail():
    keys = bib_keys(BIB.read_text(encoding="utf8"))
    texts = book_texts()
    assert uncited([*keys, "madeup2099nonexistent"], texts) == {"madeup2099nonexistent"}
    sample = ["see {cite:t}`alpha2001, beta2002` and {cite}`gamma2003`", "{cite:p}`delta2004`", "cite`eps2005`"]
    assert cited_keys(sample) == {"alpha2001", "beta2002", "gamma2003", "delta2004"}
    assert bib_keys("@article{a1,\n title={x}}\n@comment{ignored,}\n@book{ b2 ,\n}") == ["a1", "b2"]


def test_bibliography_page_lists_everything():
    text = (BOOK / "bibliography.md").read_text(encoding="utf8")
    assert re.search(r"```\{bibliography\}\n:all:\n```", text)


# ---------------------------------------------------------------- the glossary


def test_glossary_size_and_links():
    entries = glossary_entries(GLOSSARY.read_text(encoding="utf8"))
    assert 30 <= len(entries) <= 50, f"{len(entries)} glossary terms, 30 to 50 expected"
    terms = [term.lower() for term, _ in entries]
    assert len(set(terms)) == len(terms), "a glossary term is defined twice"
    for term, definition in entries:
        targets = doc_targets(definition)
        assert targets, f"glossary term {term!r} links to no chapter"
        broken = [t for t in targets if not doc_target_exists(t)]
        assert not broken, f"glossary term {term!r} links to pages that do not exist: {broken}"


def test_glossary_terms_used_by_term_roles_exist():
    text = GLOSSARY.read_text(encoding="utf8")
    terms = {term.lower() for term, _ in glossary_entries(text)}
    used = {t.lower() for t in re.findall(r"\{term\}`([^`<]+)`", text)}
    assert used <= terms, f"{{term}} links to undefined terms: {sorted(used - terms)}"


def test_the_glossary_checks_can_fail():
    fake = ("```{glossary}\nGood term\n  Defined in {doc}`04_network_moments`.\nBad term\n"
            "  Defined in {doc}`a chapter <99_no_such_chapter>`.\nNo link\n  Nowhere.\n```")
    entries = dict(glossary_entries(fake))
    assert list(entries) == ["Good term", "Bad term", "No link"]
    assert doc_targets(entries["Good term"]) == ["04_network_moments"]
    assert doc_target_exists("04_network_moments")
    assert doc_targets(entries["Bad term"]) == ["99_no_such_chapter"]
    assert not doc_target_exists("99_no_such_chapter")
    assert doc_targets(entries["No link"]) == []


def test_glossary_is_back_matter_before_the_bibliography():
    order = toc_order()
    files = [f for _, f in order]
    assert ("Back matter", "book/glossary") in order
    assert files.index("book/glossary") < files.index("book/bibliography")


# ---------------------------------------------------------------- further reading


def test_three_further_reading_pages():
    assert [p.name for p in FURTHER_READING] == [f"further_reading_part{k}.md" for k in (1, 2, 3)]


@pytest.mark.parametrize("path", FURTHER_READING, ids=[p.name for p in FURTHER_READING])
def test_further_reading_page_is_in_the_toc_after_its_part(path):
    order = toc_order()
    files = [f for _, f in order]
    entry = f"book/{path.stem}"
    assert entry in files, f"{path.name} is not in _toc.yml"
    part = {"1": "Part I:", "2": "Part II:", "3": "Part III:"}[path.stem[-1]]
    in_part = [i for i, (caption, _) in enumerate(order) if caption and caption.startswith(part)]
    assert in_part, f"no part captioned {part!r} in _toc.yml"
    # Right after the part's last chapter, in an uncaptioned toctree of its own (no chapter number).
    assert files.index(entry) == in_part[-1] + 1, f"{path.name} does not follow the last chapter of {part}"
    assert order[files.index(entry)][0] is None


@pytest.mark.parametrize("path", FURTHER_READING, ids=[p.name for p in FURTHER_READING])
def test_further_reading_page_cites_and_links(path):
    text = path.read_text(encoding="utf8")
    assert len(cited_keys([text])) >= 8, f"{path.name} annotates fewer than 8 works"
    targets = doc_targets(text)
    assert targets, f"{path.name} links to no chapter"
    broken = [t for t in targets if not doc_target_exists(t)]
    assert not broken, f"{path.name} links to pages that do not exist: {broken}"
    keys = set(bib_keys(BIB.read_text(encoding="utf8")))
    assert cited_keys([text]) <= keys, f"{path.name} cites keys missing from references.bib"


def _control_characters(text: str) -> list[str]:
    # A TeX command written through a Python string ("\tau", "\beta", "\varepsilon") arrives as a control
    # character (tab, backspace, vertical tab): MathJax then shows wrong maths or an error.
    return [repr(ch) for ch in sorted(set(re.findall(r"[\x00-\x1f]", text))) if ch not in "\n\r"]


def test_the_detector_finds_tex_written_through_python_escapes():
    assert _control_characters("$\tau$ and $\beta$ and $\\alpha$") == ["'\\x08'", "'\\t'"]
    assert _control_characters("$\\tau$\n") == []


@pytest.mark.parametrize("path", sorted(BOOK.glob("*.md")) + sorted((BOOK / "reference").glob("*.md"))
                         + [BOOK / "references.bib"], ids=lambda p: p.name)
def test_no_control_characters_in_the_text(path):
    assert not _control_characters(path.read_text(encoding="utf8")), path
