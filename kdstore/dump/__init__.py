"""Stage 1, teacher -> store: ``kdstore dump-teacher``.

:mod:`run` (the resumable, multi-rank dump loop), :mod:`rows` (top-k, blank/label, band rows per
utterance), :mod:`ranks` (torchrun ranks).
"""
