"""Append utterances' top-k lattices to a new ``kdstore/1`` store and commit it atomically.

Writes go to ``<store>.partial`` and are renamed into place only by :meth:`StoreWriter.commit`,
so a crash or Ctrl-C never leaves something at the store path that reads as valid. Node rows are
buffered and flushed in whole shards, which keeps sharded Zarr writes fast (no read-modify-write).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from kdstore.errors import StoreError
from kdstore.store import layout
from kdstore.store.metadata import ATTRS_KEY, StoreMetadata


def _codec() -> BloscCodec:
    return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


class StoreWriter:
    """Single-process writer. Use as a context manager; leaving without :meth:`commit` discards."""

    def __init__(
        self,
        path: str | Path,
        *,
        top_k: int,
        vocab_size: int,
        value_dtype: str = "float16",
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise StoreError(f"{self.path} already exists; pass --overwrite to replace it")
        self.partial_path = self.path.with_name(self.path.name + ".partial")
        if self.partial_path.exists():
            shutil.rmtree(self.partial_path)
        self.top_k = top_k
        self.vocab_size = vocab_size
        self.value_dtype = np.dtype(value_dtype)
        self.id_dtype = layout.id_dtype_for(vocab_size)
        self._chunk_rows = layout.node_chunk_rows(top_k, self.value_dtype)
        self._shard_rows = self._chunk_rows * layout.CHUNKS_PER_SHARD
        self._group = zarr.open_group(zarr.storage.LocalStore(self.partial_path), mode="w", zarr_format=3)
        widths = {layout.LOGP: top_k, layout.IDS: top_k, layout.BLANK_LABEL: 2}
        dtypes = {layout.LOGP: self.value_dtype, layout.IDS: self.id_dtype, layout.BLANK_LABEL: self.value_dtype}
        self._arrays = {
            name: self._group.create_array(
                name,
                shape=(0, widths[name]),
                chunks=(self._chunk_rows, widths[name]),
                shards=(self._shard_rows, widths[name]),
                dtype=dtypes[name],
                compressors=_codec(),
                fill_value=0,
            )
            for name in layout.NODE_ARRAYS
        }
        self._pending: dict[str, list[np.ndarray]] = {name: [] for name in layout.NODE_ARRAYS}
        self._pending_rows = 0
        self._written_rows = 0
        self._keys: list[str] = []
        self._key_set: set[str] = set()
        self._frames: list[int] = []
        self._labels: list[int] = []
        self._committed = False

    # -- appending ---------------------------------------------------------------------------
    def add_utterance(self, key: str, logp: np.ndarray, ids: np.ndarray, blank_label: np.ndarray) -> None:
        """Append one utterance. Shapes: logp/ids (T, U+1, k), blank_label (T, U+1, 2)."""
        if key in self._key_set:
            raise StoreError(f"duplicate utterance key {key!r}: each manifest entry must be unique")
        frames, nodes_per_frame, k = logp.shape
        if k != self.top_k or ids.shape != logp.shape or blank_label.shape != (frames, nodes_per_frame, 2):
            raise StoreError(
                f"utterance {key!r}: shapes logp {logp.shape}, ids {ids.shape}, blank_label "
                f"{blank_label.shape} do not match top_k={self.top_k}"
            )
        self._keys.append(key)
        self._key_set.add(key)
        self._frames.append(frames)
        self._labels.append(nodes_per_frame - 1)
        rows = frames * nodes_per_frame
        self._pending[layout.LOGP].append(logp.reshape(rows, k).astype(self.value_dtype))
        self._pending[layout.IDS].append(ids.reshape(rows, k).astype(self.id_dtype))
        self._pending[layout.BLANK_LABEL].append(blank_label.reshape(rows, 2).astype(self.value_dtype))
        self._pending_rows += rows
        if self._pending_rows >= self._shard_rows:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        """Write whole shards from the buffer (everything when ``final``)."""
        if self._pending_rows == 0:
            return
        n_write = self._pending_rows if final else (self._pending_rows // self._shard_rows) * self._shard_rows
        if n_write == 0:
            return
        start, stop = self._written_rows, self._written_rows + n_write
        for name, parts in self._pending.items():
            block = np.concatenate(parts, axis=0)
            array = self._arrays[name]
            array.resize((stop, block.shape[1]))
            array[start:stop] = block[:n_write]
            self._pending[name] = [block[n_write:]] if n_write < block.shape[0] else []
        self._pending_rows -= n_write
        self._written_rows = stop

    @property
    def num_utterances(self) -> int:
        return len(self._keys)

    @property
    def num_nodes(self) -> int:
        return self._written_rows + self._pending_rows

    @property
    def num_frames(self) -> int:
        return int(sum(self._frames))

    # -- committing --------------------------------------------------------------------------
    def commit(self, metadata: StoreMetadata, tokenizer_files: dict[str, bytes]) -> Path:
        """Write the index, tokenizer and metadata, then atomically move the store into place."""
        self._flush(final=True)
        encoded = [key.encode("utf-8") for key in self._keys]
        key_offset = np.zeros(len(encoded) + 1, dtype=np.int64)
        key_offset[1:] = np.cumsum([len(b) for b in encoded])
        frames = np.asarray(self._frames, dtype=np.int32)
        labels = np.asarray(self._labels, dtype=np.int32)
        node_offset = np.zeros(len(frames) + 1, dtype=np.int64)
        node_offset[1:] = np.cumsum(frames.astype(np.int64) * (labels.astype(np.int64) + 1))
        index = {
            layout.KEY_BYTES: np.frombuffer(b"".join(encoded), dtype=np.uint8),
            layout.KEY_OFFSET: key_offset,
            layout.NODE_OFFSET: node_offset,
            layout.FRAMES: frames,
            layout.LABELS: labels,
        }
        for name, data in index.items():
            self._group.create_array(
                name, data=data, chunks=(max(1, min(len(data), 1 << 18)),), compressors=_codec()
            )
        for filename, payload in tokenizer_files.items():
            data = np.frombuffer(payload, dtype=np.uint8)
            self._group.create_array(
                f"{layout.TOKENIZER_GROUP}/{filename}", data=data, chunks=(max(1, len(data)),), compressors=None
            )
        # The metadata attribute is written last: without it the folder is not a store.
        self._group.attrs[ATTRS_KEY] = json.loads(json.dumps(metadata.to_json()))
        if self.path.exists():
            shutil.rmtree(self.path)
        self.partial_path.rename(self.path)
        self._committed = True
        return self.path

    def abort(self) -> None:
        """Drop everything written so far."""
        if not self._committed and self.partial_path.exists():
            shutil.rmtree(self.partial_path)

    def __enter__(self) -> StoreWriter:  # noqa: PYI034
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            # Keep the partial folder on interruption for debugging, but it never reads as a store.
            return
        if not self._committed:
            self.abort()
