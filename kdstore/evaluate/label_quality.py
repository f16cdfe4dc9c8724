"""How good are the teacher's pseudo-labels? WER of a store's labels by confidence bucket.

A team that withholds the transcripts of a sample of its untranscribed audio (or dumps transcribed
audio with ``--pseudo-label``) can score what the teacher wrote against them. Labels are grouped into
equal-count buckets of the stored confidence (the teacher's mean log-prob per token, nats:
``kdstore.dump.pseudo_labels``), and for each bucket's lower edge the table says what
``dump-teacher --min-confidence`` at that value would keep (share of hours) and how wrong the kept
labels would be. That is the trade to choose: more audio, or cleaner labels (Distil-Whisper keeps
labels within 10% WER of the teacher's; arXiv 2311.00430, section 3.2).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kdstore.errors import KdstoreError
from kdstore.evaluate.scoring import Errors, score
from kdstore.inputs.manifest import read_manifest
from kdstore.store import StoreReader

DECIMALS = 4  # confidences are shown (and thresholds rounded down) to this many decimals


@dataclass(frozen=True)
class Bucket:
    """Labels whose confidence lies in [low, high] (nats per token)."""

    low: float
    high: float
    utterances: int
    hours: float
    wer: float  # label WER against the references, in [0, inf)
    ref_words: int


@dataclass(frozen=True)
class Threshold:
    """What ``--min-confidence min_confidence`` keeps of the scored labels."""

    min_confidence: float
    kept_utterances: int
    kept_hours_share: float  # of the scored hours, in [0, 1]
    kept_wer: float  # WER of the kept labels
    dropped_wer: float | None  # WER of the left-out labels (None: nothing left out)


@dataclass(frozen=True)
class LabelQuality:
    store: str
    references: str
    sources: tuple[str, ...]  # which labels were scored ("teacher", or "teacher" and "person")
    normalizer: str
    scored: int
    hours: float
    without_reference: int  # stored labels of those sources with no line in the references manifest
    wer: float
    buckets: tuple[Bucket, ...]
    thresholds: tuple[Threshold, ...]
    spearman: float | None  # rank correlation of confidence and per-utterance WER (negative: confidence works)

    def table(self) -> str:
        """Markdown: the buckets, then what each candidate --min-confidence keeps."""
        lines = [f"Label WER of {self.scored} {'/'.join(self.sources)} labels ({self.hours:.3f} h) in {self.store} "
                 f"against {self.references}: **{100 * self.wer:.2f}%** ({self.normalizer} normaliser"
                 + (f"; Spearman rho(confidence, utterance WER) = {self.spearman:.2f}" if self.spearman is not None
                    else "") + ")", "",
                 "| confidence (nats/token) | utterances | hours | label WER % |", "|---|---:|---:|---:|"]
        lines += [f"| {b.low:.4f} .. {b.high:.4f} | {b.utterances} | {b.hours:.3f} | {100 * b.wer:.2f} |"
                  for b in self.buckets]
        lines += ["", "| --min-confidence | kept utterances | kept hours % | kept label WER % | left-out label WER % |",
                  "|---:|---:|---:|---:|---:|"]
        lines += [f"| {t.min_confidence:.4f} | {t.kept_utterances} | {100 * t.kept_hours_share:.1f} | "
                  f"{100 * t.kept_wer:.2f} | {'-' if t.dropped_wer is None else f'{100 * t.dropped_wer:.2f}'} |"
                  for t in self.thresholds]
        return "\n".join(lines)

    def to_json(self) -> dict:
        return asdict(self)


def _wer(errors: list[Errors]) -> float:
    total = sum(errors, Errors())
    return total.wer


def _spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return None
    rank = lambda v: np.argsort(np.argsort(v, kind="stable"), kind="stable").astype(float)
    return float(np.corrcoef(rank(x), rank(y))[0, 1])


def label_quality(store_path: str | Path, references: str | Path, *, buckets: int = 5, include_person: bool = False,
                  normalizer: str = "basic") -> LabelQuality:
    """Score the stored labels of ``store_path`` against the texts of ``references`` (a manifest of the
    same lines with their text; keys must match).

    Only teacher labels are scored unless ``include_person``. Raises KdstoreError for a ``kdstore/1``
    store (it keeps no labels) or when no stored label has a reference.
    """
    reader = StoreReader(store_path)
    if not reader.has_labels:
        raise KdstoreError(f"store {store_path} is {reader.metadata.format}: it keeps no labels; dump the teacher "
                           "again with this kdstore to store and score its labels")
    refs = {e.key: e.text for e in read_manifest(references, require_text=False)}
    if not any(refs.values()):
        raise KdstoreError(f"{references} has no text on any line: give the manifest that holds the withheld "
                           "transcripts (for the demo corpus: untranscribed.refs.json)")
    sources = ("teacher", "person") if include_person else ("teacher",)
    labels = [reader.label(i) for i in range(len(reader))]
    labels = [lab for lab in labels if lab.source in sources]
    if not labels:
        raise KdstoreError(f"store {store_path} holds no teacher labels (every line had text when it was dumped); "
                           "score its person labels with --include-person, or dump with --pseudo-label")
    paired = [lab for lab in labels if refs.get(lab.key)]
    if not paired:
        raise KdstoreError(f"none of the {len(labels)} {'/'.join(sources)} labels in {store_path} has a line with text "
                           f"in {references}; the references must be the same manifest lines (same audio_filepath, "
                           "offset, duration) with their transcripts")
    scored = score([refs[lab.key] for lab in paired], [lab.text for lab in paired], normalizer)
    per_utt = list(scored.utterances)
    conf = np.array([lab.confidence for lab in paired])
    hours = np.array([float(lab.key.rsplit("|", 1)[1]) / 3600 for lab in paired])
    order = np.argsort(conf, kind="stable")
    groups = [g for g in np.array_split(order, min(buckets, len(order))) if len(g)]
    bucket_rows = tuple(Bucket(low=float(conf[g].min()), high=float(conf[g].max()), utterances=len(g),
                               hours=round(float(hours[g].sum()), 4), wer=_wer([per_utt[i] for i in g]),
                               ref_words=sum(per_utt[i].ref_words for i in g)) for g in groups)
    thresholds = []
    for b in bucket_rows:
        # the edge rounded down to the 4 decimals shown, and counted with that value: copying it into
        # --min-confidence keeps exactly what the row says
        edge = math.floor(b.low * 10**DECIMALS) / 10**DECIMALS
        kept = [i for i in range(len(paired)) if conf[i] >= edge]
        dropped = [i for i in range(len(paired)) if conf[i] < edge]
        thresholds.append(Threshold(min_confidence=edge, kept_utterances=len(kept),
                                    kept_hours_share=round(float(hours[kept].sum() / hours.sum()), 4),
                                    kept_wer=_wer([per_utt[i] for i in kept]),
                                    dropped_wer=_wer([per_utt[i] for i in dropped]) if dropped else None))
    return LabelQuality(store=str(store_path), references=str(references), sources=sources, normalizer=normalizer,
                        scored=len(paired), hours=round(float(hours.sum()), 4),
                        without_reference=len(labels) - len(paired), wer=scored.wer, buckets=bucket_rows,
                        thresholds=tuple(thresholds),
                        spearman=_spearman(conf, np.array([e.wer for e in per_utt])))


def plot_label_quality(quality: LabelQuality, out_png: str | Path) -> Path:
    """Two panels: label WER per confidence bucket, and kept label WER against kept hours (one point per
    candidate --min-confidence)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    names = [f"{b.low:.{DECIMALS}f}..{b.high:.{DECIMALS}f}" for b in quality.buckets]
    left.bar(range(len(names)), [100 * b.wer for b in quality.buckets], color="#4c72b0")
    left.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    left.set_xlabel("teacher confidence bucket (mean log-prob per token, nats)")
    left.set_ylabel("label WER %")
    left.set_title(f"{quality.scored} labels, overall {100 * quality.wer:.1f}% WER")
    xs = [100 * t.kept_hours_share for t in quality.thresholds]
    ys = [100 * t.kept_wer for t in quality.thresholds]
    right.plot(xs, ys, "o-", color="#dd8452")
    for t, x, y in zip(quality.thresholds, xs, ys, strict=True):
        right.annotate(f"{t.min_confidence:.{DECIMALS}f}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    right.set_xlabel("hours kept %")
    right.set_ylabel("label WER of the kept audio %")
    right.set_title("--min-confidence: what it keeps")
    right.invert_xaxis()
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_label_quality(quality: LabelQuality, out_dir: str | Path) -> Path:
    """``label-quality.md`` (the table and the plot), ``label-quality.json`` and ``label-quality.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = plot_label_quality(quality, out / "label-quality.png")
    (out / "label-quality.json").write_text(json.dumps(quality.to_json(), indent=2) + "\n")
    md = out / "label-quality.md"
    md.write_text(f"# Label quality\n\n{quality.table()}\n\n![label WER by confidence]({png.name})\n")
    return md
