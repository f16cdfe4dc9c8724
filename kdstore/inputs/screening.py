"""Hostile-input screening: one skip-bad policy and one side-file schema for every command.

Policy (dump-teacher, train-student, prepare-librispeech): every input is checked before any work
starts. By default the first bad one stops the run with one line naming the file (and line), the
problem and the fix. With ``--skip-bad`` bad inputs are left out, counted, and each is appended to a
side file as it is found (the file is emptied when the run starts, so it lists this run's inputs
only). Nothing is ever written to a store or a manifest for a bad input.

Side file (``OUT.skipped.jsonl`` for dump-teacher, ``<output>.skipped.jsonl`` for train-student,
``OUT/skipped.jsonl`` for prepare-librispeech): JSON lines, one object per input left out, with the
fields of ``Skipped.to_json``:

* ``kind`` (str): what is wrong, one of ``KINDS``;
* ``file`` (str): the file to look at (manifest, transcript, audio file or subset folder);
* ``line`` (int or null): 1-based line in ``file`` when the problem is a line;
* ``utterance`` (str or null): the utterance, when known (a manifest's ``audio_filepath``, a
  LibriSpeech utterance id);
* ``reason`` (str): one sentence saying what is wrong;
* ``raw`` (str or null): the line as written (manifests, transcripts), when there is one;
* ``label`` (str), ``confidence`` (float, nats per token) and ``key`` (str): only for utterances the
  teacher labelled and ``dump-teacher`` left out (``low_confidence``, ``empty_label``): its label, how
  sure it was (``kdstore.dump.pseudo_labels``) and the store key (the store records these keys too).

Filters are not errors: ``dump-teacher --min-confidence`` leaves weak teacher labels out, and
``train-student``'s ``min_duration``/``max_duration`` leave utterances out of a split; each is counted
and listed (``BadInputPolicy.drop``, :func:`duration_filter`) with or without ``--skip-bad``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdstore.errors import ManifestError
from kdstore.files import write_atomic
from kdstore.frames import FrameSettings, encoder_frames
from kdstore.inputs.manifest import BadLine, ManifestEntry, read_manifest

DURATION_TOLERANCE_S = 0.1  # manifests round durations; more than this is a different file
KINDS = (
    "malformed_line",  # a manifest or transcript line that cannot be parsed, or a duplicate id
    "duplicate_utterance",  # the same audio span as an earlier line (the first is kept)
    "missing_audio",  # the audio file named does not exist
    "unreadable_audio",  # the audio header (or, at load time, the audio) cannot be decoded
    "duration_mismatch",  # the manifest's duration is longer than the audio (or, without an offset, shorter)
    "non_finite_audio",  # float audio holding NaN or infinite samples
    "bad_transcript",  # empty, no tokens, or characters the tokenizer cannot encode
    "too_short",  # the audio gives no encoder frame
    "too_many_tokens",  # more tokens than the frames can emit
    "missing_transcript",  # LibriSpeech: a FLAC without a transcript line (or file)
    "unreadable_transcript",  # LibriSpeech: a transcript file that cannot be read
    "empty_subset",  # LibriSpeech: a subset with no transcripts, or every entry skipped
    "over_max_duration",  # train-student: longer than model.*_ds.max_duration (a filter, not an error)
    "under_min_duration",  # train-student: shorter than model.*_ds.min_duration (a filter, not an error)
    "low_confidence",  # dump-teacher --min-confidence: the teacher's label is less sure than asked
    "empty_label",  # dump-teacher: the teacher heard no words in an untranscribed utterance
)
FIX_LINE = "fix or remove the line"


@dataclass(frozen=True)
class Skipped:
    """One input left out (the side file's row, see the module doc); ``hint`` says how to fix it."""

    kind: str
    file: str
    line: int | None
    utterance: str | None
    reason: str
    raw: str | None = None
    hint: str = field(default=FIX_LINE, compare=False)
    label: str | None = None  # the teacher's label, for utterances it labelled and that were left out
    confidence: float | None = None  # its confidence (nats per token), ditto
    key: str | None = None  # the utterance's store key, ditto (so a store can record what it left out)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line is not None else self.file

    def to_json(self) -> dict[str, Any]:
        out = {"kind": self.kind, "file": self.file, "line": self.line, "utterance": self.utterance,
               "reason": self.reason, "raw": self.raw}
        if self.label is not None or self.confidence is not None:
            out.update(label=self.label, confidence=self.confidence, key=self.key)
        return out


@dataclass
class BadInputPolicy:
    """Stop at the first bad input, or (``skip_bad``) record it, append it to ``side_file`` and go on.

    ``listed_in`` names the side file in the stop message (``side_file`` is often None when not
    skipping). With ``skip_bad`` and a ``side_file``, the file is emptied (parent folders created)
    when the policy is made.
    """

    skip_bad: bool = False
    side_file: Path | None = None
    listed_in: str = "a .skipped.jsonl side file"
    skipped: list[Skipped] = field(default_factory=list)

    reset_side_file: bool = False  # empty the side file even without skip_bad (a run that filters)
    left_out: list[tuple[ManifestEntry, str]] = field(default_factory=list)  # left out on purpose upstream, with why

    def __post_init__(self) -> None:
        if (self.skip_bad or self.reset_side_file) and self.side_file is not None:
            self.side_file = Path(self.side_file)
            self.side_file.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.side_file, "")

    def add(self, item: Skipped) -> None:
        """Raise ``ManifestError`` (one line: where, why, how to fix) unless skipping; else record ``item``."""
        if not self.skip_bad:
            raise ManifestError(f"{item.where}: {item.reason}; {item.hint}, or rerun with --skip-bad to leave it "
                                f"out and list it in {self.listed_in}")
        self.drop(item)

    def drop(self, item: Skipped) -> None:
        """Record ``item`` and append it to the side file, skipping or not (a filter, not an error)."""
        self.skipped.append(item)
        if self.side_file is not None:
            with self.side_file.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(item.to_json()) + "\n")

    def __call__(self, bad: BadLine) -> None:
        """The ``read_manifest`` hook: a line that does not parse."""
        self.add(Skipped(bad.kind, str(bad.manifest), bad.line, None, bad.reason, bad.raw))

    def reject(self, entry: ManifestEntry, kind: str, reason: str, hint: str = FIX_LINE) -> None:
        """A parsed manifest entry that cannot be used (``kind`` one of ``KINDS``)."""
        raw = entry.raw if entry.raw is not None else json.dumps(
            {"audio_filepath": entry.audio_filepath, "duration": entry.duration, "offset": entry.offset, "text": entry.text})
        self.add(Skipped(kind, str(entry.manifest), entry.line, entry.audio_filepath, reason, raw, hint))


# Sample formats that can hold NaN or infinity; integer PCM (and FLAC, MP3...) cannot, so only these are read.
FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")


def non_finite_samples(path: Path, offset: float = 0.0, duration: float | None = None) -> int:
    """How many samples (over all channels) of ``path`` from ``offset`` for ``duration`` seconds are NaN or
    infinite; reads the span in blocks of 1 M frames."""
    import numpy as np
    import soundfile

    count = 0
    with soundfile.SoundFile(str(path)) as handle:
        start = round(offset * handle.samplerate)
        stop = handle.frames if duration is None else min(handle.frames, start + round(duration * handle.samplerate))
        handle.seek(min(start, handle.frames))
        while handle.tell() < stop:
            block = handle.read(min(1 << 20, stop - handle.tell()), dtype="float32", always_2d=True)
            if not len(block):
                break
            count += int(block.size - np.isfinite(block).sum())
    return count


@dataclass(frozen=True)
class ScreenRules:
    """What a model can use: its front end decides T (``kdstore.frames``), its tokenizer the unk id."""

    front_end: FrameSettings
    unk_id: int | None
    max_symbols_per_frame: int = 10


@dataclass(frozen=True)
class Problem:
    kind: str  # one of KINDS
    reason: str
    hint: str = FIX_LINE


def entry_problem(entry: ManifestEntry, tokens: Sequence[int] | None, rules: ScreenRules,
                  tokenize: Callable[[str], Sequence[int]]) -> Problem | None:
    """Why ``entry`` cannot be used, or None. Reads only the audio header. ``tokens`` None: the line has no
    transcript yet (the teacher will label it), so only the audio is checked."""
    import soundfile

    try:
        info = soundfile.info(str(entry.audio_path))
    except (RuntimeError, OSError, soundfile.LibsndfileError) as err:
        return Problem("unreadable_audio", f"unreadable or corrupt audio {entry.audio_filepath} ({err})",
                       "re-encode or remove it")
    available = info.frames / info.samplerate - entry.offset
    if available + DURATION_TOLERANCE_S < entry.duration:
        return Problem("duration_mismatch", f"the manifest says {entry.duration:.3f} s from offset {entry.offset:.3f} "
                       f"s, but {entry.audio_filepath} has only {max(available, 0.0):.3f} s there", "fix the duration")
    if not entry.segment and entry.duration + DURATION_TOLERANCE_S < available:
        return Problem("duration_mismatch", f"the manifest says {entry.duration:.3f} s but {entry.audio_filepath} is "
                       f"{available:.3f} s long and the line gives no offset, so the audio would be cut at "
                       f"{entry.duration:.3f} s", "fix the duration (or give an \"offset\" to use a span of the file)")
    if info.subtype in FLOAT_SUBTYPES:
        bad = non_finite_samples(entry.audio_path, entry.offset, entry.duration)
        if bad:
            return Problem("non_finite_audio", f"audio {entry.audio_filepath} has non-finite samples ({bad} NaN or "
                           "infinite values)", "re-encode it as PCM or replace those samples")
    frames = encoder_frames(round(min(entry.duration, available) * rules.front_end.sample_rate), rules.front_end)
    if frames is not None and frames < 1:
        return Problem("too_short", f"audio too short ({entry.duration:.3f} s): no encoder frame")
    if tokens is None:
        return None
    if not tokens and not entry.text:
        return Problem("bad_transcript", "no transcript ('text' missing or empty) and no stored label",
                       "give it a 'text', or let the teacher label it (kdstore dump-teacher over this manifest, then "
                       "train with that store)")
    if not tokens:
        return Problem("bad_transcript", f"transcript {entry.text!r} has no tokens")
    if rules.unk_id is not None and rules.unk_id in tokens:
        unknown = sorted({ch for ch in entry.text if not ch.isspace() and rules.unk_id in tokenize(ch)})
        return Problem("bad_transcript", f"transcript has characters the tokenizer cannot encode: {''.join(unknown)!r}",
                       "normalise the text (or train the tokenizer on it)")
    if frames is not None and len(tokens) > frames * rules.max_symbols_per_frame:
        return Problem("too_many_tokens", f"{len(tokens)} tokens but only {frames} encoder frames; at most "
                       f"{rules.max_symbols_per_frame} symbols per frame can be emitted, so no model could produce "
                       "this transcript", "check that text and audio belong together")
    return None


def same_utterance(entry: ManifestEntry) -> tuple[str, float, float]:
    """What makes two manifest lines the same utterance: the audio file they resolve to (however the path is
    spelled) and the span, offset and duration in seconds to the store key's 3 decimals."""
    return str(entry.audio_path.resolve()), round(entry.offset, 3), round(entry.duration, 3)


def duplicate_problem(entry: ManifestEntry, seen: dict[tuple[str, float, float], ManifestEntry]) -> Problem | None:
    """``duplicate_utterance`` when a line kept earlier (``seen``: what :func:`same_utterance` gives -> its
    entry) is the same utterance; the first one kept is the one that stays."""
    first = seen.get(same_utterance(entry))
    if first is None or first is entry:
        return None
    where = f"line {first.line}" if first.manifest == entry.manifest else first.where
    return Problem("duplicate_utterance", f"same utterance as {where} (key {first.key})",
                   "remove the repeated line (or give it its own offset/duration)")


def screened_manifest(path: str | Path, tokenize: Callable[[str], Sequence[int]], rules: ScreenRules,
                      policy: BadInputPolicy, *, labels: Callable[[ManifestEntry], Sequence[int] | None] | None = None,
                      untranscribed: bool = False,
                      leave_out: Callable[[ManifestEntry], str | None] | None = None,
                      seen: dict[tuple[str, float, float], ManifestEntry] | None = None) -> list[ManifestEntry]:
    """Read and check a manifest under ``policy``; returns the usable entries in manifest order.

    A line that is the same utterance as an earlier one (``duplicate_utterance``; pass one ``seen`` dict
    to several calls to look across manifests) is bad input: the first is kept.

    ``untranscribed``: lines without ``text`` are kept (only their audio is checked; the teacher labels
    them). ``labels``: the token ids an entry will be trained on when they are not its transcript's
    (a store's pseudo-label; None: tokenise ``text``). ``leave_out``: why an entry was left out on
    purpose upstream (``dump-teacher --min-confidence``), or None; such entries are not bad input:
    they go to ``policy.left_out``, not to the side file. Raises ``ManifestError`` at the first bad line
    (not skipping) or when no line is usable.
    """
    entries = read_manifest(path, on_bad_line=policy, require_text=not untranscribed and labels is None)
    seen = {} if seen is None else seen
    good = []
    for entry in entries:
        repeat = duplicate_problem(entry, seen)
        if repeat is not None:
            policy.reject(entry, repeat.kind, repeat.reason, repeat.hint)
            continue
        why = leave_out(entry) if leave_out is not None else None
        if why is not None:
            policy.left_out.append((entry, why))
            continue
        given = labels(entry) if labels is not None else None
        if given is not None:
            tokens: Sequence[int] | None = list(given)
        else:
            tokens = None if (untranscribed and not entry.text) else list(tokenize(entry.text))
        problem = entry_problem(entry, tokens, rules, tokenize)
        if problem is None:
            good.append(entry)
            seen[same_utterance(entry)] = entry
        else:
            policy.reject(entry, problem.kind, problem.reason, problem.hint)
    if not good:
        raise ManifestError(f"manifest {path}: no usable lines ({len(policy.skipped)} skipped, see "
                            f"{policy.side_file or policy.listed_in})")
    return good


def duration_filter(entries: Sequence[ManifestEntry], policy: BadInputPolicy, *, min_duration: float | None,
                    max_duration: float | None, setting: str) -> list[ManifestEntry]:
    """The entries within [``min_duration``, ``max_duration``] seconds (None: no bound); each one outside is
    dropped into ``policy`` (``under_min_duration``/``over_max_duration``, naming ``setting``, e.g.
    ``model.train_ds``). Raises ``ManifestError`` when none is left, saying how many each bound removed."""
    kept, removed = [], {"min_duration": 0, "max_duration": 0}
    for entry in entries:
        if max_duration is not None and entry.duration > max_duration:
            kind, bound, reason = "over_max_duration", "max_duration", f"longer than {setting}.max_duration={max_duration} s"
        elif min_duration is not None and entry.duration < min_duration:
            kind, bound, reason = "under_min_duration", "min_duration", f"shorter than {setting}.min_duration={min_duration} s"
        else:
            kept.append(entry)
            continue
        removed[bound] += 1
        policy.drop(Skipped(kind, str(entry.manifest), entry.line, entry.audio_filepath,
                            f"{entry.duration:.3f} s is {reason}", entry.raw))
    if entries and not kept:
        counts = ", ".join(f"{n} by {setting}.{bound}" for bound, n in removed.items() if n)
        raise ManifestError(f"{setting}: every one of the {len(entries)} usable utterances was left out ({counts}); "
                            f"widen the bounds (e.g. {setting}.max_duration=null) or cut the audio into shorter utterances")
    return kept


def rules_for(model: Any, front_end: FrameSettings) -> ScreenRules:
    """Screening rules for a NeMo transducer (passed in; NeMo is not imported here) with ``front_end``
    (the store's ``FrontEnd`` read from it): its tokenizer's unk id and its greedy decoder's max
    symbols per frame (NeMo's default, 10, when unset)."""
    sp = getattr(model.tokenizer, "tokenizer", None)
    unk_id = sp.unk_id() if sp is not None and hasattr(sp, "unk_id") else None
    greedy = (model.cfg.get("decoding") or {}).get("greedy") or {}
    return ScreenRules(front_end=front_end, unk_id=unk_id if unk_id is not None and unk_id >= 0 else None,
                       max_symbols_per_frame=int(greedy.get("max_symbols") or 10))
