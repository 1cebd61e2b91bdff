"""The guides show code that runs: the consumers of docs/integration.md, "Wire format", are the
files in ``examples/`` that ``tests/integration/test_wire_examples.py`` runs, included verbatim."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INTEGRATION = REPO / "docs" / "integration.md"


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", markdown, flags=re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize("example", ["consume_single_object.py", "consume_registry.py"])
def test_the_wire_format_consumers_are_the_tested_examples_verbatim(example: str) -> None:
    text = INTEGRATION.read_text(encoding="utf-8")
    section = text.split("\n## Wire format\n", 1)[1].split("\n## ", 1)[0]
    code = (REPO / "examples" / example).read_text(encoding="utf-8")
    assert code in python_blocks(section)
    assert f"(../examples/{example})" in section  # linked, so readers find the file
    assert len(code.splitlines()) <= 22  # short enough to read in the guide


# -- links within the operations docs ---------------------------------------------------------

OPS_DOCS = [REPO / "docs" / "runbook.md", REPO / "deploy" / "README.md", REPO / "README.md"]


def github_anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file (code blocks skipped)."""
    text = re.sub(r"^```.*?^```$", "", markdown, flags=re.MULTILINE | re.DOTALL)
    anchors = set()
    for match in re.finditer(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, flags=re.MULTILINE):
        anchors.add(re.sub(r"[^\w\- ]", "", match[1].strip().lower()).replace(" ", "-"))
    return anchors


def test_github_anchors() -> None:
    assert github_anchors("## StepcareWorkerDown\n### Remedies used below\n## The SLO (30 d)") == {
        "stepcareworkerdown",
        "remedies-used-below",
        "the-slo-30-d",
    }


@pytest.mark.parametrize("doc", OPS_DOCS, ids=lambda path: str(path.relative_to(REPO)))
def test_links_to_sections_and_files_resolve(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        linked = (doc.parent / path).resolve() if path else doc
        assert linked.exists(), f"{doc.name}: link to {target}: no {path}"
        if anchor and linked.suffix == ".md":
            assert anchor in github_anchors(linked.read_text(encoding="utf-8")), (
                f"{doc.name}: link to {target}: no such section"
            )


def test_runbook_urls_are_files_of_the_repository() -> None:
    # runbook_url is relative to the repository root (docs/runbook.md, "Link scheme").
    for rules in (REPO / "deploy" / "prometheus" / "rules").glob("*.yml"):
        for url in re.findall(r"runbook_url:\s*(\S+)", rules.read_text(encoding="utf-8")):
            path, _, anchor = url.partition("#")
            assert (REPO / path).is_file(), f"{rules.name}: {url}"
            assert anchor in github_anchors((REPO / path).read_text(encoding="utf-8")), url
