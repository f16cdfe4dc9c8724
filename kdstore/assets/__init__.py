"""Files kdstore ships inside the wheel: the committed demo teacher (``demo_teacher/``).

Found with ``importlib.resources``, so the same lookup works from a checkout, an editable install
and a wheel installed anywhere; nothing here depends on where the repository is. The files are
read-only package data: ``kdstore demo --train-teacher`` writes a new teacher to a folder the user
names, never here.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from kdstore.errors import KdstoreError

DEMO_TEACHER_FILES = ("teacher.nemo", "teacher-scores.json", "teacher-train.log.csv", "README.md")


def demo_teacher_dir(kind: str = "rnnt") -> Path:
    """The folder holding the committed demo teacher (``teacher.nemo``, its scores, its training curve):
    ``kind`` "rnnt" (the hybrid RNN-T/CTC teacher) or "tdt" (its TDT twin, ``demo_teacher_tdt``).

    Returns a real filesystem path (NeMo restores from paths). Raises ``KdstoreError`` when kdstore
    is imported from a zip archive, where package data has no path of its own.
    """
    folder = files("kdstore.assets") / ("demo_teacher" if kind == "rnnt" else f"demo_teacher_{kind}")
    if not isinstance(folder, Path):
        raise KdstoreError(f"kdstore's package data is not on the filesystem ({folder}); install kdstore "
                           "from a wheel or a checkout, not a zip archive")
    return folder
