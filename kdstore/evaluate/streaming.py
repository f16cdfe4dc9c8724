"""``kdstore eval --streaming``: WER/CER of NeMo's cache-aware streaming decode, and word latency.

Each utterance is decoded the way a live source would feed it (:mod:`kdstore.nemo.streaming`: chunks
of ``--chunk-ms``, NeMo's ``conformer_stream_step`` with caches, greedy RNN-T); the transcripts are
scored like offline eval (:mod:`kdstore.evaluate.scoring`).

Latency of a word = the time its last token appeared in the streamed hypothesis (the audio that had
arrived when the chunk that emitted it was complete) minus the word's end in the audio. Word ends come
from an offline *latency reference* model (``--latency-reference``, else ``--teacher``): NeMo's own
RNN-T word timestamps (``compute_timestamps``; ``end = end_offset x frame``: the encoder frame at which
the reference emitted the word's last token, 80 ms frames). Only words both systems got right count:
the manifest reference is aligned (jiwer) with the streamed hypothesis and, separately, with the
latency reference's hypothesis; a reference word that is a hit in both gives one latency. Words are
normalised one at a time with the eval normaliser (a word that normalises to several keeps its time).
Without a latency reference no latency is measured (the report says how to get it): the emission time
relative to the utterance end says little about word delays. Positive = the word appeared after it
ended in the audio; a streaming model with chunk ``C`` and no extra delay is late by about
``C / 2`` on average (a word ends anywhere in a chunk and shows when the chunk is complete).
The word ends are only as good as the reference's emission frames: use a well-trained offline model
(the teacher). An offline RNN-T may emit a word a frame or two off its acoustic end, and a model
that memorised its data emits whole sentences in the first frames (the test fixtures do: their
latencies are finite but not meaningful).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdstore.evaluate.transcribe import EvalResult


@dataclass(frozen=True, kw_only=True)
class TimedWords:
    """Words of one utterance, each with a time in seconds (emission or end in the audio)."""

    words: tuple[str, ...]
    times_s: tuple[float, ...]
    starts_s: tuple[float, ...] | None = None  # reference words only: where each begins in the audio


@dataclass(frozen=True, kw_only=True)
class StreamingInfo:
    """How the model was streamed and what latency it showed (the JSON ``streaming`` block).

    ``context``: NeMo's ``[left, right]`` attention context in encoder frames; ``chunk_ms`` and
    ``lookahead_ms`` follow from it. ``latency_*_ms``: over all measured words of the set (None when
    no latency reference or no word was measured); ``latency_words``: how many words were measured out
    of ``ref_words`` reference words.
    """

    chunk_ms: float
    lookahead_ms: float
    context: list[int]
    latency_reference: str | None
    latency_words: int
    ref_words: int
    latency_left_out: int = 0  # word pairs left out: streamed before the reference word began (:func:`word_latencies`)
    latency_median_ms: float | None
    latency_p90_ms: float | None
    latency_mean_ms: float | None


@dataclass(frozen=True, kw_only=True)
class StreamingEvalResult(EvalResult):
    """An :class:`EvalResult` of the streamed decode, plus how it streamed and per-utterance timings."""

    streaming: StreamingInfo
    token_times_s: list[tuple[float, ...]] = field(repr=False)  # per utterance, per token
    word_latencies_s: list[list[float]] = field(repr=False)  # per utterance, per measured word

    def summary(self) -> dict[str, Any]:
        """:meth:`EvalResult.summary` plus the ``streaming`` block (per-utterance lists left out)."""
        data = super().summary()
        for name in ("token_times_s", "word_latencies_s"):
            data.pop(name, None)
        data["streaming"] = asdict(self.streaming)
        return data


# --- words and times -------------------------------------------------------------------------------


def emitted_words(token_ids: Sequence[int], token_times_s: Sequence[float], decode) -> TimedWords:
    """The hypothesis' words, each timed by its last token's emission time.

    ``decode`` maps a list of token ids to text (``model.decoding.decode_ids_to_str``). A word's last
    token is the first token at which the decoded prefix has that word complete (its i-th
    whitespace-separated word equals the final i-th word), so it works for SentencePiece pieces and
    characters alike. ``token_times_s``: ``(U,)`` seconds. Returns words of the final text.
    """
    ids = [int(t) for t in token_ids]
    final = decode(ids).split() if ids else []
    times: list[float] = []
    k = 0  # tokens read so far
    for i, word in enumerate(final):
        while k < len(ids):
            k += 1
            prefix = decode(ids[:k]).split()
            if len(prefix) > i and prefix[i] == word:  # later tokens can only start later words
                break
        times.append(float(token_times_s[k - 1]))
    return TimedWords(words=tuple(final), times_s=tuple(times))


def normalize_timed(words: TimedWords, normalizer: str) -> TimedWords:
    """Normalise each word on its own (:mod:`kdstore.evaluate.normalize`); a word that becomes several
    keeps its time for each, one that becomes empty is dropped."""
    from kdstore.evaluate.normalize import get_normalizer

    norm = get_normalizer(normalizer)
    out_words: list[str] = []
    out_times: list[float] = []
    out_starts: list[float] = []
    starts = words.starts_s if words.starts_s is not None else words.times_s
    for word, t, begin in zip(words.words, words.times_s, starts, strict=True):
        for piece in norm(word).split():
            out_words.append(piece)
            out_times.append(t)
            out_starts.append(begin)
    return TimedWords(words=tuple(out_words), times_s=tuple(out_times),
                      starts_s=tuple(out_starts) if words.starts_s is not None else None)


def aligned_hits(reference: Sequence[str], hypothesis: Sequence[str]) -> dict[int, int]:
    """``{reference word index: hypothesis word index}`` for the words jiwer's minimum-edit alignment
    marks equal (hits); empty on either side gives no hits."""
    import jiwer

    if not reference or not hypothesis:
        return {}
    out = jiwer.process_words(" ".join(reference), " ".join(hypothesis))
    hits: dict[int, int] = {}
    for chunk in out.alignments[0]:
        if chunk.type == "equal":
            for offset in range(chunk.ref_end_idx - chunk.ref_start_idx):
                hits[chunk.ref_start_idx + offset] = chunk.hyp_start_idx + offset
    return hits


def word_latencies(reference: Sequence[str], emitted: TimedWords, ends: TimedWords) -> list[float]:
    """Latency (seconds) of each reference word that both the streamed hypothesis and the latency
    reference got right: its emission time in ``emitted`` minus its end time in ``ends``.

    ``reference``: normalised manifest words. ``emitted``: streamed hypothesis words with emission
    times. ``ends``: the latency reference's hypothesis words with their end times in the audio (and,
    when known, ``starts_s``). A streamed word shown before the reference word even began cannot be that
    word (a weak hypothesis aligned by edit distance to a later occurrence, e.g. an early "the" paired
    with the "the" of "in the morning"): such pairs are left out, see :func:`implausible_pairs`.
    Returned in reference word order.
    """
    return [late for late, plausible in _pairs(reference, emitted, ends) if plausible]


def implausible_pairs(reference: Sequence[str], emitted: TimedWords, ends: TimedWords) -> int:
    """How many word pairs :func:`word_latencies` left out (streamed before the reference word began)."""
    return sum(not plausible for _, plausible in _pairs(reference, emitted, ends))


def _pairs(reference: Sequence[str], emitted: TimedWords, ends: TimedWords) -> list[tuple[float, bool]]:
    streamed = aligned_hits(reference, emitted.words)
    timed = aligned_hits(reference, ends.words)
    out = []
    for r in sorted(streamed):
        if r not in timed:
            continue
        shown, end = emitted.times_s[streamed[r]], ends.times_s[timed[r]]
        begin = ends.starts_s[timed[r]] if ends.starts_s is not None else None
        out.append((shown - end, begin is None or shown >= begin))
    return out


def latency_stats(latencies_s: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    """(median, p90, mean) in ms of pooled word latencies (numpy's linear percentiles); Nones if empty."""
    if not latencies_s:
        return None, None, None
    ms = 1000.0 * np.asarray(latencies_s, dtype=float)
    return (round(float(np.median(ms)), 1), round(float(np.percentile(ms, 90)), 1), round(float(ms.mean()), 1))


# --- models ----------------------------------------------------------------------------------------


def reference_word_ends(model: Any, audios: Sequence[np.ndarray], batch_size: int = 16) -> list[TimedWords]:
    """NeMo's offline RNN-T word timestamps of ``model`` on each waveform ``(samples,)``: words with their
    end times in seconds (``end_offset x subsampling_factor x window_stride``, NeMo's
    ``process_timestamp_outputs``). Greedy decoding with ``compute_timestamps`` on; the model's
    decoding config is restored afterwards."""
    import copy

    import torch
    from nemo.collections.asr.parts.utils.timestamp_utils import process_timestamp_outputs
    from omegaconf import open_dict

    decoding_cfg = copy.deepcopy(model.cfg.decoding)
    with open_dict(decoding_cfg):
        decoding_cfg.compute_timestamps = True
    kwargs = {"decoder_type": "rnnt"} if hasattr(model, "cur_decoder") else {}
    previous = copy.deepcopy(model.cfg.decoding)
    model.change_decoding_strategy(decoding_cfg, verbose=False, **kwargs)
    out: list[TimedWords] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(audios), batch_size):
                part = audios[start : start + batch_size]
                lengths = torch.tensor([len(a) for a in part])
                signal = torch.zeros(len(part), int(lengths.max()))
                for i, audio in enumerate(part):
                    signal[i, : len(audio)] = torch.from_numpy(np.asarray(audio, dtype=np.float32))
                enc, enc_len = model.forward(input_signal=signal.to(model.device),
                                             input_signal_length=lengths.to(model.device))
                hyps = model.decoding.rnnt_decoder_predictions_tensor(encoder_output=enc, encoded_lengths=enc_len,
                                                                      return_hypotheses=True)
                hyps = process_timestamp_outputs(hyps, model.encoder.subsampling_factor,
                                                 float(model.cfg.preprocessor.window_stride))
                for hyp in hyps:
                    words = (hyp.timestamp or {}).get("word", []) if isinstance(hyp.timestamp, dict) else []
                    out.append(TimedWords(words=tuple(str(w["word"]) for w in words),
                                          times_s=tuple(float(w["end"]) for w in words),
                                          starts_s=tuple(float(w["start"]) for w in words)))
    finally:
        model.change_decoding_strategy(previous, verbose=False, **kwargs)
    return out


def evaluate_streaming(model_path: str | Path, manifest_path: str | Path, chunk_ms: float | None = None,
                       latency_reference: str | Path | None = None, batch_size: int = 16,
                       progress: bool = False, normalizer: str = "basic",
                       complete_last_chunk: bool = False) -> StreamingEvalResult:
    """Restore ``model_path``, stream every utterance of ``manifest_path`` through NeMo's cache-aware
    decode in chunks of ``chunk_ms`` ms (None: the model's default), score with ``normalizer``, and
    measure word latency against ``latency_reference`` (an offline .nemo; None: no latency).

    ``batch_size`` utterances of similar duration stream side by side (exactly as one at a time).
    ``complete_last_chunk``: each utterance is followed by the silence that completes its last chunk, as
    sherpa-onnx's online recognizer decodes it (:func:`kdstore.nemo.streaming.complete_with_silence`).
    Raises :class:`kdstore.nemo.streaming.StreamingError` (one line) for a model that does not stream or
    a chunk length it was not trained for, other ``KdstoreError`` subclasses for unreadable inputs.
    """
    from tqdm import tqdm

    from kdstore.evaluate.scoring import score
    from kdstore.inputs.batches import TranscribedAudioDataset, duration_sorted_batches
    from kdstore.inputs.manifest import read_manifest
    from kdstore.nemo.checkpoint import restore_model
    from kdstore.nemo.frontend import sample_rate_of
    from kdstore.nemo.model_kind import check_model_for
    from kdstore.nemo.streaming import chunk_frames, context_chunk_ms, lookahead_ms, stream_decode_batch

    start = time.perf_counter()
    model = restore_model(model_path)
    check_model_for("eval --streaming", model, model_path, subword=False, tdt=False)
    context = chunk_frames(model, chunk_ms, str(model_path))
    reference_model = restore_model(latency_reference) if latency_reference is not None else None
    entries = read_manifest(manifest_path)
    dataset = TranscribedAudioDataset(entries, None, sample_rate_of(model))
    streamed: dict[int, Any] = {}
    ends: dict[int, TimedWords] = {}
    decode_seconds = 0.0
    for indices in tqdm(duration_sorted_batches(entries, batch_size), desc="eval --streaming", disable=not progress):
        audios = [dataset[i]["audio"] for i in indices]
        decode_start = time.perf_counter()
        for index, out in zip(indices, stream_decode_batch(model, audios, chunk_ms, str(model_path),
                                                                   complete_last_chunk)):
            streamed[index] = out
        decode_seconds += time.perf_counter() - decode_start
        if reference_model is not None:
            for index, words in zip(indices, reference_word_ends(reference_model, audios, batch_size)):
                ends[index] = words
    order = range(len(entries))
    hypotheses = [streamed[i].text for i in order]
    references = [e.text for e in entries]
    scored = score(references, hypotheses, normalizer)
    latencies: list[list[float]] = []
    implausible = 0
    for i in order:
        if reference_model is None:
            latencies.append([])
            continue
        emitted = normalize_timed(emitted_words(streamed[i].token_ids, streamed[i].token_times_s,
                                                model.decoding.decode_ids_to_str), normalizer)
        reference_words, timed = scored.references[i].split(), normalize_timed(ends[i], normalizer)
        latencies.append(word_latencies(reference_words, emitted, timed))
        implausible += implausible_pairs(reference_words, emitted, timed)
    pooled = [x for row in latencies for x in row]
    median, p90, mean = latency_stats(pooled)
    info = StreamingInfo(chunk_ms=context_chunk_ms(model, context), lookahead_ms=lookahead_ms(model, context),
                         context=list(context), latency_reference=None if latency_reference is None else str(latency_reference),
                         latency_words=len(pooled), ref_words=scored.total.ref_words, latency_left_out=implausible,
                         latency_median_ms=median, latency_p90_ms=p90, latency_mean_ms=mean)
    audio_seconds = sum(e.duration for e in entries)
    return StreamingEvalResult(
        model=str(model_path), manifest=str(manifest_path), utterances=len(entries), normalizer=normalizer,
        wer=scored.wer, cer=scored.cer, substitutions=scored.total.substitutions,
        deletions=scored.total.deletions, insertions=scored.total.insertions, ref_words=scored.total.ref_words,
        params=int(sum(p.numel() for p in model.parameters())), audio_seconds=round(audio_seconds, 3),
        decode_seconds=round(decode_seconds, 3), rtf=round(decode_seconds / max(audio_seconds, 1e-9), 5),
        seconds=round(time.perf_counter() - start, 3), hypotheses=hypotheses, references=references,
        keys=[e.key for e in entries], scored=scored, streaming=info,
        token_times_s=[streamed[i].token_times_s for i in order], word_latencies_s=latencies,
    )


def streaming_lines(result: StreamingEvalResult, markdown: bool = True) -> list[str]:
    """Report lines: how the model streamed, and its word latency (or how to measure it)."""
    s = result.streaming
    strong = "**{}**" if markdown else "{}"
    lines = [(f"- Streamed cache-aware (NeMo `conformer_stream_step`, greedy RNN-T): chunk {s.chunk_ms:g} ms, "
             f"look-ahead {s.lookahead_ms:g} ms, attention context {s.context} (encoder frames)")]
    if s.latency_reference is None:
        lines.append("- Word latency: not measured; pass --latency-reference (an offline model, e.g. the teacher) "
                     "or --teacher")
    elif s.latency_median_ms is None:
        lines.append(f"- Word latency: no word was right in both the streamed transcripts and "
                     f"`{Path(s.latency_reference).name}`'s")
    else:
        lines.append(f"- Word latency (last token shown - word end in `{Path(s.latency_reference).name}`'s "
                     f"timestamps, {s.latency_words} of {s.ref_words} reference words"
                     + (f"; {s.latency_left_out} pairs shown before the word began left out" if s.latency_left_out else "")
                     + "): median "
                     f"{strong.format(f'{s.latency_median_ms:.0f} ms')}, p90 {strong.format(f'{s.latency_p90_ms:.0f} ms')}, "
                     f"mean {s.latency_mean_ms:.0f} ms")
    return lines


def latency_rows(result: StreamingEvalResult) -> list[dict[str, Any]]:
    """One dict per utterance: key, streamed text, token emission times (s), word latencies (ms)."""
    return [{"key": key, "hypothesis": hyp, "token_times_s": [round(t, 4) for t in times],
             "word_latencies_ms": [round(1000 * x, 1) for x in lat]}
            for key, hyp, times, lat in zip(result.keys, result.hypotheses, result.token_times_s,
                                            result.word_latencies_s)]


def write_latency_rows(result: StreamingEvalResult, path: str | Path) -> Path:
    """Per-utterance JSONL of :func:`latency_rows` (written atomically: :func:`kdstore.files.write_atomic`)."""
    import json

    from kdstore.files import write_atomic

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, (json.dumps(row) + "\n" for row in latency_rows(result)))
    return out
