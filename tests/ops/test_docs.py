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
