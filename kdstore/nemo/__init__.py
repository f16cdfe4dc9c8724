"""The NeMo adapter: the one place that restores a ``.nemo``, reads its front end and runs its joint.

:mod:`checkpoint` (restore, tokenizer files), :mod:`frontend` (preprocessor settings, exact buffers),
:mod:`teacher_forced` (teacher-forced joint log-probs over the T x (U+1) lattice).
"""
