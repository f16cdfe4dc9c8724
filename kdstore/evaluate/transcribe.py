"""Greedy transcription of a manifest with a .nemo model, scored with jiwer; student-vs-teacher comparison.

Decoding goes through our own data path (honours manifest offsets) and NeMo's greedy decoder,
so the numbers are the model's, not a re-implementation's. Scoring (S/D/I, CER, bootstrap) lives in
:mod:`kdstore.evaluate.scoring`, text normalisation in :mod:`kdstore.evaluate.normalize`, the written report in
:mod:`kdstore.evaluate.report`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kdstore.evaluate.scoring import CorpusScore, PairedBootstrap, kaldialign_bootstrap, paired_bootstrap, score


@dataclass(frozen=True, kw_only=True)
class EvalResult:
    """One model on one manifest: corpus scores, speed and the per-utterance texts and counts."""

    model: str
    manifest: str
    utterances: int
    normalizer: str
    wer: float
    cer: float
    substitutions: int
    deletions: int
    insertions: int
    ref_words: int
    params: int
    audio_seconds: float
    decode_seconds: float  # audio loading + features + encoder + greedy search, model loading excluded
    rtf: float  # decode_seconds / audio_seconds
    seconds: float  # wall time including model loading
    hypotheses: list[str] = field(repr=False)
    references: list[str] = field(repr=False)
    keys: list[str] = field(repr=False)
    scored: CorpusScore = field(repr=False)

    def summary(self) -> dict:
        data = asdict(self)
        for name in ("hypotheses", "references", "keys", "scored"):
            data.pop(name)
        return data


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
    kaldialign: dict | None  # kaldialign's bootstrap on the same texts, when installed

    def to_dict(self) -> dict:
        return {"student_wer": self.student_wer, "teacher_wer": self.teacher_wer,
                "accuracy_retention": self.accuracy_retention, "wer_ratio": self.wer_ratio,
                "bootstrap": self.bootstrap.to_dict(), "kaldialign": self.kaldialign}


def transcribe_manifest(model, manifest_path: str | Path, batch_size: int = 16, progress: bool = False):
    """(keys, references, hypotheses) in manifest order, greedy RNN-T decoding."""
    import torch
    from tqdm import tqdm

    from kdstore.distill.data import TranscribedAudioDataset, collate, duration_sorted_batches
    from kdstore.inputs.manifest import read_manifest

    entries = read_manifest(manifest_path)
    sample_rate = int(model.cfg.preprocessor.get("sample_rate", model.cfg.sample_rate))
    dataset = TranscribedAudioDataset(entries, model.tokenizer.text_to_ids, sample_rate)
    hypotheses: dict[int, str] = {}
    model.eval()
    with torch.inference_mode():
        for indices in tqdm(duration_sorted_batches(entries, batch_size), desc="eval", disable=not progress):
            batch = collate([dataset[i] for i in indices])
            encoded, encoded_len = model.forward(input_signal=batch.signal.to(model.device),
                                                 input_signal_length=batch.signal_len.to(model.device))
            hyps = model.decoding.rnnt_decoder_predictions_tensor(encoder_output=encoded, encoded_lengths=encoded_len)
            for index, hyp in zip(indices, hyps):
                hypotheses[index] = hyp.text if hasattr(hyp, "text") else str(hyp)
    keys = [e.key for e in entries]
    references = [e.text for e in entries]
    return keys, references, [hypotheses[i] for i in range(len(entries))]


def evaluate_model(model_path: str | Path, manifest_path: str | Path, batch_size: int = 16,
                   progress: bool = False, normalizer: str = "basic") -> EvalResult:
    """Restore ``model_path``, decode ``manifest_path`` greedily, score with ``normalizer``."""
    from kdstore.inputs.manifest import read_manifest
    from kdstore.nemo.checkpoint import restore_model

    start = time.perf_counter()
    model = restore_model(model_path)
    audio_seconds = sum(e.duration for e in read_manifest(manifest_path))
    decode_start = time.perf_counter()
    keys, references, hypotheses = transcribe_manifest(model, manifest_path, batch_size, progress)
    decode_seconds = time.perf_counter() - decode_start
    scored = score(references, hypotheses, normalizer)
    return EvalResult(
        model=str(model_path), manifest=str(manifest_path), utterances=len(keys), normalizer=normalizer,
        wer=scored.wer, cer=scored.cer, substitutions=scored.total.substitutions,
        deletions=scored.total.deletions, insertions=scored.total.insertions, ref_words=scored.total.ref_words,
        params=int(sum(p.numel() for p in model.parameters())), audio_seconds=round(audio_seconds, 3),
        decode_seconds=round(decode_seconds, 3), rtf=round(decode_seconds / max(audio_seconds, 1e-9), 5),
        seconds=round(time.perf_counter() - start, 3), hypotheses=hypotheses, references=references, keys=keys,
        scored=scored,
    )


def compare(student: EvalResult, teacher: EvalResult, samples: int = 2000, seed: int = 0) -> Comparison:
    """Accuracy retention and a paired bootstrap of the WER difference (same manifest, same order)."""
    from kdstore.errors import ConfigError

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


def utterance_rows(result: EvalResult) -> list[dict]:
    """One dict per utterance: key, raw and normalised texts, S/D/I counts and WER."""
    rows = []
    for key, ref, hyp, nref, nhyp, err in zip(result.keys, result.references, result.hypotheses,
                                              result.scored.references, result.scored.hypotheses,
                                              result.scored.utterances):
        rows.append({"key": key, "reference": ref, "hypothesis": hyp, "ref_normalized": nref, "hyp_normalized": nhyp,
                     "wer": round(err.wer, 4), "errors": err.to_dict()})
    return rows


def write_transcripts(result: EvalResult, path: str | Path) -> Path:
    """Per-utterance JSONL (see :func:`utterance_rows`)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:
        for row in utterance_rows(result):
            handle.write(json.dumps(row) + "\n")
    return out
