"""Several committed stores read as one: train on a transcribed and an untranscribed set at once.

A team dumps its transcribed audio and its untranscribed audio separately (often with different
settings, at different times); copying them into one store would double the disk for nothing. A
``StoreSet`` looks each utterance up in the store that holds it and returns rows in the shapes one
``StoreReader`` does. The stores must agree on what the student's lattice depends on: tokenizer,
vocabulary and front end. Where they differ in what they keep (k, occupancy, CTC rows, TDT duration
rows), the set offers what all of them have: the smallest k (rows are sorted, so the first k are the
top k), and occupancy, CTC rows or duration log-probs only when every store has them. Two TDT stores
must agree on their durations.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from kdstore.errors import StoreError
from kdstore.frames import frame_count_difference
from kdstore.store.meta_v3 import StoreMetadata
from kdstore.store.reader import StoredLabel, StoreReader, UtteranceRows


def split_paths(value: str | Sequence[str] | None) -> list[str]:
    """``a.zarr,b.zarr`` (or a list) -> the paths, in order; empty parts are ignored."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(item).strip() for item in items if str(item).strip()]


class StoreSet:
    """Random access by key to the utterances of one or more stores (``paths``, in order).

    Raises StoreError when two stores hold the same utterance or disagree on tokenizer, vocabulary or
    front end.
    """

    def __init__(self, paths: Sequence[str | os.PathLike]) -> None:
        if not paths:
            raise StoreError("no store given")
        seen: dict[str, str] = {}
        for path in paths:
            resolved = os.path.realpath(str(path)) if "://" not in str(path) else str(path)
            if resolved in seen:
                raise StoreError(f"store {path} is given twice (also as {seen[resolved]}); give each store once")
            seen[resolved] = str(path)
        self.readers = [StoreReader(p) for p in paths]
        first = self.readers[0]
        for reader in self.readers[1:]:
            _check_same_student_view(first, reader)
        self._where: dict[str, tuple[int, int]] = {}
        for s, reader in enumerate(self.readers):
            for i, key in enumerate(reader.keys):
                if key in self._where:
                    other = self.readers[self._where[key][0]].path
                    raise StoreError(f"utterance {key!r} is in both {other} and {reader.path}; each utterance must "
                                     "be in one store (dump each manifest once, or leave one store out)")
                self._where[key] = (s, i)
        self.path = ", ".join(r.path for r in self.readers)
        self.top_k = min(r.metadata.top_k for r in self.readers)
        self.has_ctc = all(r.has_ctc for r in self.readers)
        self.has_occupancy = all(r.has_occupancy for r in self.readers)
        self.has_durations = all(r.has_durations for r in self.readers)

    @property
    def tdt_durations(self) -> tuple[int, ...] | None:
        """The TDT teachers' durations when every store holds duration log-probs (then the same list), else
        None (an RNN-T teacher's store is among them: rows carry no ``duration_logp``)."""
        return self.readers[0].tdt_durations if self.has_durations else None

    @property
    def metadata(self) -> StoreMetadata:
        """The first store's metadata (tokenizer, vocabulary and front end are the same in all)."""
        return self.readers[0].metadata

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def locate(self, key: str) -> tuple[int, int]:
        """(store number, index in that store) of ``key``; StoreError when no store has it."""
        try:
            return self._where[key]
        except KeyError:
            raise StoreError(f"utterance {key!r} is in none of the stores {self.path}; dump the teacher over the "
                             "manifest it comes from (keys are audio_filepath as written, offset and duration)") from None

    def position(self, key: str) -> tuple[int, int, int]:
        """(store, part, index in part): sorting by it puts store neighbours together (batch reads)."""
        s, i = self.locate(key)
        reader = self.readers[s]
        return s, int(reader.part_of[i]), int(reader.index_in_part[i])

    def lattice_size(self, key: str) -> tuple[int, int]:
        """(T, U) stored for ``key``."""
        s, i = self.locate(key)
        reader = self.readers[s]
        part, j = int(reader.part_of[i]), int(reader.index_in_part[i])
        return int(reader.parts[part].frames[j]), int(reader.parts[part].labels[j])

    def label(self, key: str) -> StoredLabel | None:
        """The stored label of ``key`` (``kdstore/2`` stores), None in a ``kdstore/1`` store (whose labels
        are the manifest's transcripts)."""
        s, i = self.locate(key)
        reader = self.readers[s]
        return reader.label(i) if reader.has_labels else None

    def left_out(self, key: str) -> tuple[str, str] | None:
        """(store path, why) when a store's dump labelled ``key`` but left it out on purpose
        (``--min-confidence``, or no words), else None."""
        for reader in self.readers:
            why = reader.left_out.get(key)
            if why is not None:
                return reader.path, why
        return None

    def read_batch(self, keys: Sequence[str], dense: bool = True) -> list[UtteranceRows]:
        """Rows for ``keys`` (few reads per store), in request order, cut to what every store has."""
        by_store: dict[int, list[int]] = {}
        for n, key in enumerate(keys):
            by_store.setdefault(self.locate(key)[0], []).append(n)
        out: list[UtteranceRows | None] = [None] * len(keys)
        for s, positions in by_store.items():
            for n, rows in zip(positions, self.readers[s].read_batch([keys[n] for n in positions], dense), strict=True):
                out[n] = self._common(rows)
        return out  # type: ignore[return-value]

    def _common(self, rows: UtteranceRows) -> UtteranceRows:
        if len(self.readers) == 1:
            return rows
        return dataclasses.replace(
            rows, logp=rows.logp[..., : self.top_k], ids=rows.ids[..., : self.top_k],
            occupancy=rows.occupancy if self.has_occupancy else None,
            duration_logp=rows.duration_logp if self.has_durations else None,
            ctc_logp=rows.ctc_logp if self.has_ctc else None, ctc_ids=rows.ctc_ids if self.has_ctc else None)

    def write_tokenizer(self, out_dir: str | os.PathLike):
        """The teacher's tokenizer (the same in every store) as a NeMo tokenizer folder."""
        return self.readers[0].write_tokenizer(out_dir)


def _check_same_student_view(a: StoreReader, b: StoreReader) -> None:
    """Two stores a student can learn from together: same tokenizer, vocabulary and front end."""
    ma, mb = a.metadata, b.metadata
    checks = (("tokenizer", ma.fingerprint.tokenizer_sha256, mb.fingerprint.tokenizer_sha256),
              ("vocab_size", ma.vocab_size, mb.vocab_size), ("blank_id", ma.blank_id, mb.blank_id))
    for name, x, y in checks:
        if x != y:
            raise StoreError(f"stores {a.path} and {b.path} differ in {name} ({x} vs {y}); a student can learn from "
                             "several stores only when they come from teachers with the same tokenizer")
    if ma.is_tdt and mb.is_tdt and ma.tdt_durations != mb.tdt_durations:
        raise StoreError(f"stores {a.path} and {b.path} come from TDT teachers with different durations "
                         f"({list(ma.tdt_durations or ())} vs {list(mb.tdt_durations or ())}); a TDT student has one "
                         "set of duration outputs: train on stores of one duration set")
    diff = frame_count_difference(ma.front_end, mb.front_end)  # only what changes T (n_mels may differ)
    if diff is not None:
        raise StoreError(f"stores {a.path} and {b.path} were dumped with different front ends ({diff.setting}: "
                         f"{diff.stored} vs {diff.other}); the student sees one front end, so T would differ")

