"""Store writer/reader round trip on a real Zarr v3 store on disk (no NeMo)."""

from __future__ import annotations

import numpy as np
import pytest

from kdstore.errors import StoreError, StoreNotFoundError
from kdstore.store import StoreReader, StoreWriter
from kdstore.store.metadata import Counts, Fingerprint, FrontEnd, StoreMetadata


def make_metadata(top_k: int, vocab: int, value_dtype: str = "float16") -> StoreMetadata:
    return StoreMetadata(
        top_k=top_k,
        value_dtype=value_dtype,
        id_dtype="uint16",
        blank_id=vocab,
        vocab_size=vocab,
        fingerprint=Fingerprint(teacher_sha256="t", teacher_class="C", teacher_params=1,
                                tokenizer_sha256="tok", manifest_sha256="m"),
        front_end=FrontEnd(sample_rate=16000, window_size=0.025, window_stride=0.01, features=80,
                           normalize="per_feature", subsampling_factor=8),
        counts=Counts(utterances=0, nodes=0, frames=0, hours=0.0),
        kdstore_version="test",
        created="now",
    )


def random_utterance(rng, frames, labels, k, vocab):
    logits = rng.normal(size=(frames, labels + 1, vocab + 1))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ids = np.argsort(-logp, axis=-1)[..., :k]
    values = np.take_along_axis(logp, ids, -1)
    blank_label = np.stack([logp[..., vocab], logp[..., 0]], -1)
    return values.astype(np.float32), ids, blank_label.astype(np.float32)


@pytest.mark.parametrize("value_dtype", ["float16", "float32"])
def test_round_trip_many_utterances_across_shards(tmp_path, value_dtype):
    rng = np.random.default_rng(0)
    k, vocab = 4, 30
    utts = {f"a/{i}.wav|0.000|{i}.000": random_utterance(rng, rng.integers(1, 40), rng.integers(0, 12), k, vocab)
            for i in range(60)}
    path = tmp_path / "s.zarr"
    writer = StoreWriter(path, top_k=k, vocab_size=vocab, value_dtype=value_dtype)
    writer._shard_rows = 512  # force several shard flushes on small data
    for key, (values, ids, bl) in utts.items():
        writer.add_utterance(key, values, ids, bl)
    assert not path.exists(), "nothing may be visible before commit"
    writer.commit(make_metadata(k, vocab, value_dtype), {"tokenizer.model": b"\x00\x01abc"})
    reader = StoreReader(path)
    assert len(reader) == len(utts)
    for key, (values, ids, bl) in utts.items():
        rows = reader.read_key(key)
        assert rows.logp.shape == values.shape
        np.testing.assert_array_equal(rows.ids, ids)
        np.testing.assert_array_equal(rows.logp, values.astype(value_dtype))
        np.testing.assert_array_equal(rows.blank_label, bl.astype(value_dtype))
    assert reader.tokenizer_files() == {"tokenizer.model": b"\x00\x01abc"}
    batch = reader.read_batch(list(utts)[::-7])
    assert [r.key for r in batch] == list(utts)[::-7]


def test_uncommitted_store_does_not_read_as_valid(tmp_path):
    path = tmp_path / "s.zarr"
    writer = StoreWriter(path, top_k=2, vocab_size=5)
    writer.add_utterance("x", *random_utterance(np.random.default_rng(1), 3, 2, 2, 5))
    # simulate a crash: never commit
    with pytest.raises(StoreNotFoundError, match="unfinished dump"):
        StoreReader(path)


def test_existing_store_needs_overwrite_and_unknown_key_is_clear(tmp_path):
    path = tmp_path / "s.zarr"
    writer = StoreWriter(path, top_k=2, vocab_size=5)
    writer.add_utterance("x", *random_utterance(np.random.default_rng(1), 3, 2, 2, 5))
    writer.commit(make_metadata(2, 5), {})
    with pytest.raises(StoreError, match="overwrite"):
        StoreWriter(path, top_k=2, vocab_size=5)
    with pytest.raises(StoreError, match="not in store"):
        StoreReader(path).read_key("y")


def test_reader_survives_pickling_for_worker_processes(tmp_path):
    import pickle

    path = tmp_path / "s.zarr"
    writer = StoreWriter(path, top_k=2, vocab_size=5)
    values, ids, bl = random_utterance(np.random.default_rng(2), 4, 1, 2, 5)
    writer.add_utterance("x", values, ids, bl)
    writer.commit(make_metadata(2, 5), {})
    clone = pickle.loads(pickle.dumps(StoreReader(path)))
    np.testing.assert_array_equal(clone.read(0).ids, ids)
