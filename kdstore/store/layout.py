"""Array names, dtypes and chunking of the ``kdstore/1`` layout, shared by writer, reader and verifier.

Utterances are laid flat along a node axis (CSR): utterance i owns nodes
``node_offset[i]:node_offset[i+1]``, ordered t-major (node = t * (U+1) + u).
"""

from __future__ import annotations

import numpy as np

KEY_BYTES = "utt/key_bytes"  # uint8, the UTF-8 keys concatenated
KEY_OFFSET = "utt/key_offset"  # int64 [N+1]
NODE_OFFSET = "utt/node_offset"  # int64 [N+1]
FRAMES = "utt/T"  # int32 [N]
LABELS = "utt/U"  # int32 [N]
LOGP = "node/logp"  # [nodes, k] float16|float32, sorted descending
IDS = "node/ids"  # [nodes, k] uint16|uint32
BLANK_LABEL = "node/blank_label"  # [nodes, 2]: log p(blank), log p(next reference token)
TOKENIZER_GROUP = "tokenizer"  # one uint8 array per tokenizer file

NODE_ARRAYS = (LOGP, IDS, BLANK_LABEL)
UTT_ARRAYS = (KEY_BYTES, KEY_OFFSET, NODE_OFFSET, FRAMES, LABELS)

TARGET_CHUNK_BYTES = 1 << 20  # ~1 MB chunks: few calls per read, small read amplification
CHUNKS_PER_SHARD = 16  # shards keep the file count small (field notes: 3-5x faster writes)


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
