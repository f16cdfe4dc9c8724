"""One writer's part of a store: append utterances, commit progress, resume after a crash.

Rows are buffered and written, everything buffered at once, whenever a shard's worth of rows or frames
is waiting or ``commit_seconds`` (10) have passed since the last commit; then the utterances whose rows
are on disk are *committed*: their index entries are appended and only then the part's progress
attribute is advanced (one write). A new part gets its progress record (0 utterances) as the last step
of its creation. A crash therefore loses at most the uncommitted tail (a few seconds of work), and
``resume=True`` truncates the arrays back to the committed prefix and carries on; a part that never
got its progress record holds nothing committed and is created again. docs/store-format.md, "Writing".
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import zarr

from kdstore.errors import StoreError
from kdstore.store import layout


@dataclass
class _Pending:
    key: str
    frames: int
    labels: int
    rows: int
    label: Label | None = None
    occupancy_sum: float | None = None  # TDT parts: expected visited nodes of the full lattice


@dataclass(frozen=True)
class Label:
    """The label an utterance's lattice was forced on (``kdstore/2``): token ids (U,), text, where it came
    from (``layout.SOURCE_CODES``: "person" or "teacher") and the teacher's confidence in it
    (log P(label | audio) / max(U, 1), nats per token)."""

    ids: np.ndarray
    text: str
    source: str
    confidence: float


COMMIT_SECONDS = 10.0  # longest time buffered utterances wait for a commit (the work a crash can lose)


class PartWriter:
    """Writes ``parts/<part>`` of the store rooted at ``root`` (an open, writable Zarr group)."""

    def __init__(self, root: zarr.Group, part: int, *, top_k: int, vocab_size: int, value_dtype: str,
                 with_occupancy: bool = False, ctc_top_k: int | None = None, resume: bool = False,
                 chunk_rows: int | None = None, with_labels: bool = True,
                 commit_seconds: float = COMMIT_SECONDS, flush_rows: int | None = None,
                 num_durations: int | None = None) -> None:
        """``with_labels``: store each utterance's label (``kdstore/2``); False writes the ``kdstore/1``
        arrays only (kept for tests and converters of old stores). ``num_durations``: D of a TDT teacher
        (``kdstore/3``): every row also gets its D duration log-probs (``node/duration_logp``) and every
        utterance its ``utt/occupancy_sum``; None for RNN-T teachers. ``commit_seconds``: commit what is
        buffered at the first utterance added this long (wall seconds) after the last commit; 0 commits
        every utterance. ``flush_rows``: also commit once this many rows (or frames) are buffered (None:
        one shard, ``chunk_rows * layout.CHUNKS_PER_SHARD``; it bounds the buffer's memory). Raises
        StoreError when the part to resume was written by another version."""
        self.part = part
        self.with_labels = with_labels
        self.top_k = top_k
        self.value_dtype = np.dtype(value_dtype)
        self.id_dtype = layout.id_dtype_for(vocab_size)
        self.with_occupancy = with_occupancy
        self.ctc_top_k = ctc_top_k
        if num_durations is not None and num_durations < 1:
            raise StoreError(f"num_durations must be >= 1 for a TDT part, got {num_durations}")
        self.num_durations = num_durations
        name = layout.part_name(part)
        progress: dict = {}
        if resume and name in root:
            self.group = root[name]
            progress = dict(self.group.attrs.get(layout.PART_PROGRESS_ATTR, {}))
            # No progress record: the dump stopped before this part's creation finished, so nothing in it
            # is committed and it is simply created again below.
            if progress and (layout.LABEL_SOURCE in self.group) != with_labels:
                raise StoreError(f"part {name} was written by another kdstore version; dump again with --overwrite")
            if progress and (layout.DURATION_LOGP in self.group) != (num_durations is not None):
                raise StoreError(f"part {name} was written for another teacher kind (TDT or RNN-T); dump again with "
                                 "--overwrite")
        if not progress:
            self.group = root.create_group(name, overwrite=True)
            progress = {"utterances": 0, "nodes": 0, "frames": 0, "complete": False}
            self._create_arrays(chunk_rows or layout.node_chunk_rows(top_k, self.value_dtype))
            self.group.attrs[layout.PART_PROGRESS_ATTR] = progress  # last: the part now exists
        self._chunk_rows = self.group[layout.LOGP].chunks[0]
        self.flush_rows = flush_rows or self._chunk_rows * layout.CHUNKS_PER_SHARD
        self.commit_seconds = commit_seconds
        self._last_commit = time.monotonic()
        self.committed_utterances = int(progress["utterances"])
        self.committed_nodes = int(progress["nodes"])
        self.committed_frames = int(progress["frames"])
        self.complete = bool(progress.get("complete", False))
        self._truncate_to_committed()
        self.committed_keys = self._read_keys()
        self._written_rows = self.committed_nodes
        self._written_frames = self.committed_frames
        self._buffers: dict[str, list[np.ndarray]] = {n: [] for n in self._row_arrays() + self._frame_arrays()}
        self._buffered_rows = 0
        self._buffered_frames = 0
        self._pending: list[_Pending] = []

    # -- creation / resume -------------------------------------------------------------------
    def _row_arrays(self) -> tuple[str, ...]:
        return (layout.NODE_ARRAYS + ((layout.OCCUPANCY,) if self.with_occupancy else ())
                + ((layout.DURATION_LOGP,) if self.num_durations else ()))

    def _frame_arrays(self) -> tuple[str, ...]:
        return (layout.BAND_START,) + ((layout.CTC_LOGP, layout.CTC_IDS) if self.ctc_top_k else ())

    def _create_arrays(self, chunk_rows: int) -> None:
        shard_rows = chunk_rows * layout.CHUNKS_PER_SHARD
        specs = {
            layout.LOGP: ((self.top_k,), self.value_dtype),
            layout.IDS: ((self.top_k,), self.id_dtype),
            layout.BLANK_LABEL: ((2,), self.value_dtype),
        }
        if self.with_occupancy:
            specs[layout.OCCUPANCY] = ((), np.dtype(np.float16))
        if self.num_durations:
            specs[layout.DURATION_LOGP] = ((self.num_durations,), self.value_dtype)
        for name, (width, dtype) in specs.items():
            self.group.create_array(name, shape=(0, *width), chunks=(chunk_rows, *width),
                                    shards=(shard_rows, *width), dtype=dtype, compressors=layout.compressors(),
                                    fill_value=0)
        # Frames: ~4x fewer than rows; same shard-aligned buffering, in frame units.
        self.group.create_array(layout.BAND_START, shape=(0,), chunks=(chunk_rows,), shards=(shard_rows,),
                                dtype=np.int32, compressors=layout.compressors(), fill_value=0)
        if self.ctc_top_k:
            for name, dtype in ((layout.CTC_LOGP, self.value_dtype), (layout.CTC_IDS, self.id_dtype)):
                self.group.create_array(name, shape=(0, self.ctc_top_k), chunks=(chunk_rows, self.ctc_top_k),
                                        shards=(shard_rows, self.ctc_top_k), dtype=dtype,
                                        compressors=layout.compressors(), fill_value=0)
        for name, dtype in ((layout.KEY_BYTES, np.uint8), (layout.KEY_OFFSET, np.int64), (layout.FRAMES, np.int32),
                            (layout.LABELS, np.int32), (layout.NODE_OFFSET, np.int64),
                            (layout.FRAME_OFFSET, np.int64)):
            self.group.create_array(name, shape=(0,), chunks=(layout.INDEX_CHUNK,), dtype=dtype,
                                    compressors=layout.compressors(), fill_value=0)
        offsets = [layout.KEY_OFFSET, layout.NODE_OFFSET, layout.FRAME_OFFSET]
        if self.with_labels:
            for name, dtype in ((layout.LABEL_OFFSET, np.int64), (layout.LABEL_IDS, self.id_dtype),
                                (layout.TEXT_OFFSET, np.int64), (layout.TEXT_BYTES, np.uint8),
                                (layout.LABEL_SOURCE, np.uint8), (layout.CONFIDENCE, np.float32)):
                self.group.create_array(name, shape=(0,), chunks=(layout.INDEX_CHUNK,), dtype=dtype,
                                        compressors=layout.compressors(), fill_value=0)
            offsets += [layout.LABEL_OFFSET, layout.TEXT_OFFSET]
        if self.num_durations:
            self.group.create_array(layout.OCCUPANCY_SUM, shape=(0,), chunks=(layout.INDEX_CHUNK,), dtype=np.float32,
                                    compressors=layout.compressors(), fill_value=0)
        for name in offsets:
            self._append(name, np.zeros(1, dtype=np.int64))

    def _append(self, name: str, data: np.ndarray) -> None:
        array = self.group[name]
        start = array.shape[0]
        array.resize((start + data.shape[0], *array.shape[1:]))
        array[start:] = data

    def _truncate_to_committed(self) -> None:
        """Drop rows/frames/index entries written after the last commit (a crash's leftovers)."""
        n = self.committed_utterances
        key_end = int(self.group[layout.KEY_OFFSET][n]) if self.group[layout.KEY_OFFSET].shape[0] > n else 0
        sizes = {layout.FRAMES: n, layout.LABELS: n, layout.KEY_OFFSET: n + 1, layout.NODE_OFFSET: n + 1,
                 layout.FRAME_OFFSET: n + 1, layout.KEY_BYTES: key_end}
        if self.with_labels:
            sizes.update({layout.LABEL_SOURCE: n, layout.CONFIDENCE: n, layout.LABEL_OFFSET: n + 1,
                          layout.TEXT_OFFSET: n + 1, layout.LABEL_IDS: self._offset_at(layout.LABEL_OFFSET, n),
                          layout.TEXT_BYTES: self._offset_at(layout.TEXT_OFFSET, n)})
        if self.num_durations:
            sizes[layout.OCCUPANCY_SUM] = n
        sizes.update({name: self.committed_frames for name in self._frame_arrays()})
        sizes.update({name: self.committed_nodes for name in self._row_arrays()})
        for name, size in sizes.items():
            array = self.group[name]
            if array.shape[0] != size:
                array.resize((size, *array.shape[1:]))

    def _offset_at(self, name: str, n: int) -> int:
        array = self.group[name]
        return int(array[n]) if array.shape[0] > n else 0

    def _read_keys(self) -> list[str]:
        offsets = np.asarray(self.group[layout.KEY_OFFSET][:])
        payload = np.asarray(self.group[layout.KEY_BYTES][:]).tobytes()
        return layout.decode_keys(offsets, payload)

    # -- appending ---------------------------------------------------------------------------
    def add_utterance(self, key: str, *, frames: int, labels: int, band_start: np.ndarray, logp: np.ndarray,
                      ids: np.ndarray, blank_label: np.ndarray, occupancy: np.ndarray | None = None,
                      ctc_logp: np.ndarray | None = None, ctc_ids: np.ndarray | None = None,
                      label: Label | None = None, duration_logp: np.ndarray | None = None,
                      occupancy_sum: float | None = None) -> None:
        """Append one utterance's rows (rows = frames * W', frame-major) and, in a ``kdstore/2`` part,
        the ``label`` (U ids) they were forced on. A TDT part (``num_durations`` = D) also takes
        ``duration_logp`` (rows, D) and ``occupancy_sum`` (the sum of the utterance's node occupancy over
        its full lattice). Shapes are checked (StoreError)."""
        if self.complete:
            raise StoreError(f"part {self.part} is complete; it cannot take more utterances")
        if self.with_labels:
            if label is None or np.asarray(label.ids).shape != (labels,) or label.source not in layout.SOURCE_CODES:
                raise StoreError(f"utterance {key!r}: a label of U={labels} ids with source person|teacher is required")
        elif label is not None:
            raise StoreError(f"utterance {key!r}: this part was opened without labels (kdstore/1)")
        rows = logp.shape[0]
        if (logp.shape[1:] != (self.top_k,) or ids.shape != logp.shape or blank_label.shape != (rows, 2)
                or band_start.shape != (frames,) or rows % max(frames, 1) or frames <= 0):
            raise StoreError(f"utterance {key!r}: inconsistent shapes logp {logp.shape}, ids {ids.shape}, "
                             f"blank_label {blank_label.shape}, band_start {band_start.shape} for T={frames}")
        if (occupancy is not None) != self.with_occupancy:
            raise StoreError(f"utterance {key!r}: occupancy given={occupancy is not None}, part expects "
                             f"{self.with_occupancy}")
        if self.num_durations:
            if duration_logp is None or duration_logp.shape != (rows, self.num_durations) or occupancy_sum is None:
                got = None if duration_logp is None else duration_logp.shape
                raise StoreError(f"utterance {key!r}: a TDT part needs duration_logp of shape {(rows, self.num_durations)} "
                                 f"(got {got}) and occupancy_sum")
            self._buffers[layout.DURATION_LOGP].append(duration_logp.astype(self.value_dtype, copy=False))
        elif duration_logp is not None or occupancy_sum is not None:
            raise StoreError(f"utterance {key!r}: duration log-probs given to a part opened for an RNN-T teacher")
        self._buffers[layout.LOGP].append(logp.astype(self.value_dtype, copy=False))
        self._buffers[layout.IDS].append(ids.astype(self.id_dtype, copy=False))
        self._buffers[layout.BLANK_LABEL].append(blank_label.astype(self.value_dtype, copy=False))
        if occupancy is not None:
            self._buffers[layout.OCCUPANCY].append(occupancy.astype(np.float16, copy=False))
        self._buffers[layout.BAND_START].append(band_start.astype(np.int32, copy=False))
        if self.ctc_top_k:
            if ctc_logp is None or ctc_ids is None or ctc_logp.shape != (frames, self.ctc_top_k) or ctc_ids.shape != ctc_logp.shape:
                raise StoreError(f"utterance {key!r}: CTC rows must be ({frames}, {self.ctc_top_k}) log-probs and ids")
            self._buffers[layout.CTC_LOGP].append(ctc_logp.astype(self.value_dtype, copy=False))
            self._buffers[layout.CTC_IDS].append(ctc_ids.astype(self.id_dtype, copy=False))
        self._buffered_rows += rows
        self._buffered_frames += frames
        self._pending.append(_Pending(key, frames, labels, rows, label, occupancy_sum))
        if (self._buffered_rows >= self.flush_rows or self._buffered_frames >= self.flush_rows
                or time.monotonic() - self._last_commit >= self.commit_seconds):
            self.flush()

    @property
    def _shard_rows(self) -> int:
        """Old name of :attr:`flush_rows` (tests set it to flush often)."""
        return self.flush_rows

    @_shard_rows.setter
    def _shard_rows(self, rows: int) -> None:
        self.flush_rows = rows

    def flush(self) -> None:
        """Write every buffered row and frame, then commit the utterances they complete (all of them)."""
        self._write_buffer(self._row_arrays(), rows=True)
        self._write_buffer(self._frame_arrays(), rows=False)
        self._commit()
        self._last_commit = time.monotonic()

    def _write_buffer(self, names: tuple[str, ...], rows: bool) -> None:
        """Append the buffered rows (or frames) to their arrays. The first chunk written may already hold
        committed rows: Zarr rewrites it, and its shard, whole, which the crash-safe store makes atomic. That
        costs at most ~0.16 s per commit (a full shard, 2 CPU cores): under 2% of the writer thread at one
        commit per 10 s."""
        start = self._written_rows if rows else self._written_frames
        count = self._buffered_rows if rows else self._buffered_frames
        if count <= 0:
            return
        stop = start + count
        for name in names:
            block = np.concatenate(self._buffers[name], axis=0)
            array = self.group[name]
            array.resize((stop, *array.shape[1:]))
            array[start:stop] = block
            self._buffers[name] = []
        if rows:
            self._written_rows, self._buffered_rows = stop, 0
        else:
            self._written_frames, self._buffered_frames = stop, 0

    def _commit(self) -> None:
        """Append index entries of fully written utterances, then advance the progress attribute."""
        done: list[_Pending] = []
        nodes, frames = self.committed_nodes, self.committed_frames
        for item in self._pending:
            if nodes + item.rows > self._written_rows or frames + item.frames > self._written_frames:
                break
            nodes += item.rows
            frames += item.frames
            done.append(item)
        if not done:
            return
        self._pending = self._pending[len(done):]
        encoded = [item.key.encode("utf-8") for item in done]
        key_end = int(self.group[layout.KEY_OFFSET][-1])
        self._append(layout.KEY_BYTES, np.frombuffer(b"".join(encoded), dtype=np.uint8))
        self._append(layout.KEY_OFFSET, key_end + np.cumsum([len(b) for b in encoded], dtype=np.int64))
        self._append(layout.FRAMES, np.array([d.frames for d in done], dtype=np.int32))
        self._append(layout.LABELS, np.array([d.labels for d in done], dtype=np.int32))
        self._append(layout.NODE_OFFSET, self.committed_nodes + np.cumsum([d.rows for d in done], dtype=np.int64))
        self._append(layout.FRAME_OFFSET, self.committed_frames + np.cumsum([d.frames for d in done], dtype=np.int64))
        if self.with_labels:
            self._commit_labels([d.label for d in done])  # type: ignore[misc]
        if self.num_durations:
            self._append(layout.OCCUPANCY_SUM, np.array([d.occupancy_sum for d in done], dtype=np.float32))
        self.committed_utterances += len(done)
        self.committed_nodes, self.committed_frames = nodes, frames
        self.committed_keys.extend(d.key for d in done)
        self._save_progress(complete=False)

    def _commit_labels(self, labels: list[Label]) -> None:
        """Append the labels of utterances being committed (before the progress record moves)."""
        ids = [np.asarray(label.ids, dtype=self.id_dtype) for label in labels]
        texts = [label.text.encode("utf-8") for label in labels]
        label_end = int(self.group[layout.LABEL_OFFSET][-1])
        text_end = int(self.group[layout.TEXT_OFFSET][-1])
        self._append(layout.LABEL_IDS, np.concatenate(ids) if ids else np.zeros(0, dtype=self.id_dtype))
        self._append(layout.LABEL_OFFSET, label_end + np.cumsum([len(i) for i in ids], dtype=np.int64))
        self._append(layout.TEXT_BYTES, np.frombuffer(b"".join(texts), dtype=np.uint8))
        self._append(layout.TEXT_OFFSET, text_end + np.cumsum([len(t) for t in texts], dtype=np.int64))
        self._append(layout.LABEL_SOURCE, np.array([layout.SOURCE_CODES[label.source] for label in labels], dtype=np.uint8))
        self._append(layout.CONFIDENCE, np.array([label.confidence for label in labels], dtype=np.float32))

    def _save_progress(self, complete: bool) -> None:
        self.group.attrs[layout.PART_PROGRESS_ATTR] = {
            "utterances": self.committed_utterances, "nodes": self.committed_nodes,
            "frames": self.committed_frames, "complete": complete,
        }

    def close(self) -> None:
        """Flush everything and mark the part complete (only a complete part can be committed)."""
        self.flush()
        if self._pending:
            raise StoreError(f"part {self.part}: {len(self._pending)} utterances could not be committed")
        self._save_progress(complete=True)
        self.complete = True
