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


def test_untranscribed_budget_table_pairs_by_seed_per_budget(tmp_path):
    import json

    from untranscribed import budget_table

    results = tmp_path / "results"
    results.mkdir()
    wers = {(1400, "base", 0): 0.15, (1400, "plus-untranscribed", 0): 0.12, (1400, "base", 1): 0.14,
            (1400, "plus-untranscribed", 1): 0.16, (2800, "base", 0): 0.13, (2800, "plus-untranscribed", 0): 0.11,
            (2800, "base", 1): 0.10,  # no partner: left out of the pairs
            (1400, "plus-filtered", 0): 0.01}  # another row: not in this table
    for (steps, row, seed), wer in wers.items():
        (results / f"{row}-s{seed}-{steps}.json").write_text(
            json.dumps({"fingerprint": {"row": row, "seed": seed, "steps": steps}, "wer": wer}))
    lines = budget_table(tmp_path).splitlines()
    assert len(lines) == 4
    assert lines[2].startswith("| 1400 | 0, 1 | 14.50 ± 0.71 | 14.00 ± 2.83 | -3.00, +2.00 | -0.50 | 1 of 2 | -0.20 |")
    assert lines[3].startswith("| 2800 | 0 | 13.00 | 11.00 | -2.00 | -2.00 | 1 of 1 | - |")
