"""A student against its teacher on the same utterances: accuracy retention and a paired bootstrap.

The statistics themselves (the paired bootstrap, kaldialign's cross-check) live in
:mod:`kdstore.evaluate.scoring`; this module pairs two :class:`~kdstore.evaluate.transcribe.EvalResult`
and names the numbers a distillation report quotes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kdstore.errors import ConfigError
from kdstore.evaluate.scoring import PairedBootstrap, kaldialign_bootstrap, paired_bootstrap
from kdstore.evaluate.transcribe import EvalResult


@dataclass(frozen=True, kw_only=True)
class Comparison:
    """A student against its teacher on the same utterances.

    ``accuracy_retention`` = (1 - WER_student) / (1 - WER_teacher): the share of the teacher's word
    accuracy the student keeps (None when the teacher's WER is 100% or more). ``wer_ratio`` =
    WER_student / WER_teacher (None when the teacher makes no errors). ``bootstrap`` is the paired
    bootstrap of WER_student - WER_teacher (negative: the student is better).
    """

    student_wer: float
    teacher_wer: float
    accuracy_retention: float | None
    wer_ratio: float | None
    bootstrap: PairedBootstrap
    kaldialign: dict[str, Any] | None  # kaldialign's bootstrap on the same texts, when installed

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the fields above, the bootstrap as a dict."""
        return {"student_wer": self.student_wer, "teacher_wer": self.teacher_wer,
                "accuracy_retention": self.accuracy_retention, "wer_ratio": self.wer_ratio,
                "bootstrap": self.bootstrap.to_dict(), "kaldialign": self.kaldialign}


def compare(student: EvalResult, teacher: EvalResult, samples: int = 2000, seed: int = 0) -> Comparison:
    """Accuracy retention and a paired bootstrap of the WER difference (same manifest, same order).

    ``samples`` resamples of the utterances, seeded with ``seed`` (Bisani and Ney 2004; see
    :func:`kdstore.evaluate.scoring.paired_bootstrap`). Raises ``ConfigError`` when the two results
    were scored on different utterances.
    """
    if student.keys != teacher.keys:
        raise ConfigError("student and teacher were scored on different utterances; use the same manifest")
    ref_words = [u.ref_words for u in student.scored.utterances]
    boot = paired_bootstrap([u.errors for u in student.scored.utterances],
                            [u.errors for u in teacher.scored.utterances], ref_words, samples=samples, seed=seed)
    cross = kaldialign_bootstrap(student.scored.references, student.scored.hypotheses, teacher.scored.hypotheses,
                                 samples=samples, seed=seed)
    teacher_acc = 1.0 - teacher.wer
    return Comparison(
        student_wer=student.wer, teacher_wer=teacher.wer,
        accuracy_retention=(1.0 - student.wer) / teacher_acc if teacher_acc > 0 else None,
        wer_ratio=student.wer / teacher.wer if teacher.wer > 0 else (None if student.wer > 0 else 1.0),
        bootstrap=boot, kaldialign=cross,
    )
