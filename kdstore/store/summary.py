"""Summaries and invariant checks of a committed store (``kdstore inspect [--verify]``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from kdstore.errors import StoreError
from kdstore.store import layout
from kdstore.store.reader import StoreReader, open_group

ROWS_PER_READ = 1 << 18
MASS_EPS = {"float16": 2e-2, "float32": 1e-4}


def _disk_bytes(path: str) -> int | None:
    if "://" in path:
        return None
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _row_blocks(array, total: int):
    for start in range(0, total, ROWS_PER_READ):
        yield start, np.asarray(array[start : min(total, start + ROWS_PER_READ)])


def summarize(path: str | os.PathLike) -> dict[str, Any]:
    """Utterances, hours, nodes, bytes per node and the mean probability mass kept by the top-k."""
    reader = StoreReader(path)
    meta = reader.metadata
    group = open_group(path)
    nodes = int(reader.node_offset[-1])
    mass_sum = 0.0
    for _, block in _row_blocks(group[layout.LOGP], nodes):
        mass_sum += float(np.exp(block.astype(np.float64)).sum())
    size = _disk_bytes(str(path))
    return {
        "format": meta.format,
        "teacher": f"{meta.fingerprint.teacher_class} ({meta.fingerprint.teacher_params / 1e6:.2f}M params)",
        "utterances": len(reader),
        "hours": round(meta.counts.hours, 4),
        "frames": int(reader.frames.sum()),
        "nodes": nodes,
        "top_k": meta.top_k,
        "vocab_size": meta.vocab_size,
        "value_dtype": meta.value_dtype,
        "lattice": meta.lattice,
        "frame_shift_s": meta.front_end.frame_shift_s,
        "bytes_on_disk": size,
        "bytes_per_node": round(size / nodes, 2) if size and nodes else None,
        "mean_topk_mass": round(mass_sum / max(1, nodes), 6),
        "created": meta.created,
    }


def verify_store(path: str | os.PathLike) -> bool:
    """Check the format's invariants; raise StoreError naming the first broken one."""
    reader = StoreReader(path)
    meta = reader.metadata
    group = open_group(path)
    n = len(reader)
    offsets, frames, labels = reader.node_offset, reader.frames.astype(np.int64), reader.labels.astype(np.int64)
    if offsets.shape != (n + 1,) or offsets[0] != 0:
        raise StoreError(f"{layout.NODE_OFFSET}: expected {n + 1} entries starting at 0")
    if np.any(np.diff(offsets) < 0):
        raise StoreError(f"{layout.NODE_OFFSET}: not monotone (first at utterance {int(np.argmax(np.diff(offsets) < 0))})")
    expected = frames * (labels + 1)
    bad = np.nonzero(np.diff(offsets) != expected)[0]
    if bad.size:
        raise StoreError(f"utterance {reader.keys[bad[0]]!r}: {int(np.diff(offsets)[bad[0]])} nodes, expected T*(U+1)={int(expected[bad[0]])}")
    if np.any(frames <= 0) or np.any(labels < 0):
        raise StoreError("utt/T must be positive and utt/U non-negative")
    if len(set(reader.keys)) != n:
        raise StoreError("utt/key: duplicate keys")
    total = int(offsets[-1])
    for name, width in ((layout.LOGP, meta.top_k), (layout.IDS, meta.top_k), (layout.BLANK_LABEL, 2)):
        if group[name].shape != (total, width):
            raise StoreError(f"{name}: shape {group[name].shape}, expected {(total, width)}")
    if meta.counts.utterances != n or meta.counts.nodes != total:
        raise StoreError(f"counts in metadata ({meta.counts.utterances} utts, {meta.counts.nodes} nodes) "
                         f"do not match the arrays ({n}, {total})")
    fp = meta.fingerprint
    for field in ("teacher_sha256", "tokenizer_sha256", "manifest_sha256"):
        if not getattr(fp, field):
            raise StoreError(f"fingerprint.{field} is empty")
    if "tokenizer.model" not in dict(group[layout.TOKENIZER_GROUP].arrays()):
        raise StoreError("tokenizer/tokenizer.model is missing")
    eps = MASS_EPS[meta.value_dtype]
    ids_array, logp_array = group[layout.IDS], group[layout.LOGP]
    for start, ids in _row_blocks(ids_array, total):
        if ids.size and int(ids.max()) > meta.vocab_size:
            row = start + int(np.argmax(ids.max(-1) > meta.vocab_size))
            raise StoreError(f"{layout.IDS}: id above blank ({meta.vocab_size}) at node {row}")
    for start, logp in _row_blocks(logp_array, total):
        logp = logp.astype(np.float64)
        if np.any(logp > eps):
            raise StoreError(f"{layout.LOGP}: positive log-prob at node {start + int(np.argmax((logp > eps).any(-1)))}")
        mass = np.exp(logp).sum(-1)
        if np.any(mass > 1 + eps):
            raise StoreError(f"{layout.LOGP}: probabilities sum to {mass.max():.4f} > 1 at node {start + int(np.argmax(mass))}")
    return True
