"""Shared bits of the benchmark scripts: a one-line machine description and replacing one
``## `` section of a Markdown file (each benchmark owns one section of docs/benchmarks.md)."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path


def machine() -> str:
    """CPU model, usable cores, OS and the load average now (the machine may be shared)."""
    model = "unknown CPU"
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        model = match.group(1).strip() if match else model
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return f"{model}, nproc {usable}, {platform.system()} {platform.machine()}, load average {load} at start"


def write_section(path: Path, heading: str, text: str) -> None:
    """Replace the section ``heading`` of ``path`` (up to the next ``## `` heading) or append it.

    ``text`` may start with the heading or be the section's body; the heading is always written, so a
    section can always be found (and replaced) by the next run.
    """
    if not text.startswith(heading + "\n"):
        text = f"{heading}\n\n{text}"
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    if pattern.search(old):
        new = pattern.sub(lambda _: text.rstrip("\n") + "\n\n", old, count=1).rstrip("\n") + "\n"
    else:
        new = old.rstrip("\n") + "\n\n" + text
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)
