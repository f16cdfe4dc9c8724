"""Greedy transcription of a manifest with a .nemo model, scored with jiwer (WER, CER).

Decoding goes through our own data path (honours manifest offsets) and NeMo's greedy decoder,
so the numbers are the model's, not a re-implementation's.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from kdstore.data import TranscribedAudioDataset, collate, duration_sorted_batches
from kdstore.manifest import read_manifest
from kdstore.nemo_files import restore_model


@dataclass(frozen=True)
class EvalResult:
    model: str
    manifest: str
    utterances: int
    wer: float
    cer: float
    params: int
    seconds: float
    hypotheses: list[str]
    references: list[str]
    keys: list[str]

    def summary(self) -> dict:
        data = asdict(self)
        for name in ("hypotheses", "references", "keys"):
            data.pop(name)
        return data


def normalize_text(text: str) -> str:
    return " ".join(text.lower().split())


def transcribe_manifest(model, manifest_path: str | Path, batch_size: int = 16, progress: bool = False):
    """(keys, references, hypotheses) in manifest order, greedy RNN-T decoding."""
    from tqdm import tqdm

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


def score(references: list[str], hypotheses: list[str]) -> tuple[float, float]:
    import jiwer

    refs = [normalize_text(r) for r in references]
    hyps = [normalize_text(h) for h in hypotheses]
    return float(jiwer.wer(refs, hyps)), float(jiwer.cer(refs, hyps))


def evaluate_model(model_path: str | Path, manifest_path: str | Path, batch_size: int = 16,
                   progress: bool = False) -> EvalResult:
    start = time.time()
    model = restore_model(model_path)
    keys, references, hypotheses = transcribe_manifest(model, manifest_path, batch_size, progress)
    wer, cer = score(references, hypotheses)
    return EvalResult(
        model=str(model_path), manifest=str(manifest_path), utterances=len(keys), wer=wer, cer=cer,
        params=int(sum(p.numel() for p in model.parameters())), seconds=round(time.time() - start, 3),
        hypotheses=hypotheses, references=references, keys=keys,
    )


def write_transcripts(result: EvalResult, path: str | Path) -> Path:
    """Per-utterance JSONL: key, reference, hypothesis and that utterance's WER."""
    import jiwer

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:
        for key, ref, hyp in zip(result.keys, result.references, result.hypotheses):
            utt_wer = jiwer.wer(normalize_text(ref), normalize_text(hyp)) if ref.strip() else float(bool(hyp.strip()))
            handle.write(json.dumps({"key": key, "reference": ref, "hypothesis": hyp, "wer": round(utt_wer, 4)}) + "\n")
    return out
