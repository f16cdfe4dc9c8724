"""Checks, before the first training step, that the student's lattices line up with the store's.

Every stored row is addressed by (utterance, t, u), so the student must see the same T (frames
after its preprocessor and subsampling) and U (tokens) as the teacher did. Catching a mismatch up
front, with the file and line, beats a shape error (or silent garbage) a thousand steps in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kdstore.errors import IncompatibleStoreError
from kdstore.frames import encoder_frames
from kdstore.inputs.manifest import ManifestEntry
from kdstore.store import StoreReader
from kdstore.store.meta_v1 import FrontEnd


def _num_samples(entry: ManifestEntry, sample_rate: int) -> int:
    import soundfile

    info = soundfile.info(str(entry.audio_path))
    available = info.frames - round(entry.offset * info.samplerate)
    wanted = round(entry.duration * info.samplerate) if entry.duration else available
    samples = min(available, wanted)
    return samples if info.samplerate == sample_rate else round(samples * sample_rate / info.samplerate)


def check_alignment_upfront(entries: Sequence[ManifestEntry], tokenize: Callable[[str], Sequence[int]],
                            store: StoreReader, front_end: FrontEnd) -> None:
    """Raise IncompatibleStoreError naming the first utterance whose key, U or T disagrees."""
    for entry in entries:
        if entry.key not in store:
            raise IncompatibleStoreError(
                f"{entry.where}: utterance {entry.key!r} is not in store {store.path}; dump the teacher over "
                "this manifest (keys are audio_filepath as written, offset and duration)")
        index = store.index_of(entry.key)
        part, j = int(store.part_of[index]), int(store.index_in_part[index])
        stored_u = int(store.parts[part].labels[j])
        stored_t = int(store.parts[part].frames[j])
        tokens = len(tokenize(entry.text))
        if tokens != stored_u:
            raise IncompatibleStoreError(
                f"{entry.where}: the student's tokenizer gives {tokens} tokens, the store has U={stored_u}; "
                "train with the store's tokenizer (leave model.tokenizer.dir unset) and the same transcript")
        frames = encoder_frames(_num_samples(entry, front_end.sample_rate), front_end)
        if frames is not None and frames != stored_t:
            raise IncompatibleStoreError(
                f"{entry.where}: the student would see T={frames} encoder frames, the store has T={stored_t}; "
                "the audio or the front end differs from the dump (same files, preprocessor, subsampling)")
