"""Read utterances' teacher rows from a committed ``kdstore/1``, ``/2`` or ``/3`` store (Zarr or HDF5).

Rows come back either dense in lattice coordinates (T, U+1, k), with a ``stored`` mask saying
which nodes the store kept (all of them for full stores), or as the band itself (T, W', k) with
its per-frame starts. The reader pickles without open handles, so one object can be handed to
forked or spawned DataLoader workers: each reopens the store on first use.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kdstore.errors import StoreError
from kdstore.store import layout
from kdstore.store.backend import Source, TensorstoreRows, is_hdf5
from kdstore.store.band import band_mask, scatter_band
from kdstore.store.meta_v3 import LABEL_SOURCES, StoreMetadata


@dataclass(frozen=True)
class UtteranceRows:
    """One utterance's stored teacher rows. Dense: node (t, u) is ``[t, u]``; band: ``[t, u - s_t]``."""

    key: str
    num_frames: int
    num_labels: int
    band_start: np.ndarray  # (T,) int32, s_t
    logp: np.ndarray  # (T, U+1, k) dense or (T, W', k) band; sorted descending
    ids: np.ndarray  # same leading shape, vocabulary ids (blank = V)
    blank_label: np.ndarray  # (..., 2): log p(blank), log p(next token); masked at u = U
    stored: np.ndarray | None  # (T, U+1) bool in dense form: which nodes the store kept
    occupancy: np.ndarray | None = None
    ctc_logp: np.ndarray | None = None  # (T, k_ctc): a hybrid teacher's CTC top-k per frame (--ctc stores)
    ctc_ids: np.ndarray | None = None
    # TDT stores: log P(durations[i] | t, u) per node, (T, U+1, D) dense or (T, W', D) band; nats, sums to 1
    duration_logp: np.ndarray | None = None

    @property
    def is_dense(self) -> bool:
        return self.stored is not None


@dataclass(frozen=True)
class StoredLabel:
    """The label utterance ``key``'s lattice was forced on (``kdstore/2`` stores)."""

    key: str
    ids: np.ndarray  # (U,) int64 token ids
    text: str
    source: str  # "person" (the manifest's transcript) or "teacher" (its own hypothesis)
    confidence: float  # log P(label | audio) / max(U, 1) under the teacher, nats per token (<= 0)


@dataclass(frozen=True)
class _PartLabels:
    label_offset: np.ndarray
    ids: np.ndarray
    text_offset: np.ndarray
    text_bytes: bytes
    source: np.ndarray
    confidence: np.ndarray


@dataclass(frozen=True)
class _PartIndex:
    frames: np.ndarray
    labels: np.ndarray
    node_offset: np.ndarray
    frame_offset: np.ndarray


def _keys(source: Source, bytes_name: str, offset_name: str) -> list[str]:
    offsets = np.asarray(source.array(offset_name)[:])
    payload = np.asarray(source.array(bytes_name)[:]).tobytes()
    return layout.decode_keys(offsets, payload)


def _coalesce(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merge touching or overlapping [a, b) ranges (sorted by start) into spans."""
    spans: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if spans and a <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], b))
        else:
            spans.append((a, b))
    return spans


class StoreReader:
    """Random access to utterance rows by index or key."""

    def __init__(self, path: str | os.PathLike, backend: str = "zarr") -> None:
        """``backend``: "zarr" (zarr-python or h5py, the default) or "tensorstore" (optional, faster)."""
        self.path = str(path)
        self._source = Source(self.path)
        if backend not in ("zarr", "tensorstore"):
            raise StoreError(f"unknown reader backend {backend!r}; use 'zarr' or 'tensorstore'")
        self._fast = TensorstoreRows(self.path) if backend == "tensorstore" and not is_hdf5(self.path) else None
        self.metadata = StoreMetadata.from_json(self._source.metadata_json, store=self.path)
        source = self._source
        self.keys = _keys(source, layout.KEY_BYTES, layout.KEY_OFFSET)
        self.part_of = np.asarray(source.array(layout.UTT_PART)[:])
        self.index_in_part = np.asarray(source.array(layout.UTT_INDEX_IN_PART)[:])
        self._index = {key: i for i, key in enumerate(self.keys)}
        self.parts: dict[int, _PartIndex] = {}
        for part in sorted(set(self.part_of.tolist())):
            base = layout.part_name(part)
            self.parts[part] = _PartIndex(*(np.asarray(source.array(f"{base}/{name}")[:]) for name in
                                            (layout.FRAMES, layout.LABELS, layout.NODE_OFFSET, layout.FRAME_OFFSET)))
        first = layout.part_name(next(iter(self.parts))) if self.parts else ""
        self.has_occupancy = bool(self.parts) and source.has(f"{first}/{layout.OCCUPANCY}")
        self.has_ctc = bool(self.parts) and source.has(f"{first}/{layout.CTC_LOGP}")
        self.has_durations = self.metadata.is_tdt
        self._labels: dict[int, _PartLabels] = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_labels"] = {}  # re-read on demand in a worker
        return state

    @property
    def tdt_durations(self) -> tuple[int, ...] | None:
        """A TDT teacher's durations (frames; column i of ``duration_logp`` is ``durations[i]``), or None
        for an RNN-T teacher's store."""
        return self.metadata.tdt_durations

    @property
    def has_labels(self) -> bool:
        """True for ``kdstore/2`` stores: each utterance's label is stored (``label``)."""
        return self.metadata.has_labels

    def _part_labels(self, part: int) -> _PartLabels:
        if part not in self._labels:
            base = layout.part_name(part)
            read = lambda name: np.asarray(self._source.array(f"{base}/{name}")[:])
            self._labels[part] = _PartLabels(read(layout.LABEL_OFFSET), read(layout.LABEL_IDS).astype(np.int64),
                                             read(layout.TEXT_OFFSET), read(layout.TEXT_BYTES).tobytes(),
                                             read(layout.LABEL_SOURCE), read(layout.CONFIDENCE))
        return self._labels[part]

    def label(self, index: int) -> StoredLabel:
        """The stored label of utterance ``index``. Raises StoreError for a ``kdstore/1`` store (its labels
        are the manifest's transcripts)."""
        if not self.has_labels:
            raise StoreError(f"store {self.path} is {self.metadata.format}: it holds no labels (they are the "
                             "manifest's transcripts); re-dump with this kdstore to store them")
        part, j = int(self.part_of[index]), int(self.index_in_part[index])
        p = self._part_labels(part)
        ids = p.ids[int(p.label_offset[j]) : int(p.label_offset[j + 1])]
        text = p.text_bytes[int(p.text_offset[j]) : int(p.text_offset[j + 1])].decode("utf-8")
        return StoredLabel(self.keys[index], ids, text, LABEL_SOURCES[int(p.source[j])], float(p.confidence[j]))

    @property
    def left_out(self) -> dict[str, str]:
        """key -> why ("low_confidence" | "empty_label") of the utterances the dump labelled but left
        out on purpose (``kdstore/2``; empty for ``kdstore/1``)."""
        if "_left_out" not in self.__dict__:
            found: dict[str, str] = {}
            if self.has_labels and self._source.has(layout.LEFT_OUT_KIND):
                names = {code: name for name, code in layout.LEFT_OUT_CODES.items()}
                kinds = np.asarray(self._source.array(layout.LEFT_OUT_KIND)[:])
                keys = _keys(self._source, layout.LEFT_OUT_KEY_BYTES, layout.LEFT_OUT_KEY_OFFSET)
                found = {key: names[int(kind)] for key, kind in zip(keys, kinds, strict=True)}
            self.__dict__["_left_out"] = found
        return self.__dict__["_left_out"]

    def label_of(self, key: str) -> StoredLabel:
        """:meth:`label` by key (StoreError for a key not in the store)."""
        return self.label(self.index_of(key))

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    @property
    def frames(self) -> np.ndarray:
        """T per utterance, in index order."""
        return np.array([self.parts[p].frames[j] for p, j in zip(self.part_of, self.index_in_part, strict=True)])

    @property
    def labels(self) -> np.ndarray:
        return np.array([self.parts[p].labels[j] for p, j in zip(self.part_of, self.index_in_part, strict=True)])

    def index_of(self, key: str) -> int:
        try:
            return self._index[key]
        except KeyError:
            raise StoreError(
                f"utterance {key!r} is not in store {self.path}; dump the teacher over the same manifest "
                "(keys are audio_filepath as written, offset and duration)"
            ) from None

    def locate(self, index: int) -> tuple[int, int, int, int, int]:
        """(part, node start, node stop, frame start, frame stop) of utterance ``index``."""
        part, j = int(self.part_of[index]), int(self.index_in_part[index])
        p = self.parts[part]
        return part, int(p.node_offset[j]), int(p.node_offset[j + 1]), int(p.frame_offset[j]), int(p.frame_offset[j + 1])

    def _read_ranges(self, name: str, ranges: list[tuple[int, int]]) -> list[np.ndarray]:
        """Rows [a, b) for each range, in as few store calls as the backend allows.

        zarr-python pays ~0.5 ms per call, so a batch is fetched with one orthogonal selection per
        array (its chunks are then fetched concurrently); h5py calls are cheap, so it reads slices.
        """
        if self._fast is not None:
            return self._fast.read_ranges(name, ranges)
        array = self._source.array(name)
        spans = _coalesce(ranges)
        if len(spans) == 1:  # store neighbours (StoreOrderBatchSampler): one slice read for the batch
            lo, hi = spans[0]
            data = np.asarray(array[lo:hi])
            return [data[a - lo : b - lo] for a, b in ranges]
        if not hasattr(array, "oindex"):
            return [np.asarray(array[a:b]) for a, b in ranges]
        index = np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in ranges])
        data = np.asarray(array.oindex[index]) if index.size else np.asarray(array[0:0])
        bounds = np.cumsum([0] + [b - a for a, b in ranges])
        return [data[bounds[i] : bounds[i + 1]] for i in range(len(ranges))]

    def _read_many(self, indices: list[int], dense: bool) -> dict[int, UtteranceRows]:
        """Rows of several utterances of possibly several parts, a few calls per part and array."""
        out: dict[int, UtteranceRows] = {}
        by_part: dict[int, list[int]] = {}
        for i in indices:
            by_part.setdefault(int(self.part_of[i]), []).append(i)
        for part, members in by_part.items():
            members.sort(key=lambda i: int(self.index_in_part[i]))
            spans = [self.locate(i) for i in members]
            base = layout.part_name(part)
            node_ranges = [(n0, n1) for _, n0, n1, _, _ in spans]
            arrays = {name: self._read_ranges(f"{base}/{name}", node_ranges)
                      for name in (layout.LOGP, layout.IDS, layout.BLANK_LABEL)
                      + ((layout.OCCUPANCY,) if self.has_occupancy else ())
                      + ((layout.DURATION_LOGP,) if self.has_durations else ())}
            frame_ranges = [(f0, f1) for _, _, _, f0, f1 in spans]
            starts = self._read_ranges(f"{base}/{layout.BAND_START}", frame_ranges)
            ctc = {name: self._read_ranges(f"{base}/{name}", frame_ranges)
                   for name in ((layout.CTC_LOGP, layout.CTC_IDS) if self.has_ctc else ())}
            for n, i in enumerate(members):
                j = int(self.index_in_part[i])
                rows = self._assemble(i, int(self.parts[part].frames[j]), int(self.parts[part].labels[j]),
                                      starts[n], {name: rows[n] for name, rows in arrays.items()}, dense)
                if ctc:
                    rows = dataclasses.replace(rows, ctc_logp=np.asarray(ctc[layout.CTC_LOGP][n]),
                                               ctc_ids=np.asarray(ctc[layout.CTC_IDS][n]))
                out[i] = rows
        return out

    def _assemble(self, index: int, frames: int, labels: int, band_start: np.ndarray, rows: dict[str, np.ndarray],
                  dense: bool) -> UtteranceRows:
        width = rows[layout.LOGP].shape[0] // frames
        logp = rows[layout.LOGP].reshape(frames, width, -1)
        ids = rows[layout.IDS].reshape(frames, width, -1)
        blank_label = rows[layout.BLANK_LABEL].reshape(frames, width, 2)
        occupancy = rows[layout.OCCUPANCY].reshape(frames, width) if layout.OCCUPANCY in rows else None
        durations = rows[layout.DURATION_LOGP].reshape(frames, width, -1) if layout.DURATION_LOGP in rows else None
        stored = None
        if dense:
            if width == labels + 1:
                stored = np.ones((frames, labels + 1), dtype=bool)
            else:
                logp = scatter_band(logp, band_start, labels)
                ids = scatter_band(ids, band_start, labels)
                blank_label = scatter_band(blank_label, band_start, labels)
                occupancy = scatter_band(occupancy, band_start, labels) if occupancy is not None else None
                durations = scatter_band(durations, band_start, labels) if durations is not None else None
                stored = band_mask(band_start, width, labels)
        return UtteranceRows(self.keys[index], frames, labels, band_start, logp, ids, blank_label, stored, occupancy,
                             duration_logp=durations)

    def read(self, index: int, dense: bool = True) -> UtteranceRows:
        """Rows of utterance ``index``: dense lattice with a ``stored`` mask, or the band as stored."""
        return self._read_many([index], dense)[index]

    def read_key(self, key: str, dense: bool = True) -> UtteranceRows:
        return self.read(self.index_of(key), dense)

    def read_batch(self, keys: Sequence[str], dense: bool = True) -> list[UtteranceRows]:
        """Rows for several keys, read in storage order with few calls, returned in request order."""
        indices = [self.index_of(key) for key in keys]
        rows = self._read_many(sorted(set(indices)), dense)
        return [rows[i] for i in indices]

    def tokenizer_files(self) -> dict[str, bytes]:
        """The teacher's tokenizer files, copied into the store at dump time."""
        return {name: np.asarray(self._source.array(f"{layout.TOKENIZER_GROUP}/{name}")[:]).tobytes()
                for name in self._source.children(layout.TOKENIZER_GROUP)}

    def write_tokenizer(self, out_dir: str | os.PathLike):
        """Materialise the stored tokenizer as a NeMo tokenizer dir (tokenizer.model, vocab.txt)."""
        from pathlib import Path

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, payload in self.tokenizer_files().items():
            (out / name).write_bytes(payload)
        return out
