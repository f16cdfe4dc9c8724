"""``kdstore inspect --verify``: check every rule of docs/store-format.md section 5.

Raises StoreError naming the first broken thing (array, part, utterance or node); reading every
chunk also checks its CRC-32C, so a flipped byte on disk is reported with the array it is in.
"""

from __future__ import annotations

import json
import os

import numpy as np

from kdstore.errors import StoreError
from kdstore.store import layout
from kdstore.store.backend import Source
from kdstore.store.band import check_band_starts, stored_width
from kdstore.store.meta_v1 import ATTRS_KEY
from kdstore.store.reader import StoreReader, _PartIndex

ROWS_PER_READ = 1 << 18
MASS_EPS = {"float16": 2e-2, "float32": 1e-4}


def row_blocks(array, total: int, name: str):
    """Yield (start, block) over an array's rows; decoding errors name the array."""
    for start in range(0, total, ROWS_PER_READ):
        try:
            yield start, np.asarray(array[start : min(total, start + ROWS_PER_READ)])
        except Exception as err:  # noqa: BLE001 - codec/checksum errors come in many types
            raise StoreError(f"{name}: rows {start}.. cannot be decoded ({type(err).__name__}: {err}); "
                             "the store is corrupt, dump it again") from None


def _check_part(source: Source, p: _PartIndex, part: int, value_dtype: str, vocab: int, top_k: int,
                exact_shapes: bool = True, band_width: int | None = None, check_width: bool = False) -> None:
    """Rules of one part over its (committed) index ``p``; ``exact_shapes=False`` allows arrays that are
    longer than the committed prefix (an unfinished dump's uncommitted tail). ``check_width``: each
    utterance's W' must be :func:`~kdstore.store.band.stored_width` of ``band_width`` (None: full)."""
    base = layout.part_name(part)
    frames, labels = p.frames.astype(np.int64), p.labels.astype(np.int64)
    for name, offsets, per in ((layout.NODE_OFFSET, p.node_offset, None), (layout.FRAME_OFFSET, p.frame_offset, frames)):
        if offsets.shape != (len(frames) + 1,) or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
            raise StoreError(f"{base}/{name}: must start at 0 and be monotone with {len(frames) + 1} entries")
        if per is not None and np.any(np.diff(offsets) != per):
            raise StoreError(f"{base}/{name}: frame counts disagree with {base}/{layout.FRAMES}")
    if np.any(frames <= 0) or np.any(labels < 0):
        raise StoreError(f"{base}: utt/T must be positive and utt/U non-negative")
    rows_per_utt = np.diff(p.node_offset)
    width = rows_per_utt // frames
    if np.any(width * frames != rows_per_utt) or np.any(width > labels + 1) or np.any(width <= 0):
        bad = int(np.argmax((width * frames != rows_per_utt) | (width > labels + 1) | (width <= 0)))
        raise StoreError(f"{base} utterance {bad}: {int(rows_per_utt[bad])} rows is not T x W' for T={int(frames[bad])}")
    starts_all = np.concatenate([b for _, b in row_blocks(source.array(f"{base}/{layout.BAND_START}"),
                                                          int(p.frame_offset[-1]), f"{base}/{layout.BAND_START}")] or [np.zeros(0)])
    for j in range(len(frames)):
        t, u, w = int(frames[j]), int(labels[j]), int(width[j])
        if check_width and w != stored_width(band_width, t, u):
            raise StoreError(f"{base} utterance {j}: {w} rows per frame, expected W' = "
                             f"{stored_width(band_width, t, u)} for T={t}, U={u} and band width {band_width}")
        try:
            check_band_starts(starts_all[p.frame_offset[j] : p.frame_offset[j + 1]], t, u, w)
        except ValueError as err:
            raise StoreError(f"{base}/{layout.BAND_START} utterance {j}: {err}") from None
    total = int(p.node_offset[-1])
    for name, trailing in ((layout.LOGP, (top_k,)), (layout.IDS, (top_k,)), (layout.BLANK_LABEL, (2,))):
        shape = tuple(source.array(f"{base}/{name}").shape)
        if shape[1:] != trailing or (shape[0] != total if exact_shapes else shape[0] < total):
            raise StoreError(f"{base}/{name}: shape {shape}, expected {(total, *trailing)}")
    eps = MASS_EPS[value_dtype]
    for start, ids in row_blocks(source.array(f"{base}/{layout.IDS}"), total, f"{base}/{layout.IDS}"):
        if ids.size and int(ids.max()) > vocab:
            raise StoreError(f"{base}/{layout.IDS}: id above blank ({vocab}) at row {start + int(np.argmax(ids.max(-1) > vocab))}")
    for start, logp in row_blocks(source.array(f"{base}/{layout.LOGP}"), total, f"{base}/{layout.LOGP}"):
        logp = logp.astype(np.float64)
        if np.any(logp > eps):
            raise StoreError(f"{base}/{layout.LOGP}: positive log-prob at row {start + int(np.argmax((logp > eps).any(-1)))}")
        mass = np.exp(logp).sum(-1)
        if np.any(mass > 1 + eps):
            raise StoreError(f"{base}/{layout.LOGP}: probabilities sum to {mass.max():.4f} > 1 at row "
                             f"{start + int(np.argmax(mass))}")
    for name in (layout.BLANK_LABEL, layout.OCCUPANCY):
        if source.has(f"{base}/{name}"):
            for _ in row_blocks(source.array(f"{base}/{name}"), total, f"{base}/{name}"):
                pass


def verify_store(path: str | os.PathLike) -> bool:
    """True, or StoreError naming the first broken rule."""
    reader = StoreReader(path)
    meta = reader.metadata
    source = Source(path)
    n = len(reader)
    if len(set(reader.keys)) != n:
        raise StoreError(f"{layout.KEY_BYTES}: duplicate keys")
    pairs = set(zip(reader.part_of.tolist(), reader.index_in_part.tolist(), strict=True))
    expected = {(part, j) for part, p in reader.parts.items() for j in range(len(p.frames))}
    if pairs != expected or len(pairs) != n:
        raise StoreError(f"{layout.UTT_PART}/{layout.UTT_INDEX_IN_PART}: must reference every part entry exactly once")
    nodes = sum(int(p.node_offset[-1]) for p in reader.parts.values())
    frames = sum(int(p.frame_offset[-1]) for p in reader.parts.values())
    if (meta.counts.utterances, meta.counts.nodes, meta.counts.frames) != (n, nodes, frames):
        raise StoreError(f"counts in metadata ({meta.counts}) do not match the arrays ({n} utts, {nodes} nodes, {frames} frames)")
    for field in ("teacher_sha256", "tokenizer_sha256", "manifest_sha256"):
        if not getattr(meta.fingerprint, field):
            raise StoreError(f"fingerprint.{field} is empty")
    if "tokenizer.model" not in source.children(layout.TOKENIZER_GROUP):
        raise StoreError(f"{layout.TOKENIZER_GROUP}/tokenizer.model is missing")
    for part, index in reader.parts.items():
        _check_part(source, index, part, meta.value_dtype, meta.vocab_size, meta.top_k,
                    band_width=meta.band_width, check_width=True)
    return True


def verify_unfinished(path: str | os.PathLike) -> dict[str, int]:
    """An interrupted dump: check every part's committed prefix (what ``--resume`` keeps).

    Returns {"parts": ..., "utterances": ..., "nodes": ...} committed so far.
    """
    source = Source(path, allow_unfinished=True)
    attrs = source.attrs()
    pending = attrs.get(layout.PENDING_ATTR)
    if pending is None:
        raise StoreError(f"{path} is neither a committed store nor an unfinished dump")
    pending = json.loads(pending) if isinstance(pending, str) else dict(pending)
    totals = {"parts": 0, "utterances": 0, "nodes": 0}
    for name in source.children(layout.PARTS_GROUP):
        part = int(name)
        base = layout.part_name(part)
        progress = dict(source.handle()[base].attrs.get(layout.PART_PROGRESS_ATTR, {}))
        n = int(progress.get("utterances", 0))
        index = _PartIndex(*(np.asarray(source.array(f"{base}/{array}")[:size]) for array, size in
                             ((layout.FRAMES, n), (layout.LABELS, n), (layout.NODE_OFFSET, n + 1),
                              (layout.FRAME_OFFSET, n + 1))))
        if int(index.node_offset[-1]) != int(progress.get("nodes", -1)):
            raise StoreError(f"{base}: committed index and progress record disagree; dump again with --overwrite")
        _check_part(source, index, part, pending["value_dtype"], int(pending.get("vocab_size", 1 << 31)),
                    int(pending["top_k"]), exact_shapes=False, band_width=pending.get("band"),
                    check_width="band" in pending)
        totals["parts"] += 1
        totals["utterances"] += n
        totals["nodes"] += int(progress.get("nodes", 0))
    return totals


def is_unfinished(path: str | os.PathLike) -> bool:
    """True for a folder holding an interrupted (uncommitted) dump."""
    try:
        attrs = Source(path, allow_unfinished=True).attrs()
    except StoreError:
        return False
    return ATTRS_KEY not in attrs and layout.PENDING_ATTR in attrs
