"""Read utterances' lattice rows back from a committed ``kdstore/1`` store.

The reader opens Zarr lazily and drops its handles when pickled, so one reader object can be
handed to forked or spawned DataLoader workers: each worker reopens the store on first use.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from kdstore.errors import StoreError, StoreNotFoundError
from kdstore.store import layout
from kdstore.store.metadata import ATTRS_KEY, StoreMetadata


@dataclass(frozen=True)
class UtteranceRows:
    """One utterance's stored lattice: node (t, u) is row ``[t, u]``."""

    key: str
    logp: np.ndarray  # (T, U+1, k) log-probs at temperature 1, sorted descending
    ids: np.ndarray  # (T, U+1, k) vocabulary ids (blank = vocab_size)
    blank_label: np.ndarray  # (T, U+1, 2) log p(blank), log p(next reference token); [:, U, 1] masked

    @property
    def num_frames(self) -> int:
        return self.logp.shape[0]

    @property
    def num_labels(self) -> int:
        return self.logp.shape[1] - 1


def open_group(path: str | Path) -> zarr.Group:
    """Open a committed store (local path or fsspec URL) read-only, or raise a clear error."""
    path_str = str(path)
    if "://" not in path_str:
        local = Path(path_str)
        if not local.exists():
            partial = local.with_name(local.name + ".partial")
            hint = " (an unfinished dump is at {partial}; re-run dump-teacher)" if partial.exists() else ""
            raise StoreNotFoundError(f"no kdstore store at {local}{hint}".format(partial=partial))
    try:
        group = zarr.open_group(path_str, mode="r", zarr_format=3)
    except (FileNotFoundError, ValueError, KeyError) as err:
        raise StoreNotFoundError(f"{path_str} is not a Zarr v3 group ({err}); is it a kdstore store?") from None
    if ATTRS_KEY not in group.attrs:
        raise StoreError(
            f"{path_str} has no committed kdstore metadata: the dump did not finish; re-run dump-teacher"
        )
    return group


class StoreReader:
    """Random access to utterance rows by index or key."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        group = open_group(self.path)
        self.metadata = StoreMetadata.from_json(group.attrs[ATTRS_KEY])
        self.node_offset = np.asarray(group[layout.NODE_OFFSET][:])
        self.frames = np.asarray(group[layout.FRAMES][:])
        self.labels = np.asarray(group[layout.LABELS][:])
        key_bytes = np.asarray(group[layout.KEY_BYTES][:]).tobytes()
        key_offset = np.asarray(group[layout.KEY_OFFSET][:])
        self.keys = [key_bytes[a:b].decode("utf-8") for a, b in itertools.pairwise(key_offset)]
        self._index = {key: i for i, key in enumerate(self.keys)}
        self._group: zarr.Group | None = group
        self._pid = os.getpid()

    # Fork/spawn safety: never carry an open Zarr handle into another process.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_group"] = None
        return state

    def _arrays(self) -> zarr.Group:
        if self._group is None or self._pid != os.getpid():
            self._group = zarr.open_group(self.path, mode="r", zarr_format=3)
            self._pid = os.getpid()
        return self._group

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def index_of(self, key: str) -> int:
        try:
            return self._index[key]
        except KeyError:
            raise StoreError(
                f"utterance {key!r} is not in store {self.path}; dump the teacher over the same manifest "
                "(keys are audio_filepath as written, offset and duration)"
            ) from None

    def read(self, index: int) -> UtteranceRows:
        """Rows of utterance ``index`` in lattice coordinates."""
        group = self._arrays()
        start, stop = int(self.node_offset[index]), int(self.node_offset[index + 1])
        frames, labels = int(self.frames[index]), int(self.labels[index])
        shape = (frames, labels + 1)
        logp = np.asarray(group[layout.LOGP][start:stop])
        ids = np.asarray(group[layout.IDS][start:stop])
        blank_label = np.asarray(group[layout.BLANK_LABEL][start:stop])
        return UtteranceRows(
            key=self.keys[index],
            logp=logp.reshape(*shape, -1),
            ids=ids.reshape(*shape, -1),
            blank_label=blank_label.reshape(*shape, 2),
        )

    def read_key(self, key: str) -> UtteranceRows:
        return self.read(self.index_of(key))

    def read_batch(self, keys: Sequence[str]) -> list[UtteranceRows]:
        """Rows for several keys, read in store order (sequential I/O), returned in request order."""
        indices = [self.index_of(key) for key in keys]
        rows = {i: self.read(i) for i in sorted(set(indices))}
        return [rows[i] for i in indices]

    def tokenizer_files(self) -> dict[str, bytes]:
        """The teacher's tokenizer files, copied into the store at dump time."""
        group = self._arrays()[layout.TOKENIZER_GROUP]
        return {name: np.asarray(array[:]).tobytes() for name, array in group.arrays()}

    def write_tokenizer(self, out_dir: str | Path) -> Path:
        """Materialise the stored tokenizer as a NeMo tokenizer dir (tokenizer.model, vocab.txt)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, payload in self.tokenizer_files().items():
            (out / name).write_bytes(payload)
        return out
