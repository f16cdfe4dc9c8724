"""Array names, dtypes, chunking and codecs of the ``kdstore/3`` layout (docs/store-format.md).

``kdstore/1`` lacks the label arrays; ``kdstore/2`` (RNN-T teachers) and ``kdstore/3`` stores of RNN-T
teachers lack the TDT arrays (``node/duration_logp``, ``utt/occupancy_sum``).

Shared by the writer, reader, verifier and converter, so the names live in one place.
"""

from __future__ import annotations

import numpy as np

# root index (written by the commit step)
KEY_BYTES = "utt/key_bytes"  # uint8, UTF-8 keys concatenated
KEY_OFFSET = "utt/key_offset"  # int64 [N+1]
UTT_PART = "utt/part"  # int32 [N]
UTT_INDEX_IN_PART = "utt/index_in_part"  # int64 [N]
TOKENIZER_GROUP = "tokenizer"  # one uint8 array per tokenizer file
PARTS_GROUP = "parts"

# per part (relative to parts/<p>/)
FRAMES = "utt/T"  # int32 [n]
LABELS = "utt/U"  # int32 [n]
NODE_OFFSET = "utt/node_offset"  # int64 [n+1]
FRAME_OFFSET = "utt/frame_offset"  # int64 [n+1]
BAND_START = "frame/band_start"  # int32 [frames]
LOGP = "node/logp"  # [rows, k] sorted descending
IDS = "node/ids"  # [rows, k]
BLANK_LABEL = "node/blank_label"  # [rows, 2]: log p(blank), log p(next reference token)
OCCUPANCY = "node/occupancy"  # [rows] optional
CTC_LOGP = "frame/ctc_logp"  # [frames, k_ctc] optional: a hybrid teacher's CTC top-k log-probs per frame
CTC_IDS = "frame/ctc_ids"  # [frames, k_ctc] optional
# per part, kdstore/3 TDT teachers only (root field tdt): the D-way duration distribution of every row and,
# per utterance, the expected number of lattice nodes the teacher's alignment visits (sum of its full occupancy)
DURATION_LOGP = "node/duration_logp"  # float16|float32 [rows, D]: log P(durations[i] | t, u), nats, sums to 1
OCCUPANCY_SUM = "utt/occupancy_sum"  # float32 [n]: sum over the full T x (U+1) lattice of the node occupancy

# per part, kdstore/2: the label each utterance's lattice was forced on (appended at commit, like the index)
LABEL_OFFSET = "utt/label_offset"  # int64 [n+1]: label/ids of utterance j: label_offset[j]:label_offset[j+1] (U_j)
LABEL_IDS = "label/ids"  # uint16|uint32 [sum of U]: the token ids
TEXT_OFFSET = "utt/text_offset"  # int64 [n+1]
TEXT_BYTES = "label/text_bytes"  # uint8: UTF-8 label texts concatenated
LABEL_SOURCE = "utt/label_source"  # uint8 [n]: 0 = person (the manifest's text), 1 = teacher (pseudo-label)
CONFIDENCE = "utt/confidence"  # float32 [n]: log P(label | audio) / max(U, 1) under the teacher, nats per token
LABEL_ARRAYS = (LABEL_OFFSET, LABEL_IDS, TEXT_OFFSET, TEXT_BYTES, LABEL_SOURCE, CONFIDENCE)
SOURCE_CODES = {"person": 0, "teacher": 1}
# root, kdstore/2: utterances the dump labelled but left out on purpose (written by the commit step)
LEFT_OUT_KEY_BYTES = "left_out/key_bytes"  # uint8: UTF-8 keys concatenated
LEFT_OUT_KEY_OFFSET = "left_out/key_offset"  # int64 [M+1]
LEFT_OUT_KIND = "left_out/kind"  # uint8 [M]: LEFT_OUT_CODES
LEFT_OUT_CODES = {"low_confidence": 0, "empty_label": 1}

PART_INDEX_ARRAYS = (KEY_BYTES, KEY_OFFSET, FRAMES, LABELS, NODE_OFFSET, FRAME_OFFSET)
NODE_ARRAYS = (LOGP, IDS, BLANK_LABEL)

TARGET_CHUNK_BYTES = 1 << 20  # ~1 MB chunks: few calls per read, small read amplification
CHUNKS_PER_SHARD = 16  # shards keep the file count small (field notes: 3-5x faster writes)
INDEX_CHUNK = 1 << 16  # entries per chunk of the small index arrays

PART_PROGRESS_ATTR = "kdstore_part"  # {"utterances": n, "nodes": r, "frames": f, "complete": bool}
PENDING_ATTR = "kdstore_pending"  # dump settings, present while a dump is running or resumable


def part_name(part: int) -> str:
    return f"{PARTS_GROUP}/{part:05d}"


def id_dtype_for(vocab_size: int) -> np.dtype:
    """uint16 while every id (blank = vocab_size included) fits, else uint32."""
    return np.dtype(np.uint16) if vocab_size + 1 <= np.iinfo(np.uint16).max else np.dtype(np.uint32)


def node_chunk_rows(top_k: int, value_dtype: np.dtype) -> int:
    """Rows per chunk so that a ``node/logp`` chunk is about 1 MB (a power of two)."""
    rows = TARGET_CHUNK_BYTES // max(1, top_k * np.dtype(value_dtype).itemsize)
    return 1 << max(10, int(rows).bit_length() - 1)


def label_slot_fill(value_dtype: np.dtype) -> float:
    """Value of ``blank_label[..., 1]`` at u = U, where no next token exists (masked by readers)."""
    return float(np.finfo(value_dtype).min)


def compressors() -> list:
    """Blosc zstd with byte shuffle, then a CRC-32C per chunk so corruption is caught on read."""
    from zarr.codecs import BloscCodec, Crc32cCodec

    return [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"), Crc32cCodec()]


def decode_keys(offsets, payload: bytes) -> list[str]:
    """CSR-encoded UTF-8 keys (``utt/key_offset``, ``utt/key_bytes``) -> strings."""
    import itertools

    return [payload[a:b].decode("utf-8") for a, b in itertools.pairwise(offsets)]
