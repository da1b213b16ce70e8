"""The documentation cannot rot: its links resolve inside the repository, its test names exist.

- Every relative link in README.md and docs/*.md (and in the repository's markdown files they
  link to) names a file or folder of this repository, and a ``#fragment`` names a heading of
  the target. A path starting with ``../`` that leaves the repository is an error even in a code
  span, since a clone has nothing there.
- Every ``path.py::name`` in those files (docs/semantics.md cites the test behind each rule)
  names a test function defined, or imported, at the top level of that file.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY_DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`+[^`]*`+")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
PARENT_PATH = re.compile(r"(?<![\w./-])((?:\.\./)+[\w.-][\w./-]*)")
TEST_REFERENCE = re.compile(r"((?:[\w.-]+/)*[\w.-]+\.py)::(\w+)")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


# --------------------------------------------------------------------------------- markdown

def prose_lines(text: str):
    """(line number, line) outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def heading_anchors(text: str) -> set:
    """GitHub's anchors for the headings of a markdown text (``-1``, ``-2`` for repeats)."""
    anchors, seen = set(), {}
    for _, line in prose_lines(text):
        match = HEADING.match(line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(2).strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def link_targets(text: str):
    """(line number, target) of every inline or reference link outside code."""
    for number, line in prose_lines(text):
        line = INLINE_CODE.sub("", line)
        for match in LINK.finditer(line):
            yield number, match.group(1)
        match = REFERENCE_LINK.match(line)
        if match:
            yield number, match.group(1)


def inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def link_problems(doc: Path, root: Path = ROOT) -> tuple[list, list]:
    """(problems, markdown files of the repository that ``doc`` links to)."""
    text = doc.read_text(encoding="utf-8")
    problems, linked, outside = [], [], set()
    where = f"{doc.relative_to(root)}"
    for number, target in link_targets(text):
        if URL_SCHEME.match(target):
            continue  # a web address, not a file of the repository
        path_part, _, fragment = target.partition("#")
        resolved = (doc.parent / path_part).resolve() if path_part else doc
        if not inside(resolved, root):
            problems.append(f"{where}:{number}: link {target!r} leaves the repository")
            outside.add((number, path_part))
            continue
        if not resolved.exists():
            problems.append(f"{where}:{number}: link {target!r}: {resolved.relative_to(root)} does not exist")
            continue
        if resolved.suffix == ".md":
            linked.append(resolved)
            if fragment and fragment not in heading_anchors(resolved.read_text(encoding="utf-8")):
                problems.append(f"{where}:{number}: link {target!r}: no heading #{fragment} there")
    for number, line in enumerate(text.splitlines(), 1):
        for match in PARENT_PATH.finditer(line):
            resolved = (doc.parent / match.group(1)).resolve()
            if not inside(resolved, root) and (number, match.group(1)) not in outside:
                problems.append(f"{where}:{number}: path {match.group(1)!r} leaves the repository")
    return problems, linked


def all_link_problems(entry_docs, root: Path = ROOT) -> list:
    """Link problems of ``entry_docs`` and of every repository markdown file they lead to."""
    problems, queue, checked = [], list(entry_docs), set()
    while queue:
        doc = queue.pop()
        if doc in checked:
            continue
        checked.add(doc)
        found, linked = link_problems(doc, root)
        problems += found
        queue += linked
    return problems


# --------------------------------------------------------------------------------- test names

def defined_tests(source: str) -> set:
    """Names of the test functions a test module defines or imports at its top level."""
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ImportFrom):
            names.update(alias.asname or alias.name for alias in node.names)
    return {name for name in names if name.startswith("test_")}


def named_test_problems(doc: Path, root: Path = ROOT) -> list:
    problems = []
    where = f"{doc.relative_to(root)}"
    for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
        for match in TEST_REFERENCE.finditer(line):
            file, name = match.groups()
            path = root / file
            if not path.is_file():
                problems.append(f"{where}:{number}: {file}::{name}: no file {file}")
            elif name not in defined_tests(path.read_text(encoding="utf-8")):
                problems.append(f"{where}:{number}: {file}::{name}: no test function {name} in {file}")
    return problems


# --------------------------------------------------------------------------------- the checks

def test_links_resolve_inside_the_repository():
    assert (ROOT / "docs" / "semantics.md") in ENTRY_DOCS
    assert all_link_problems(ENTRY_DOCS) == []


def test_named_tests_exist():
    cited = TEST_REFERENCE.findall((ROOT / "docs" / "semantics.md").read_text(encoding="utf-8"))
    assert len(cited) >= 50  # the semantics document names the test behind each rule
    problems = [p for doc in ENTRY_DOCS for p in named_test_problems(doc)]
    assert problems == []


# --------------------------------------------------------------------------------- the checkers can fail

@pytest.fixture
def repo(tmp_path):
    """A small repository: README.md, docs/, tests/test_a.py."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text(
        "from other import test_imported\n\ndef test_one():\n    pass\n\ndef helper():\n    pass\n")
    (tmp_path / "docs" / "page.md").write_text("# Page\n\n## A section\n")
    return tmp_path


@pytest.mark.parametrize("line, fragment", [
    ("[spec](../shared/spec.md)", "leaves the repository"),
    ("the spec is in `../shared/spec.md`", "leaves the repository"),
    ("[gone](docs/missing.md)", "does not exist"),
    ("[ref]: docs/missing.md", "does not exist"),
    ("[bad anchor](docs/page.md#no-such-section)", "no heading #no-such-section"),
    ("[here](#nowhere)", "no heading #nowhere"),
])
def test_link_checker_reports(repo, line, fragment):
    (repo / "README.md").write_text(f"# Title\n\n{line}\n")
    problems = all_link_problems([repo / "README.md"], repo)
    assert len(problems) == 1 and fragment in problems[0] and "README.md:3" in problems[0]


def test_link_checker_accepts_good_links_and_follows_them(repo):
    (repo / "README.md").write_text(
        "# Title\n\n[page](docs/page.md#a-section), [top](#title), [web](https://example.org/x),"
        " ![img](docs), `[code](docs/missing.md)` is no link\n\n```md\n[in a block](docs/missing.md)\n```\n")
    assert all_link_problems([repo / "README.md"], repo) == []
    (repo / "docs" / "page.md").write_text("# Page\n\n## A section\n[up](../../outside.md)\n")
    problems = all_link_problems([repo / "README.md"], repo)
    assert len(problems) == 1 and problems[0].startswith("docs/page.md:4: link '../../outside.md' leaves")


@pytest.mark.parametrize("reference, expected", [
    ("tests/test_a.py::test_one", None),
    ("tests/test_a.py::test_imported", None),
    ("tests/test_a.py::test_two", "no test function test_two"),
    ("tests/test_a.py::helper", "no test function helper"),
    ("tests/test_b.py::test_one", "no file tests/test_b.py"),
])
def test_test_name_checker(repo, reference, expected):
    (repo / "docs" / "page.md").write_text(f"# Page\n\nChecked by: `{reference}`.\n")
    problems = named_test_problems(repo / "docs" / "page.md", repo)
    if expected is None:
        assert problems == []
    else:
        assert len(problems) == 1 and expected in problems[0]


def test_heading_anchors_follow_github():
    text = "# gpukb\n## `gpukb.rnn`\n### Keras cells: fused kernels\n## Differences from tf.keras 2.21\n" \
           "## Set-up\n## Set-up\n```\n# not a heading\n```\n"
    assert heading_anchors(text) == {"gpukb", "gpukbrnn", "keras-cells-fused-kernels",
                                     "differences-from-tfkeras-221", "set-up", "set-up-1"}
