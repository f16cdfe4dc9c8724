"""bench/_report.py: each benchmark owns one ``## `` section of docs/benchmarks.md and replaces it."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from _report import write_section


def test_a_body_without_its_heading_still_replaces_its_section(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## A\n\nold a\n\n## B\n\nold b\n")
    write_section(doc, "## A", "new a\n")  # the body only (how sherpa_agreement.py wrote it)
    write_section(doc, "## A", "## A\n\nnewer a\n")  # heading included
    write_section(doc, "## C", "c\n")
    assert doc.read_text() == "# Benchmarks\n\n## A\n\nnewer a\n\n## B\n\nold b\n\n## C\n\nc\n"
