"""Store-level lifecycle: create (or reopen for --resume) a store folder, and commit it.

A store is valid only once :func:`commit_store` has written the root attribute ``kdstore``, after
merging the part indexes. While a dump runs (or after it crashed) the root carries
``kdstore_pending`` instead: the dump settings that ``--resume`` must match. The root's attributes
change in single writes (created with ``kdstore_pending``; at commit ``kdstore_pending`` is replaced
by ``kdstore`` in one write), and local folders are written through :class:`CrashSafeLocalStore`, so
a crash at any point leaves a folder that ``--resume`` continues (docs/store-format.md, "Writing").
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from kdstore.errors import StoreError
from kdstore.store import layout
from kdstore.store.local_store import TEMPORARY_SUFFIX, CrashSafeLocalStore, remove_temporaries
from kdstore.store.meta_v2 import ATTRS_KEY, Counts, StoreMetadata


def _is_local(path: str) -> bool:
    return "://" not in path


def open_for_writing(path: str | Path, pending: dict[str, Any], *, overwrite: bool = False,
                     resume: bool = False, create: bool = True) -> zarr.Group:
    """Create the store root, or reopen an unfinished one for ``resume`` with the same settings.

    ``create=False`` (other ranks) waits for nothing and only opens what rank 0 created.
    """
    path_str = str(path)
    if _is_local(path_str) and Path(path_str).exists() and create:
        existing = zarr.open_group(_store(path_str), mode="r+", zarr_format=3) if _has_group(path_str) else None
        if existing is None and not _only_crash_leftovers(Path(path_str)):
            raise StoreError(f"{path_str} exists and is not a store (no zarr.json); kdstore deletes nothing it did not "
                             "write: choose another --out, or empty that folder yourself")
        if overwrite or existing is None:
            _remove(path_str)
        elif ATTRS_KEY in existing.attrs:
            raise StoreError(f"{path_str} is already a complete store; pass --overwrite to replace it")
        elif not resume:
            raise StoreError(f"{path_str} holds an unfinished dump; pass --resume to continue it or "
                             "--overwrite to start again")
        else:
            _check_same_settings(existing, pending, path_str)
            remove_temporaries(path_str)  # what a crash left mid-write; never part of the store
            if layout.PARTS_GROUP not in existing:  # crashed right after creating the root
                existing.create_group(layout.PARTS_GROUP)
            return existing
    if not create:
        group = zarr.open_group(_store(path_str), mode="r+", zarr_format=3)
        _check_same_settings(group, pending, path_str)
        return group
    # One write creates the root with its pending settings: no crash leaves a root without them.
    group = zarr.create_group(_store(path_str), zarr_format=3, overwrite=True,
                              attributes={layout.PENDING_ATTR: json.loads(json.dumps(pending))})
    group.create_group(layout.PARTS_GROUP)
    return group


def _store(path: str) -> Any:
    """What zarr opens for writing: a crash-safe local store for a folder, the URL as it is otherwise."""
    return CrashSafeLocalStore(path) if _is_local(path) else path


def _only_crash_leftovers(folder: Path) -> bool:
    """A folder a dump left: empty, or holding only what a dump killed before its root was written leaves
    (temporary files, empty folders), or a store whose root ``zarr.json`` an interrupted ``--overwrite``
    already deleted (it keeps its ``parts/`` group): safe to reuse. A file, or any other content, is the user's."""
    if folder.is_file():
        return False
    if (folder / layout.PARTS_GROUP / "zarr.json").is_file():
        return True
    return all(p.is_dir() or p.name.endswith(TEMPORARY_SUFFIX) for p in folder.rglob("*"))


def _has_group(path: str) -> bool:
    return (Path(path) / "zarr.json").is_file()


def _remove(path: str) -> None:
    """Delete a folder so that a crash midway never leaves something that reads as a store: the root's
    ``zarr.json`` (which holds the ``kdstore`` attribute) goes first."""
    Path(path, "zarr.json").unlink(missing_ok=True)
    shutil.rmtree(path)


def _check_same_settings(group: zarr.Group, pending: dict[str, Any], path: str) -> None:
    stored = dict(group.attrs.get(layout.PENDING_ATTR, {}))
    wanted = json.loads(json.dumps(pending))
    diff = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
    if diff:
        raise StoreError(f"cannot resume {path}: settings differ from the interrupted dump ({', '.join(diff)}); "
                         "use the same teacher, manifest and options, or --overwrite")


def write_tokenizer(group: zarr.Group, files: dict[str, bytes]) -> None:
    for filename, payload in files.items():
        data = np.frombuffer(payload, dtype=np.uint8)
        group.create_array(f"{layout.TOKENIZER_GROUP}/{filename}", data=data, chunks=(max(1, len(data)),),
                           compressors=layout.compressors(), overwrite=True)


def _write_left_out(group: zarr.Group, left_out: dict[str, str], stored: set[bytes]) -> None:
    encoded = [key.encode("utf-8") for key in sorted(left_out)]
    if stored & set(encoded):
        raise StoreError("an utterance is both stored and left out; dump again with --overwrite")
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(k) for k in encoded])
    arrays = {layout.LEFT_OUT_KEY_BYTES: np.frombuffer(b"".join(encoded), dtype=np.uint8),
              layout.LEFT_OUT_KEY_OFFSET: offsets,
              layout.LEFT_OUT_KIND: np.array([layout.LEFT_OUT_CODES[left_out[k]] for k in sorted(left_out)],
                                             dtype=np.uint8)}
    for name, data in arrays.items():
        group.create_array(name, data=data, chunks=(max(1, min(len(data), layout.INDEX_CHUNK * 4)),),
                           compressors=layout.compressors(), overwrite=True)


def commit_store(group: zarr.Group, metadata: StoreMetadata, tokenizer_files: dict[str, bytes],
                 left_out: dict[str, str] | None = None) -> StoreMetadata:
    """Merge every complete part's index into the root index and write the metadata attribute last.

    ``left_out`` (``kdstore/2``): key -> why (``layout.LEFT_OUT_CODES``) of each utterance the dump
    labelled but left out on purpose, so training can tell them from lines nobody dumped."""
    parts = sorted(int(name) for name in group[layout.PARTS_GROUP].group_keys())
    if not parts:
        raise StoreError("no parts to commit: the dump wrote nothing")
    keys: list[bytes] = []
    part_ids: list[np.ndarray] = []
    index_in_part: list[np.ndarray] = []
    utterances = nodes = frames = 0
    for part in parts:
        sub = group[layout.part_name(part)]
        progress = dict(sub.attrs.get(layout.PART_PROGRESS_ATTR, {}))
        if not progress.get("complete"):
            raise StoreError(f"part {part} is not complete; finish it with dump-teacher --resume before committing")
        offsets = np.asarray(sub[layout.KEY_OFFSET][:])
        payload = np.asarray(sub[layout.KEY_BYTES][:]).tobytes()
        keys.extend(payload[a:b] for a, b in itertools.pairwise(offsets))
        n = len(offsets) - 1
        part_ids.append(np.full(n, part, dtype=np.int32))
        index_in_part.append(np.arange(n, dtype=np.int64))
        utterances += n
        nodes += int(progress["nodes"])
        frames += int(progress["frames"])
    if len(set(keys)) != len(keys):
        raise StoreError("duplicate utterance keys across parts: each manifest entry must be dumped once")
    key_offset = np.zeros(len(keys) + 1, dtype=np.int64)
    key_offset[1:] = np.cumsum([len(k) for k in keys])
    index = {
        layout.KEY_BYTES: np.frombuffer(b"".join(keys), dtype=np.uint8),
        layout.KEY_OFFSET: key_offset,
        layout.UTT_PART: np.concatenate(part_ids),
        layout.UTT_INDEX_IN_PART: np.concatenate(index_in_part),
    }
    for name, data in index.items():
        group.create_array(name, data=data, chunks=(max(1, min(len(data), layout.INDEX_CHUNK * 4)),),
                           compressors=layout.compressors(), overwrite=True)
    if metadata.labels is not None:
        _write_left_out(group, left_out or {}, set(keys))
    write_tokenizer(group, tokenizer_files)
    counts = Counts(utterances=utterances, nodes=nodes, frames=frames, hours=metadata.counts.hours)
    final = dataclasses.replace(metadata, counts=counts)
    # Written last, in one write that also drops the pending settings: from this moment on the folder
    # reads as a store; a crash before it leaves an unfinished dump that --resume commits again.
    attributes = {k: v for k, v in group.attrs.asdict().items() if k != layout.PENDING_ATTR}
    group.attrs.put({**attributes, ATTRS_KEY: json.loads(json.dumps(final.to_json()))})
    return final
