"""Hostile-input screening: every manifest line is checked before any work starts.

Policy (the same for dump-teacher and train-student): by default the first bad line stops the run
with one sentence naming manifest, line and problem; with ``--skip-bad`` bad lines are skipped, each
written with its reason to a side file (JSON lines), and counted. Nothing is ever written to a store
for a bad utterance.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kdstore.distill.checks import expected_frames
from kdstore.errors import ManifestError
from kdstore.inputs.manifest import BadLine, ManifestEntry, read_manifest
from kdstore.store.metadata import FrontEnd

DURATION_TOLERANCE_S = 0.1  # manifests round durations; more than this is a different file


@dataclass
class BadInputPolicy:
    """Stop at the first bad line, or (skip_bad) record it in ``side_file`` and go on."""

    skip_bad: bool = False
    side_file: Path | None = None
    skipped: list[BadLine] = field(default_factory=list)

    def __call__(self, bad: BadLine) -> None:
        if not self.skip_bad:
            raise ManifestError(f"{bad.message} (fix or remove the line, or pass --skip-bad to skip bad lines)")
        self.skipped.append(bad)
        if self.side_file is not None:
            self.side_file.parent.mkdir(parents=True, exist_ok=True)
            with self.side_file.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"manifest": str(bad.manifest), "line": bad.line, "reason": bad.reason,
                                         "raw": bad.raw}) + "\n")

    def reject(self, entry: ManifestEntry, reason: str) -> None:
        raw = json.dumps({"audio_filepath": entry.audio_filepath, "duration": entry.duration,
                          "offset": entry.offset, "text": entry.text})
        self(BadLine(entry.manifest, entry.line, reason, raw))


@dataclass(frozen=True)
class ScreenRules:
    front_end: FrontEnd
    unk_id: int | None
    max_symbols_per_frame: int = 10


def entry_problem(entry: ManifestEntry, tokens: Sequence[int], rules: ScreenRules,
                  tokenize: Callable[[str], Sequence[int]]) -> str | None:
    """Why ``entry`` cannot be used, or None. Reads only the audio header."""
    import soundfile

    try:
        info = soundfile.info(str(entry.audio_path))
    except (RuntimeError, OSError, soundfile.LibsndfileError) as err:
        return f"unreadable or corrupt audio {entry.audio_filepath} ({err}); re-encode or remove it"
    available = info.frames / info.samplerate - entry.offset
    if available + DURATION_TOLERANCE_S < entry.duration:
        return (f"the manifest says {entry.duration:.3f} s from offset {entry.offset:.3f} s, but {entry.audio_filepath} "
                f"has only {max(available, 0.0):.3f} s there; fix the duration")
    if not tokens:
        return f"transcript {entry.text!r} has no tokens"
    if rules.unk_id is not None and rules.unk_id in tokens:
        unknown = sorted({ch for ch in entry.text if not ch.isspace() and rules.unk_id in tokenize(ch)})
        return (f"transcript has characters the tokenizer cannot encode: {''.join(unknown)!r}; normalise the text "
                "(or train the tokenizer on it)")
    samples = round(min(entry.duration, available) * rules.front_end.sample_rate)
    frames = expected_frames(samples, rules.front_end)
    if frames is not None and frames < 1:
        return f"audio too short ({entry.duration:.3f} s): no encoder frame"
    if frames is not None and len(tokens) > frames * rules.max_symbols_per_frame:
        return (f"{len(tokens)} tokens but only {frames} encoder frames; at most {rules.max_symbols_per_frame} "
                "symbols per frame can be emitted, so no model could produce this transcript (wrong text or audio?)")
    return None


def screened_manifest(path: str | Path, tokenize: Callable[[str], Sequence[int]], rules: ScreenRules,
                      policy: BadInputPolicy) -> list[ManifestEntry]:
    """Read and check a manifest under ``policy``; returns the usable entries in manifest order."""
    entries = read_manifest(path, on_bad_line=policy)
    good = []
    for entry in entries:
        tokens = list(tokenize(entry.text))
        problem = entry_problem(entry, tokens, rules, tokenize)
        if problem is None:
            good.append(entry)
        else:
            policy.reject(entry, problem)
    if not good:
        raise ManifestError(f"manifest {path}: no usable lines ({len(policy.skipped)} skipped, see "
                            f"{policy.side_file})")
    return good


def rules_for(model, front_end: FrontEnd) -> ScreenRules:
    """Screening rules from a NeMo model: its tokenizer's unk id and greedy max symbols per frame."""
    sp = getattr(model.tokenizer, "tokenizer", None)
    unk_id = sp.unk_id() if sp is not None and hasattr(sp, "unk_id") else None
    greedy = (model.cfg.get("decoding") or {}).get("greedy") or {}
    return ScreenRules(front_end=front_end, unk_id=unk_id if unk_id is not None and unk_id >= 0 else None,
                       max_symbols_per_frame=int(greedy.get("max_symbols") or 10))
