"""Error rates people can check: WER with its substitutions, deletions and insertions per utterance
and per corpus (jiwer's alignment), CER, and a seeded paired bootstrap for the WER difference of two
systems scored on the same utterances.

Corpus WER is ``(S + D + I) / N`` summed over utterances (N = reference words), the number jiwer,
NIST sclite and kaldialign report; it is not the mean of per-utterance WERs. Text is normalised
first (:mod:`kdstore.evaluate.normalize`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kdstore.errors import ConfigError
from kdstore.evaluate.normalize import get_normalizer


@dataclass(frozen=True, kw_only=True)
class Errors:
    """Word-level edit counts of one utterance (or a sum of them)."""

    hits: int = 0
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0

    @property
    def ref_words(self) -> int:
        return self.hits + self.substitutions + self.deletions

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        """Errors per reference word; an empty reference scores 0 if the hypothesis is empty, else 1."""
        if self.ref_words == 0:
            return float(self.insertions > 0)
        return self.errors / self.ref_words

    def __add__(self, other: Errors) -> Errors:
        return Errors(hits=self.hits + other.hits, substitutions=self.substitutions + other.substitutions,
                      deletions=self.deletions + other.deletions, insertions=self.insertions + other.insertions)

    def to_dict(self) -> dict[str, int]:
        return {"hits": self.hits, "substitutions": self.substitutions, "deletions": self.deletions,
                "insertions": self.insertions, "ref_words": self.ref_words}


@dataclass(frozen=True, kw_only=True)
class CorpusScore:
    """Corpus WER/CER and the per-utterance counts behind them (normalised texts included)."""

    normalizer: str
    total: Errors
    cer: float
    utterances: tuple[Errors, ...] = field(repr=False)
    references: tuple[str, ...] = field(repr=False)  # normalised
    hypotheses: tuple[str, ...] = field(repr=False)  # normalised

    @property
    def wer(self) -> float:
        return self.total.errors / self.total.ref_words if self.total.ref_words else float(self.total.insertions > 0)


def word_errors(references: Sequence[str], hypotheses: Sequence[str]) -> list[Errors]:
    """Per-utterance edit counts of already normalised texts (jiwer's minimum-edit alignment)."""
    import jiwer

    if len(references) != len(hypotheses):
        raise ConfigError(f"{len(references)} references but {len(hypotheses)} hypotheses; they must pair up")
    if not references:
        return []
    out = jiwer.process_words(list(references), list(hypotheses))
    counts = []
    for chunks in out.alignments:
        c = {"equal": 0, "substitute": 0, "delete": 0, "insert": 0}
        for chunk in chunks:
            span = chunk.hyp_end_idx - chunk.hyp_start_idx if chunk.type == "insert" else \
                chunk.ref_end_idx - chunk.ref_start_idx
            c[chunk.type] += span
        counts.append(Errors(hits=c["equal"], substitutions=c["substitute"], deletions=c["delete"],
                             insertions=c["insert"]))
    return counts


def score(references: Sequence[str], hypotheses: Sequence[str], normalizer: str = "basic") -> CorpusScore:
    """Normalise both sides with ``normalizer``, then count word errors per utterance and CER overall."""
    import jiwer

    norm: Callable[[str], str] = get_normalizer(normalizer)
    refs = tuple(norm(r) for r in references)
    hyps = tuple(norm(h) for h in hypotheses)
    per_utt = word_errors(refs, hyps)
    total = sum(per_utt, Errors())
    chars = sum(len(r) for r in refs)
    cer = float(jiwer.cer(list(refs), list(hyps))) if chars else float(any(hyps))
    return CorpusScore(normalizer=normalizer, total=total, cer=cer, utterances=tuple(per_utt),
                       references=refs, hypotheses=hyps)


# --- bootstrap -----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PairedBootstrap:
    """WER(a) - WER(b) on the full set and its percentile confidence interval over utterance resamples."""

    difference: float
    low: float
    high: float
    confidence: float
    samples: int
    seed: int
    p_a_better: float  # share of resamples where system a has the lower WER

    def to_dict(self) -> dict[str, float | int]:
        return {"difference": self.difference, "low": self.low, "high": self.high, "confidence": self.confidence,
                "samples": self.samples, "seed": self.seed, "p_a_better": self.p_a_better}


def _resampled_sums(values: np.ndarray, samples: int, seed: int, chunk: int = 500) -> np.ndarray:
    """Sums of ``values`` (n, k) over ``samples`` resamples of the n rows with replacement -> (samples, k)."""
    rng = np.random.default_rng(seed)
    n = values.shape[0]
    out = np.empty((samples, values.shape[1]))
    for start in range(0, samples, chunk):
        stop = min(samples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = values[idx].sum(axis=1)
    return out


def paired_bootstrap(errors_a: Sequence[int], errors_b: Sequence[int], ref_words: Sequence[int],
                     samples: int = 2000, seed: int = 0, confidence: float = 0.95) -> PairedBootstrap:
    """Paired bootstrap over utterances (Bisani and Ney 2004): both systems see the same resample.

    ``errors_*`` are per-utterance word errors (S + D + I) of the two systems, ``ref_words`` the
    per-utterance reference lengths. Each resample draws n utterances with replacement and computes
    ``sum(errors_a) / sum(ref_words) - sum(errors_b) / sum(ref_words)``; the interval is the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles. Deterministic for a given seed.
    """
    values = np.column_stack([np.asarray(errors_a, float), np.asarray(errors_b, float), np.asarray(ref_words, float)])
    if values.shape[0] == 0:
        raise ConfigError("paired bootstrap: no utterances to resample")
    if not 0 < confidence < 1 or samples < 1:
        raise ConfigError(f"paired bootstrap: expected 0 < confidence < 1 and samples >= 1, got {confidence}, {samples}")
    if values[:, 2].sum() == 0:
        raise ConfigError("paired bootstrap: the references have no words")
    sums = _resampled_sums(values, samples, seed)
    words = np.where(sums[:, 2] > 0, sums[:, 2], np.nan)
    diffs = (sums[:, 0] - sums[:, 1]) / words
    diffs = diffs[~np.isnan(diffs)]
    tail = (1 - confidence) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    point = (values[:, 0].sum() - values[:, 1].sum()) / values[:, 2].sum()
    return PairedBootstrap(difference=float(point), low=float(low), high=float(high), confidence=confidence,
                           samples=samples, seed=seed, p_a_better=float((diffs < 0).mean()))


def bootstrap_interval(errors: Sequence[int], ref_words: Sequence[int], samples: int = 2000, seed: int = 0,
                       confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of one system's corpus WER over utterance resamples."""
    values = np.column_stack([np.asarray(errors, float), np.asarray(ref_words, float)])
    sums = _resampled_sums(values, samples, seed)
    wers = sums[sums[:, 1] > 0, 0] / sums[sums[:, 1] > 0, 1]
    tail = (1 - confidence) / 2
    low, high = np.quantile(wers, [tail, 1 - tail])
    return float(low), float(high)


def kaldialign_bootstrap(references: Sequence[str], hypotheses_a: Sequence[str], hypotheses_b: Sequence[str],
                         samples: int = 2000, seed: int = 0) -> dict | None:
    """kaldialign's ``bootstrap_wer_ci`` on the same normalised texts (a cross-check), or None if absent.

    Returns its 95% intervals of each system (mean +- 1.96 standard deviations over resamples) and
    ``p_a_better`` (its probability that system a improves over system b).
    """
    try:
        from kaldialign import bootstrap_wer_ci
    except ImportError:
        return None
    out = bootstrap_wer_ci([r.split() for r in references], [h.split() for h in hypotheses_b],
                           [h.split() for h in hypotheses_a], replications=samples, seed=seed)
    a, b = out["system2"], out["system1"]
    return {"a": {"wer": a["wer"], "low": a["ci95min"], "high": a["ci95max"]},
            "b": {"wer": b["wer"], "low": b["ci95min"], "high": b["ci95max"]},
            "p_a_better": out["p_s2_improv_over_s1"]}


def write_trn(path: str | Path, keys: Sequence[str], texts: Sequence[str]) -> Path:
    """NIST ``trn`` file for sclite: ``text (id)`` per line; ids are ``spk_NNNNNN`` (sclite's ``-i spu_id``)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{text} (utt_{i:06d})" for i, (_, text) in enumerate(zip(keys, texts))]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out
