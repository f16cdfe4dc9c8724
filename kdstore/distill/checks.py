"""Checks, before the first training step, that the student's lattices line up with the store's.

Every stored row is addressed by (utterance, t, u), so the student must see the same T (frames
after its preprocessor and subsampling) and U (tokens) as the teacher did. Catching a mismatch up
front, with the file and line, beats a shape error (or silent garbage) a thousand steps in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from kdstore.errors import IncompatibleStoreError
from kdstore.frames import encoder_frames, frame_count_difference
from kdstore.inputs.manifest import ManifestEntry
from kdstore.store import StoreSet
from kdstore.store.meta_v1 import FrontEnd


def store_front_end_problem(store_path: object, stored: FrontEnd, student: FrontEnd) -> str | None:
    """One line saying why a student with front end ``student`` cannot learn from a store dumped with
    ``stored`` (None: it can). Only what changes the frame count T counts: sample rate, hop
    (``window_stride``), padding rules (``exact_pad``, ``n_fft`` with it) and the subsampling factor,
    decided by computing both front ends' T (:func:`kdstore.frames.frame_count_difference`). Mel features,
    normalisation, window function and ``pad_to`` may differ: the student reads its own features from the
    same audio, and the store's rows are addressed by (t, u) only. A causal (cache-aware) subsampling stack
    on one side only is allowed: it adds one last frame at most (:func:`kdstore.frames.causal_extra_frames`),
    which the KD term pads (:mod:`kdstore.distill.delay`)."""
    diff = frame_count_difference(stored, replace(student, causal_downsampling=stored.causal_downsampling))
    if diff is None:
        return None
    where = ("model.sample_rate (model.preprocessor.sample_rate)" if diff.setting == "sample_rate"
             else f"model.{diff.section}.{diff.setting}")
    shown = "" if diff.samples is None else (
        f" ({diff.samples} samples: T={diff.stored_frames} in the store, {diff.other_frames} for the student)")
    why = ("the audio is read at another rate, so T differs" if diff.setting == "sample_rate" else "the frame count T differs")
    return (f"store {store_path} was dumped with {diff.setting}={diff.stored} but the student has {diff.other}: {why}"
            f"{shown}; set {where}={diff.stored}")


def _num_samples(entry: ManifestEntry, sample_rate: int) -> int:
    import soundfile

    info = soundfile.info(str(entry.audio_path))
    available = info.frames - round(entry.offset * info.samplerate)
    wanted = round(entry.duration * info.samplerate) if entry.duration else available
    samples = min(available, wanted)
    return samples if info.samplerate == sample_rate else round(samples * sample_rate / info.samplerate)


def stored_label_ids(store: StoreSet, entry: ManifestEntry) -> list[int] | None:
    """The token ids ``entry`` trains on when the store decides them: its stored label if that is the
    teacher's (the lattice was forced on it) or the line has no text; None: the transcript's tokens."""
    label = store.label(entry.key) if entry.key in store else None
    if label is not None and (label.source == "teacher" or not entry.text):
        return [int(i) for i in label.ids]
    return None


def check_alignment_upfront(entries: Sequence[ManifestEntry], tokenize: Callable[[str], Sequence[int]],
                            store: StoreSet, front_end: FrontEnd) -> dict[str, list[int]]:
    """Raise IncompatibleStoreError naming the first utterance whose key, label, U or T disagrees.

    Returns the token ids each entry trains on: the store's label where the store keeps one (the path its
    lattice was forced on: the teacher's hypothesis for an untranscribed line), else the transcript's
    tokens. A person label must equal the manifest transcript's tokens (same text, same tokenizer).
    """
    labels: dict[str, list[int]] = {}
    for entry in entries:
        if entry.key not in store:
            raise IncompatibleStoreError(
                f"{entry.where}: utterance {entry.key!r} is not in store {store.path}; dump the teacher over "
                "this manifest (keys are audio_filepath as written, offset and duration)")
        stored_t, stored_u = store.lattice_size(entry.key)
        label = store.label(entry.key)
        tokens = stored_label_ids(store, entry)
        if tokens is None:
            tokens = list(tokenize(entry.text))
            if label is not None and tokens != [int(i) for i in label.ids]:
                raise IncompatibleStoreError(
                    f"{entry.where}: the transcript gives other tokens than the store's label {label.text!r}; the "
                    "manifest text changed since the dump, or another tokenizer is used: re-dump, or train with the "
                    "store's tokenizer (leave model.tokenizer.dir unset)")
        if len(tokens) != stored_u:
            raise IncompatibleStoreError(
                f"{entry.where}: the student's tokenizer gives {len(tokens)} tokens, the store has U={stored_u}; "
                "train with the store's tokenizer (leave model.tokenizer.dir unset) and the same transcript")
        frames = encoder_frames(_num_samples(entry, front_end.sample_rate), front_end)
        if frames is not None and frames != stored_t:
            raise IncompatibleStoreError(
                f"{entry.where}: the student would see T={frames} encoder frames, the store has T={stored_t}; "
                "the audio or the front end differs from the dump (same files, preprocessor, subsampling)")
        labels[entry.key] = tokens
    return labels
