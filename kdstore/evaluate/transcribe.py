"""Greedy transcription of a manifest with a .nemo model, scored with jiwer.

Decoding goes through our own data path (honours manifest offsets) and NeMo's greedy decoder,
so the numbers are the model's, not a re-implementation's. Scoring (S/D/I, CER, bootstrap) lives in
:mod:`kdstore.evaluate.scoring`, text normalisation in :mod:`kdstore.evaluate.normalize`, the
student-vs-teacher comparison in :mod:`kdstore.evaluate.compare`, the written report in
:mod:`kdstore.evaluate.report`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kdstore.evaluate.scoring import CorpusScore, score


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

    def summary(self) -> dict[str, Any]:
        """Every field but the per-utterance lists: what ``kdstore eval --json`` prints per model."""
        data = asdict(self)
        for name in ("hypotheses", "references", "keys", "scored"):
            data.pop(name)
        return data


def transcribe_manifest(model: Any, manifest_path: str | Path, batch_size: int = 16,
                        progress: bool = False) -> tuple[list[str], list[str], list[str]]:
    """(keys, references, hypotheses) in manifest order: greedy RNN-T decoding with ``model``.

    ``model`` is a restored NeMo transducer (:func:`kdstore.nemo.checkpoint.restore_model`); audio is
    read at its preprocessor's sample rate, ``batch_size`` utterances of similar duration at a time.
    ``progress`` draws a bar on stderr. Raises ``ManifestError``/``AudioError`` on unusable inputs.
    """
    import torch
    from tqdm import tqdm

    from kdstore.inputs.batches import TranscribedAudioDataset, collate, duration_sorted_batches
    from kdstore.inputs.manifest import read_manifest
    from kdstore.nemo.frontend import sample_rate_of

    entries = read_manifest(manifest_path)
    dataset = TranscribedAudioDataset(entries, None, sample_rate_of(model))  # audio only: NeMo's decoding gives text
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
    """Restore ``model_path``, decode ``manifest_path`` greedily, score with ``normalizer``.

    ``normalizer`` is one of :data:`kdstore.evaluate.normalize.NORMALIZERS`; ``progress`` draws a bar.
    Raises ``KdstoreError`` subclasses for an unreadable model, manifest or audio file.
    """
    from kdstore.inputs.manifest import read_manifest
    from kdstore.nemo.checkpoint import restore_model
    from kdstore.nemo.model_kind import check_model_for

    start = time.perf_counter()
    model = restore_model(model_path)
    check_model_for("eval", model, model_path, subword=False, tdt=True)
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


def utterance_rows(result: EvalResult) -> list[dict[str, Any]]:
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
    from kdstore.files import write_atomic

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, (json.dumps(row) + "\n" for row in utterance_rows(result)))
    return out
