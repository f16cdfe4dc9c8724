"""``kdstore inspect --verify``: check every rule of docs/store-format.md section 5.

Raises StoreError naming the first broken thing (array, part, utterance or node); reading every
chunk also checks its CRC-32C, so a flipped byte on disk is reported with the array it is in.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass

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


@dataclass(frozen=True)
class PartRules:
    """What a part is checked against: the committed metadata, or an unfinished dump's settings.

    ``band_width``: W (None: a full store); checked per utterance only when ``check_width``.
    ``ctc_top_k``: k of ``frame/ctc_*`` (None: no CTC arrays), checked only when ``check_ctc``.
    ``exact_shapes=False`` allows arrays longer than the committed prefix (an unfinished dump's tail).
    ``num_durations``: D of a TDT teacher (None: an RNN-T teacher, no duration arrays), checked only when
    ``check_durations``.
    """

    value_dtype: str
    vocab: int
    top_k: int
    band_width: int | None = None
    check_width: bool = False
    ctc_top_k: int | None = None
    check_ctc: bool = False
    exact_shapes: bool = True
    labels: bool = False  # kdstore/2: the label arrays must be there and agree with utt/U
    num_durations: int | None = None
    check_durations: bool = False


def _check_finite(block: np.ndarray, start: int, name: str, offsets: np.ndarray | None) -> None:
    """Every value finite (no NaN, no infinity: a teacher fed bad audio, or a damaged store); the error
    names the first bad row and, with the part's row ``offsets`` (N+1), its utterance."""
    finite = np.isfinite(block.reshape(len(block), -1)).all(-1)
    if finite.all():
        return
    row = start + int(np.argmin(finite))
    where = f" (utterance {int(np.searchsorted(offsets, row, side='right')) - 1} of the part)" if offsets is not None else ""
    raise StoreError(f"{name}: NaN or infinite value at row {row}{where}; the store was written from bad input or "
                     "is damaged: dump it again (screening now refuses non-finite audio)")


def _check_top_k(source: Source, base: str, logp_name: str, ids_name: str, total: int, k: int,
                 rules: PartRules, offsets: np.ndarray | None = None) -> None:
    """A top-k pair (``node/logp``+``node/ids`` or ``frame/ctc_*``): shapes, ids <= V, finite log-probs
    <= eps, probabilities summing to <= 1 + eps (section 5, rule 3); ``offsets`` map rows to utterances."""
    for name in (logp_name, ids_name):
        shape = tuple(source.array(f"{base}/{name}").shape)
        if shape[1:] != (k,) or (shape[0] != total if rules.exact_shapes else shape[0] < total):
            raise StoreError(f"{base}/{name}: shape {shape}, expected {(total, k)}")
    eps, vocab = MASS_EPS[rules.value_dtype], rules.vocab
    for start, ids in row_blocks(source.array(f"{base}/{ids_name}"), total, f"{base}/{ids_name}"):
        if ids.size and int(ids.max()) > vocab:
            raise StoreError(f"{base}/{ids_name}: id above blank ({vocab}) at row {start + int(np.argmax(ids.max(-1) > vocab))}")
    for start, logp in row_blocks(source.array(f"{base}/{logp_name}"), total, f"{base}/{logp_name}"):
        logp = logp.astype(np.float64)
        _check_finite(logp, start, f"{base}/{logp_name}", offsets)
        if np.any(logp > eps):
            raise StoreError(f"{base}/{logp_name}: positive log-prob at row {start + int(np.argmax((logp > eps).any(-1)))}")
        mass = np.exp(logp).sum(-1)
        if np.any(mass > 1 + eps):
            raise StoreError(f"{base}/{logp_name}: probabilities sum to {mass.max():.4f} > 1 at row "
                             f"{start + int(np.argmax(mass))}")


def _check_part(source: Source, p: _PartIndex, part: int, rules: PartRules) -> None:
    """Rules of one part (section 5, rules 1, 3 and 4) over its (committed) index ``p``."""
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
    total_frames = int(p.frame_offset[-1])
    starts_all = np.concatenate([b for _, b in row_blocks(source.array(f"{base}/{layout.BAND_START}"),
                                                          total_frames, f"{base}/{layout.BAND_START}")] or [np.zeros(0)])
    for j in range(len(frames)):
        t, u, w = int(frames[j]), int(labels[j]), int(width[j])
        if rules.check_width and w != stored_width(rules.band_width, t, u):
            raise StoreError(f"{base} utterance {j}: {w} rows per frame, expected W' = "
                             f"{stored_width(rules.band_width, t, u)} for T={t}, U={u} and band width {rules.band_width}")
        try:
            check_band_starts(starts_all[p.frame_offset[j] : p.frame_offset[j + 1]], t, u, w)
        except ValueError as err:
            raise StoreError(f"{base}/{layout.BAND_START} utterance {j}: {err}") from None
    total = int(p.node_offset[-1])
    _check_top_k(source, base, layout.LOGP, layout.IDS, total, rules.top_k, rules, p.node_offset)
    shape = tuple(source.array(f"{base}/{layout.BLANK_LABEL}").shape)
    if shape[1:] != (2,) or (shape[0] != total if rules.exact_shapes else shape[0] < total):
        raise StoreError(f"{base}/{layout.BLANK_LABEL}: shape {shape}, expected {(total, 2)}")
    for name in (layout.BLANK_LABEL, layout.OCCUPANCY):
        if source.has(f"{base}/{name}"):
            for start, block in row_blocks(source.array(f"{base}/{name}"), total, f"{base}/{name}"):
                _check_finite(block, start, f"{base}/{name}", p.node_offset)
    if rules.labels:
        _check_labels(source, base, labels, rules)
    if rules.check_durations:
        _check_durations(source, base, p, rules)
    if rules.check_ctc:
        present = source.has(f"{base}/{layout.CTC_LOGP}")
        if present != (rules.ctc_top_k is not None):
            raise StoreError(f"{base}/{layout.CTC_LOGP}: {'present' if present else 'missing'} but ctc_top_k is "
                             f"{rules.ctc_top_k}")
        if rules.ctc_top_k is not None:
            _check_top_k(source, base, layout.CTC_LOGP, layout.CTC_IDS, total_frames, rules.ctc_top_k, rules,
                         p.frame_offset)


def _check_durations(source: Source, base: str, p: _PartIndex, rules: PartRules) -> None:
    """A TDT teacher's arrays (``kdstore/3``): ``node/duration_logp`` [rows, D], finite log-probs of a
    distribution (each row sums to 1 within eps), and ``utt/occupancy_sum`` [n], the expected visited nodes,
    in [U+1, T+U] per utterance; an RNN-T teacher's store has neither."""
    present = {name: source.has(f"{base}/{name}") for name in (layout.DURATION_LOGP, layout.OCCUPANCY_SUM)}
    for name, here in present.items():
        if here != (rules.num_durations is not None):
            why = (f"required in a TDT teacher's store (root field tdt lists {rules.num_durations} durations)"
                   if rules.num_durations is not None else "present, but the store is not a TDT teacher's (no root field tdt)")
            raise StoreError(f"{base}/{name}: {'missing' if not here else 'unexpected'}: {why}; the store is damaged or "
                             "was not written by kdstore: dump it again")
    if rules.num_durations is None:
        return
    total, n, width = int(p.node_offset[-1]), len(p.frames), rules.num_durations
    shape = tuple(source.array(f"{base}/{layout.DURATION_LOGP}").shape)
    if shape[1:] != (width,) or (shape[0] != total if rules.exact_shapes else shape[0] < total):
        raise StoreError(f"{base}/{layout.DURATION_LOGP}: shape {shape}, expected {(total, width)} (rows, D durations)")
    eps = MASS_EPS[rules.value_dtype]
    name = f"{base}/{layout.DURATION_LOGP}"
    for start, block in row_blocks(source.array(name), total, name):
        block = block.astype(np.float64)
        _check_finite(block, start, name, p.node_offset)
        mass = np.exp(block).sum(-1)
        if np.any(np.abs(mass - 1.0) > eps):
            bad = int(np.argmax(np.abs(mass - 1.0)))
            raise StoreError(f"{name}: the duration probabilities of row {start + bad} sum to {mass[bad]:.4f}, not 1")
    sums = np.asarray(source.array(f"{base}/{layout.OCCUPANCY_SUM}")[:n]).astype(np.float64)
    frames, labels = p.frames.astype(np.float64), p.labels.astype(np.float64)
    tol = 1e-3 * (frames + labels)
    if sums.shape != (n,) or not np.all(np.isfinite(sums)) or np.any(sums < labels + 1 - tol) or np.any(sums > frames + labels + tol):
        raise StoreError(f"{base}/{layout.OCCUPANCY_SUM}: expected {n} expected-visit counts in [U+1, T+U] per utterance")


def _check_labels(source: Source, base: str, labels: np.ndarray, rules: PartRules) -> None:
    """``kdstore/2`` label arrays of one part: offsets agree with utt/U, ids are tokens (< V), sources are
    person|teacher, confidences finite and <= 0 (a mean log-prob)."""
    n = len(labels)
    for name in layout.LABEL_ARRAYS:
        if not source.has(f"{base}/{name}"):
            raise StoreError(f"{base}/{name}: missing (required in kdstore/2 stores)")
    read = lambda name, size=None: np.asarray(source.array(f"{base}/{name}")[:size])
    label_offset, text_offset = read(layout.LABEL_OFFSET, n + 1), read(layout.TEXT_OFFSET, n + 1)
    for name, offsets in ((layout.LABEL_OFFSET, label_offset), (layout.TEXT_OFFSET, text_offset)):
        if offsets.shape != (n + 1,) or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
            raise StoreError(f"{base}/{name}: must start at 0 and be monotone with {n + 1} entries")
    if np.any(np.diff(label_offset) != labels):
        bad = int(np.argmax(np.diff(label_offset) != labels))
        raise StoreError(f"{base}/{layout.LABEL_OFFSET} utterance {bad}: {int(np.diff(label_offset)[bad])} label ids "
                         f"but utt/U = {int(labels[bad])}")
    ids = read(layout.LABEL_IDS, int(label_offset[-1]))
    if ids.shape != (int(label_offset[-1]),) or (ids.size and int(ids.max()) >= rules.vocab):
        raise StoreError(f"{base}/{layout.LABEL_IDS}: {ids.size} ids, expected {int(label_offset[-1])} token ids < {rules.vocab}")
    text = read(layout.TEXT_BYTES, int(text_offset[-1]))
    try:
        text.tobytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise StoreError(f"{base}/{layout.TEXT_BYTES}: not UTF-8 ({err})") from None
    sources, confidence = read(layout.LABEL_SOURCE, n), read(layout.CONFIDENCE, n)
    if sources.shape != (n,) or np.any(sources > max(layout.SOURCE_CODES.values())):
        raise StoreError(f"{base}/{layout.LABEL_SOURCE}: expected {n} codes in {sorted(layout.SOURCE_CODES.values())}")
    if confidence.shape != (n,) or not np.all(np.isfinite(confidence)) or np.any(confidence > MASS_EPS["float32"]):
        raise StoreError(f"{base}/{layout.CONFIDENCE}: expected {n} finite mean log-probs <= 0")


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
    rules = PartRules(value_dtype=meta.value_dtype, vocab=meta.vocab_size, top_k=meta.top_k, band_width=meta.band_width,
                      check_width=True, ctc_top_k=meta.ctc_top_k, check_ctc=True, labels=meta.has_labels,
                      num_durations=len(meta.tdt.durations) if meta.tdt is not None else None, check_durations=True)
    for part, index in reader.parts.items():
        _check_part(source, index, part, rules)
    if meta.labels is not None:
        teacher = sum(reader.label(i).source == "teacher" for i in range(n))
        left_out = reader.left_out
        if set(left_out) & set(reader.keys):
            raise StoreError(f"{layout.LEFT_OUT_KEY_BYTES}: an utterance is both stored and left out")
        expected = meta.labels.dropped_low_confidence + meta.labels.dropped_empty
        if len(left_out) != expected:
            raise StoreError(f"{layout.LEFT_OUT_KEY_BYTES}: {len(left_out)} keys, but labels.dropped_* count {expected}")
        if teacher != meta.labels.teacher_labelled:
            raise StoreError(f"labels.teacher_labelled is {meta.labels.teacher_labelled} but {teacher} utterances "
                             "carry a teacher label")
    return True


def verify_unfinished(path: str | os.PathLike) -> dict[str, int]:
    """An interrupted dump: check every part's committed prefix (what ``--resume`` keeps).

    Every crash point of the commit protocol (docs/store-format.md, "Writing") leaves a folder this
    accepts: a part without a progress record stopped while being created (nothing in it is committed;
    ``--resume`` creates it again), rows and index entries past a part's progress record are the
    uncommitted tail (``--resume`` overwrites them), and an empty folder is a dump stopped before it
    wrote anything. Returns {"parts": ..., "utterances": ..., "nodes": ...} committed so far. Raises
    StoreError when the folder is not a dump, or when a committed prefix breaks a rule (damage, which no
    interruption causes).
    """
    if _is_empty_folder(path):
        return {"parts": 0, "utterances": 0, "nodes": 0}
    source = Source(path, allow_unfinished=True)
    attrs = source.attrs()
    pending = attrs.get(layout.PENDING_ATTR)
    if pending is None:
        raise StoreError(f"{path} is neither a committed store nor an unfinished dump")
    pending = json.loads(pending) if isinstance(pending, str) else dict(pending)
    rules = PartRules(value_dtype=pending["value_dtype"], vocab=int(pending.get("vocab_size", 1 << 31)),
                      top_k=int(pending["top_k"]), band_width=pending.get("band"), check_width="band" in pending,
                      ctc_top_k=int(pending["top_k"]) if pending.get("ctc") else None, check_ctc="ctc" in pending,
                      exact_shapes=False, labels="pseudo_label" in pending,
                      num_durations=len(pending["tdt"]["durations"]) if pending.get("tdt") else None,
                      check_durations="tdt" in pending)
    totals = {"parts": 0, "utterances": 0, "nodes": 0}
    with warnings.catch_warnings():  # a part folder killed before its zarr.json: not a part yet, skipped
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy")
        parts = source.children(layout.PARTS_GROUP) if source.has(layout.PARTS_GROUP) else []
    for name in parts:
        part = int(name)
        base = layout.part_name(part)
        progress = dict(source.handle()[base].attrs.get(layout.PART_PROGRESS_ATTR, {}))
        totals["parts"] += 1
        if not progress:  # stopped while the part was being created: nothing committed
            continue
        n = int(progress["utterances"])
        index = _PartIndex(*(np.asarray(source.array(f"{base}/{array}")[:size]) for array, size in
                             ((layout.FRAMES, n), (layout.LABELS, n), (layout.NODE_OFFSET, n + 1),
                              (layout.FRAME_OFFSET, n + 1))))
        committed = (int(index.node_offset[-1]), int(index.frame_offset[-1])) if len(index.node_offset) == n + 1 else None
        if committed != (int(progress["nodes"]), int(progress["frames"])):
            raise StoreError(f"{base}: the committed index ({n} utterances) and the progress record "
                             f"({progress['nodes']} nodes, {progress['frames']} frames) disagree; an interrupted "
                             "dump never leaves this, so the part was damaged: dump again with --overwrite")
        _check_part(source, index, part, rules)
        totals["utterances"] += n
        totals["nodes"] += int(progress["nodes"])
    return totals


def _is_empty_folder(path: str | os.PathLike) -> bool:
    """A local folder holding nothing (temporary files of an interrupted write aside): a dump stopped before
    it wrote its root."""
    from kdstore.store.local_store import TEMPORARY_SUFFIX

    folder = str(path)
    if "://" in folder or not os.path.isdir(folder):
        return False
    return all(name.endswith(TEMPORARY_SUFFIX) for name in os.listdir(folder))


def is_unfinished(path: str | os.PathLike) -> bool:
    """True for a folder holding an interrupted (uncommitted) dump, an empty one included."""
    if _is_empty_folder(path):
        return True
    try:
        attrs = Source(path, allow_unfinished=True).attrs()
    except StoreError:
        return False
    return ATTRS_KEY not in attrs and layout.PENDING_ATTR in attrs
