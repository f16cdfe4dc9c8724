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

Filters are not errors: ``dump-teacher --min-confidence`` leaves weak teacher labels out and lists
them (``BadInputPolicy.drop``) with or without ``--skip-bad``.
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
    "missing_audio",  # the audio file named does not exist
    "unreadable_audio",  # the audio header (or, at load time, the audio) cannot be decoded
    "duration_mismatch",  # the manifest's duration is longer than the audio
    "bad_transcript",  # empty, no tokens, or characters the tokenizer cannot encode
    "too_short",  # the audio gives no encoder frame
    "too_many_tokens",  # more tokens than the frames can emit
    "missing_transcript",  # LibriSpeech: a FLAC without a transcript line (or file)
    "unreadable_transcript",  # LibriSpeech: a transcript file that cannot be read
    "empty_subset",  # LibriSpeech: a subset with no transcripts, or every entry skipped
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


def screened_manifest(path: str | Path, tokenize: Callable[[str], Sequence[int]], rules: ScreenRules,
                      policy: BadInputPolicy, *, labels: Callable[[ManifestEntry], Sequence[int] | None] | None = None,
                      untranscribed: bool = False,
                      leave_out: Callable[[ManifestEntry], str | None] | None = None) -> list[ManifestEntry]:
    """Read and check a manifest under ``policy``; returns the usable entries in manifest order.

    ``untranscribed``: lines without ``text`` are kept (only their audio is checked; the teacher labels
    them). ``labels``: the token ids an entry will be trained on when they are not its transcript's
    (a store's pseudo-label; None: tokenise ``text``). ``leave_out``: why an entry was left out on
    purpose upstream (``dump-teacher --min-confidence``), or None; such entries are not bad input:
    they go to ``policy.left_out``, not to the side file. Raises ``ManifestError`` at the first bad line
    (not skipping) or when no line is usable.
    """
    entries = read_manifest(path, on_bad_line=policy, require_text=not untranscribed and labels is None)
    good = []
    for entry in entries:
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
        else:
            policy.reject(entry, problem.kind, problem.reason, problem.hint)
    if not good:
        raise ManifestError(f"manifest {path}: no usable lines ({len(policy.skipped)} skipped, see "
                            f"{policy.side_file or policy.listed_in})")
    return good


def rules_for(model: Any, front_end: FrameSettings) -> ScreenRules:
    """Screening rules for a NeMo transducer (passed in; NeMo is not imported here) with ``front_end``
    (the store's ``FrontEnd`` read from it): its tokenizer's unk id and its greedy decoder's max
    symbols per frame (NeMo's default, 10, when unset)."""
    sp = getattr(model.tokenizer, "tokenizer", None)
    unk_id = sp.unk_id() if sp is not None and hasattr(sp, "unk_id") else None
    greedy = (model.cfg.get("decoding") or {}).get("greedy") or {}
    return ScreenRules(front_end=front_end, unk_id=unk_id if unk_id is not None and unk_id >= 0 else None,
                       max_symbols_per_frame=int(greedy.get("max_symbols") or 10))
