"""Store writer/reader/verify on real Zarr v3 stores on disk (no NeMo): full and band layouts,
crash + resume, multi-part commit, corruption detection."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest
import zarr

from kdstore.errors import StoreError, StoreNotFoundError
from kdstore.store import PartWriter, StoreReader, commit_store, open_for_writing
from kdstore.store.meta_v2 import StoreMetadata
from kdstore.store.part_writer import Label
from kdstore.store.verify import verify_store
from tests.stores import toy_metadata

K, VOCAB = 4, 30


def make_metadata(value_dtype: str = "float16", lattice: str = "full", width=None) -> StoreMetadata:
    return toy_metadata(top_k=K, vocab=VOCAB, value_dtype=value_dtype, lattice=lattice, band_width=width)


def person_label(labels: int) -> Label:
    """A transcript's label of U = ``labels`` tokens (the store keeps it since kdstore/2)."""
    return Label(ids=np.arange(labels) % VOCAB, text=f"{labels} words", source="person", confidence=-0.25)


def random_utterance(rng, frames: int, labels: int, width: int | None):
    """Dense rows plus band starts obeying the rules (monotone, last frame covers u = U)."""
    logits = rng.normal(size=(frames, labels + 1, VOCAB + 1))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ids = np.argsort(-logp, axis=-1)[..., :K]
    values = np.take_along_axis(logp, ids, -1).astype(np.float32)
    blank_label = np.stack([logp[..., VOCAB], logp[..., 0]], -1).astype(np.float32)
    w = labels + 1 if width is None or frames == 1 else min(width, labels + 1)
    last = labels + 1 - w
    starts = np.sort(rng.integers(0, last + 1, size=frames)).astype(np.int32)
    starts[0], starts[-1] = 0, last
    u = starts[:, None] + np.arange(w)[None, :]
    t = np.arange(frames)[:, None]
    band = {"logp": values[t, u], "ids": ids[t, u], "blank_label": blank_label[t, u]}
    return {"dense": (values, ids, blank_label), "starts": starts, "width": w, "band": band}


def utterances(seed: int, count: int, width: int | None):
    rng = np.random.default_rng(seed)
    return {f"a/{i}.wav|0.000|{i}.000": (int(rng.integers(1, 30)), int(rng.integers(0, 10)))
            for i in range(count)}, rng


def write_part(group, part, items, width, *, value_dtype="float16", resume=False, stop_after=None, shard_rows=256):
    writer = PartWriter(group, part, top_k=K, vocab_size=VOCAB, value_dtype=value_dtype, resume=resume)
    writer._shard_rows = shard_rows  # several shard flushes on small data
    done = set(writer.committed_keys)
    for n, (key, utt) in enumerate(items.items()):
        if key in done:
            continue
        if stop_after is not None and n >= stop_after:
            return writer  # "crash": never closed
        writer.add_utterance(key, frames=utt["dense"][0].shape[0], labels=utt["dense"][0].shape[1] - 1,
                             band_start=utt["starts"], logp=utt["band"]["logp"].reshape(-1, K),
                             ids=utt["band"]["ids"].reshape(-1, K), blank_label=utt["band"]["blank_label"].reshape(-1, 2),
                             label=person_label(utt["dense"][0].shape[1] - 1))
    writer.close()
    return writer


def build(seed=0, count=40, width=None):
    shapes, rng = utterances(seed, count, width)
    return {key: random_utterance(rng, t, u, width) for key, (t, u) in shapes.items()}


@pytest.mark.parametrize("value_dtype", ["float16", "float32"])
@pytest.mark.parametrize("width", [None, 3])
def test_round_trip_dense_and_band(tmp_path, value_dtype, width):
    items = build(width=width)
    path = tmp_path / "s.zarr"
    group = open_for_writing(path, {"k": K})
    write_part(group, 0, items, width, value_dtype=value_dtype)
    with pytest.raises(StoreError, match="no committed kdstore metadata"):
        StoreReader(path)  # not visible before commit
    commit_store(group, make_metadata(value_dtype, "band" if width else "full", width), {"tokenizer.model": b"\x00ab"})
    assert verify_store(path)
    reader = StoreReader(path)
    assert len(reader) == len(items)
    for key, utt in items.items():
        rows = reader.read_key(key)
        values, ids, bl = utt["dense"]
        stored = rows.stored
        assert rows.logp.shape == values.shape and stored.shape == values.shape[:2]
        assert stored.sum() == values.shape[0] * utt["width"]
        np.testing.assert_array_equal(rows.logp[stored], values.astype(value_dtype)[stored])
        np.testing.assert_array_equal(rows.ids[stored], ids[stored])
        np.testing.assert_array_equal(rows.blank_label[stored], bl.astype(value_dtype)[stored])
        band = reader.read_key(key, dense=False)
        np.testing.assert_array_equal(band.band_start, utt["starts"])
        np.testing.assert_array_equal(band.ids, utt["band"]["ids"])
    assert reader.tokenizer_files() == {"tokenizer.model": b"\x00ab"}
    keys = list(items)[::-7]
    assert [r.key for r in reader.read_batch(keys)] == keys


def _arrays(path):
    group = zarr.open_group(str(path), mode="r")
    out = {}
    def walk(g, prefix=""):
        for name, arr in g.arrays():
            out[prefix + name] = np.asarray(arr[:])
        for name, sub in g.groups():
            walk(sub, prefix + name + "/")
    walk(group)
    return out


def test_crash_then_resume_gives_identical_arrays(tmp_path):
    items = build(seed=3, count=60, width=4)
    ref = tmp_path / "ref.zarr"
    group = open_for_writing(ref, {"k": K})
    write_part(group, 0, items, 4)
    commit_store(group, make_metadata(lattice="band", width=4), {"tokenizer.model": b"x"})

    path = tmp_path / "s.zarr"
    group = open_for_writing(path, {"k": K})
    crashed = write_part(group, 0, items, 4, stop_after=45)
    assert 0 < crashed.committed_utterances < 45  # some committed, a tail lost
    with pytest.raises(StoreError, match="--resume"):
        open_for_writing(path, {"k": K})
    with pytest.raises(StoreError, match="settings differ"):
        open_for_writing(path, {"k": K + 1}, resume=True)
    group = open_for_writing(path, {"k": K}, resume=True)
    write_part(group, 0, items, 4, resume=True)
    commit_store(group, make_metadata(lattice="band", width=4), {"tokenizer.model": b"x"})
    assert verify_store(path)
    a, b = _arrays(ref), _arrays(path)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_two_parts_commit_and_read(tmp_path):
    items = build(seed=5, count=30)
    keys = list(items)
    path = tmp_path / "s.zarr"
    group = open_for_writing(path, {"k": K})
    write_part(group, 0, {k: items[k] for k in keys[::2]}, None)
    write_part(group, 1, {k: items[k] for k in keys[1::2]}, None)
    meta = commit_store(group, make_metadata(), {"tokenizer.model": b"x"})
    assert meta.counts.utterances == 30
    assert verify_store(path)
    reader = StoreReader(path)
    for key in keys:
        np.testing.assert_array_equal(reader.read_key(key).ids, items[key]["dense"][1])


def test_incomplete_part_cannot_be_committed(tmp_path):
    items = build(seed=6, count=10)
    group = open_for_writing(tmp_path / "s.zarr", {"k": K})
    write_part(group, 0, items, None, stop_after=5)
    with pytest.raises(StoreError, match="not complete"):
        commit_store(group, make_metadata(), {})


def test_flipped_byte_fails_verify_naming_the_array(tmp_path):
    items = build(seed=7, count=20)
    path = tmp_path / "s.zarr"
    group = open_for_writing(path, {"k": K})
    write_part(group, 0, items, None, shard_rows=1 << 20)
    commit_store(group, make_metadata(), {"tokenizer.model": b"x"})
    shard = next((path / "parts" / "00000" / "node" / "ids" / "c").rglob("*"))
    while shard.is_dir():
        shard = next(shard.iterdir())
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="node/ids"):
        verify_store(path)


def test_missing_store_and_unknown_key_are_clear(tmp_path):
    with pytest.raises(StoreNotFoundError, match="no kdstore store"):
        StoreReader(tmp_path / "nope.zarr")
    items = build(seed=8, count=3)
    path = tmp_path / "s.zarr"
    group = open_for_writing(path, {"k": K})
    write_part(group, 0, items, None)
    commit_store(group, make_metadata(), {"tokenizer.model": b"x"})
    with pytest.raises(StoreError, match="not in store"):
        StoreReader(path).read_key("y")
    with pytest.raises(StoreError, match="already a complete store"):
        open_for_writing(path, {"k": K}, resume=True)


def test_reader_survives_pickling_for_worker_processes(tmp_path):
    import pickle

    items = build(seed=9, count=3)
    path = tmp_path / "s.zarr"
    group = open_for_writing(path, {"k": K})
    write_part(group, 0, items, None)
    commit_store(group, make_metadata(), {"tokenizer.model": b"x"})
    clone = pickle.loads(pickle.dumps(StoreReader(path)))
    key = next(iter(items))
    np.testing.assert_array_equal(clone.read_key(key).ids, items[key]["dense"][1])


def test_hdf5_mirror_round_trips_and_verifies(tmp_path):
    from kdstore.store.convert import convert

    items = build(seed=10, count=25, width=3)
    path = tmp_path / "s.zarr"
    group = open_for_writing(path, {"k": K})
    write_part(group, 0, items, 3)
    commit_store(group, make_metadata(lattice="band", width=3), {"tokenizer.model": b"tok"})
    h5 = tmp_path / "s.h5"
    convert(path, h5)
    assert verify_store(h5)
    zarr_reader, h5_reader = StoreReader(path), StoreReader(h5)
    assert h5_reader.metadata == zarr_reader.metadata and h5_reader.keys == zarr_reader.keys
    for key in items:
        a, b = zarr_reader.read_key(key), h5_reader.read_key(key)
        np.testing.assert_array_equal(a.logp, b.logp)
        np.testing.assert_array_equal(a.stored, b.stored)
    assert h5_reader.tokenizer_files() == {"tokenizer.model": b"tok"}
    back = tmp_path / "back.zarr"
    convert(h5, back)
    assert verify_store(back)
    original, restored = _arrays(path), _arrays(back)
    assert original.keys() == restored.keys()
    for name in original:
        np.testing.assert_array_equal(original[name], restored[name], err_msg=name)
    with pytest.raises(StoreError, match="overwrite"):
        convert(path, h5)


def test_reads_through_an_fsspec_url(tmp_path):
    items = build(seed=12, count=5)
    path = tmp_path / "s.zarr"
    group = open_for_writing(path, {"k": K})
    write_part(group, 0, items, None)
    commit_store(group, make_metadata(), {"tokenizer.model": b"x"})
    reader = StoreReader(f"file://{path}")
    key = next(iter(items))
    np.testing.assert_array_equal(reader.read_key(key).ids, items[key]["dense"][1])


def test_tensorstore_backend_reads_the_same_rows(tmp_path):
    pytest.importorskip("tensorstore")
    items = build(seed=13, count=12, width=3)
    path = tmp_path / "s.zarr"
    group = open_for_writing(path, {"k": K})
    write_part(group, 0, items, 3)
    commit_store(group, make_metadata(lattice="band", width=3), {"tokenizer.model": b"x"})
    default, fast = StoreReader(path), StoreReader(path, backend="tensorstore")
    keys = list(items)[::-1]
    for a, b in zip(default.read_batch(keys), fast.read_batch(keys), strict=True):
        assert a.key == b.key
        np.testing.assert_array_equal(a.logp, b.logp)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.stored, b.stored)


class KeyDataset:
    """Keys only; rows are read by the collate function inside each worker process."""

    def __init__(self, keys):
        self.keys = keys

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, i):
        return self.keys[i]


class ReadRows:
    def __init__(self, reader):
        self.reader = reader

    def __call__(self, keys):
        return [(r.key, r.ids) for r in self.reader.read_batch(keys)]


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_read_the_store(tmp_path, context):
    import torch

    items = build(seed=14, count=12, width=3)
    path = tmp_path / "s.zarr"
    group = open_for_writing(path, {"k": K})
    write_part(group, 0, items, 3)
    commit_store(group, make_metadata(lattice="band", width=3), {"tokenizer.model": b"x"})
    reader = StoreReader(path)
    reader.read(0)  # the parent has used the store before forking
    loader = torch.utils.data.DataLoader(KeyDataset(list(items)), batch_size=4, num_workers=2,
                                         collate_fn=ReadRows(reader), multiprocessing_context=context)
    seen = {key: ids for batch in loader for key, ids in batch}
    assert seen.keys() == items.keys()
    for key, ids in seen.items():
        np.testing.assert_array_equal(ids, reader.read_key(key).ids)


def test_unknown_format_version_and_non_store_paths_are_refused(tmp_path):
    import json as _json

    items = build(seed=15, count=3)
    path = tmp_path / "s.zarr"
    group = open_for_writing(path, {"k": K})
    write_part(group, 0, items, None)
    commit_store(group, make_metadata(), {"tokenizer.model": b"x"})
    meta_file = path / "zarr.json"
    doc = _json.loads(meta_file.read_text())
    doc["attributes"]["kdstore"]["format"] = "kdstore/9"
    meta_file.write_text(_json.dumps(doc))
    with pytest.raises(StoreError, match="'kdstore/9' is not supported"):
        StoreReader(path)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("hello")
    with pytest.raises(StoreError, match="not a Zarr v3 group|no committed kdstore metadata"):
        StoreReader(plain)
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").attrs["something"] = 1
    with pytest.raises(StoreError, match="no committed kdstore metadata"):
        StoreReader(tmp_path / "other.zarr")


def test_store_order_batches_are_contiguous_reads_of_neighbours():
    from kdstore.distill.samplers import StoreOrderBatchSampler
    from kdstore.store.reader import _coalesce

    positions = [(0, 5), (1, 0), (0, 0), (0, 1), (1, 1), (0, 2), (0, 3), (0, 4)]
    store_order = sorted(range(len(positions)), key=lambda i: positions[i])
    sampler = StoreOrderBatchSampler(positions, batch_size=3, seed=1)
    epochs = [list(sampler) for _ in range(6)]
    for batches in epochs:
        # every utterance once, in exactly len(sampler) batches: Lightning stops an epoch after len() batches,
        # so a sampler yielding more would leave utterances out of every epoch without a word
        assert sorted(i for batch in batches for i in batch) == list(range(len(positions)))
        assert len(batches) == len(sampler) == 3
        for batch in batches:  # members are store neighbours, in store order (the last may wrap around)
            ranks = [store_order.index(i) for i in batch]
            assert sum(b != a + 1 for a, b in itertools.pairwise(ranks)) <= 1
    assert len({tuple(map(tuple, batches)) for batches in epochs}) > 1  # cut points move between epochs
    for size in range(1, 8):  # and for any number of utterances
        sampler = StoreOrderBatchSampler([(0, i) for i in range(size)], batch_size=3, seed=size)
        batches = list(sampler)
        assert len(batches) == len(sampler) and sorted(i for b in batches for i in b) == list(range(size))
    assert _coalesce([(10, 20), (0, 5), (5, 10), (30, 31)]) == [(0, 20), (30, 31)]


def _edit_root_attribute(path, edit) -> None:
    """Rewrite a committed store's root attribute ``kdstore`` in place (as a damaged or foreign store would be)."""
    meta_file = path / "zarr.json"
    doc = json.loads(meta_file.read_text())
    edit(doc["attributes"]["kdstore"])
    meta_file.write_text(json.dumps(doc))


def _set(*keys, value):
    def edit(meta):
        for key in keys[:-1]:
            meta = meta[key]
        meta[keys[-1]] = value
    return edit


def _drop(*keys):
    def edit(meta):
        for key in keys[:-1]:
            meta = meta[key]
        del meta[keys[-1]]
    return edit


@pytest.mark.parametrize("edit, field, expected, got", [
    (_set("top_k", value="8"), "kdstore.top_k", "int >= 1", "str '8'"),
    (_set("counts", "nodes", value=12.0), "kdstore.counts.nodes", "int >= 0", "float 12.0"),
    (_drop("front_end"), "kdstore.front_end", "object", "nothing (the field is missing)"),
    (_drop("fingerprint", "teacher_sha256"), "kdstore.fingerprint.teacher_sha256", "str", "nothing (the field is missing)"),
    (_set("value_dtype", value="bfloat16"), "kdstore.value_dtype", "'float16' or 'float32'", "str 'bfloat16'"),
    (_set("front_end", "window_stride", value=None), "kdstore.front_end.window_stride", "float >= 0.0", "null"),
    (_set("blank_id", value=True), "kdstore.blank_id", "int >= 0", "bool True"),
    (_set("lattice", value="band"), "kdstore.band_width", "int >= 1 (lattice is 'band')", "null"),
    (_set("extra", value=[1]), "kdstore.extra", "object", "array [1]"),
    (_set("format", value=1), "kdstore.format", "'kdstore/1' or 'kdstore/2' or 'kdstore/3'", "int 1"),
])
def test_wrong_root_attributes_fail_naming_field_expected_and_got(tmp_path, edit, field, expected, got):
    from kdstore.errors import MetadataError

    path = tmp_path / "s.zarr"
    group = open_for_writing(path, {"k": K})
    write_part(group, 0, build(seed=16, count=3), None)
    commit_store(group, make_metadata(), {"tokenizer.model": b"x"})
    _edit_root_attribute(path, edit)
    with pytest.raises(MetadataError) as caught:
        StoreReader(path)
    err = caught.value
    assert (err.field, err.expected, err.got, err.store) == (field, expected, got, str(path))
    assert str(err) == (f"store {path}: root attribute {field}: expected {expected}, got {got}; the store was not "
                        "written by kdstore or is damaged: re-run dump-teacher")
    assert isinstance(err, StoreError) and "\n" not in str(err)
    import pickle

    assert str(pickle.loads(pickle.dumps(err))) == str(err)  # survives DataLoader workers


def test_unknown_root_attributes_are_ignored(tmp_path):
    """docs/store-format.md section 6: a kdstore/1 reader ignores attributes it does not know."""
    path = tmp_path / "s.zarr"
    group = open_for_writing(path, {"k": K})
    write_part(group, 0, build(seed=17, count=3), None)
    written = commit_store(group, make_metadata(), {"tokenizer.model": b"x"})

    def add_unknown(meta):
        meta["added_by_a_later_writer"] = {"anything": [1, 2]}
        meta["front_end"]["dither"] = 1e-5
        meta["counts"]["bytes"] = 123
        del meta["ctc_top_k"], meta["extra"]  # optional: absent in older stores

    _edit_root_attribute(path, add_unknown)
    reader = StoreReader(path)
    assert reader.metadata == dataclasses.replace(written, extra={})
    assert verify_store(path)


def test_metadata_json_round_trip():
    from kdstore.store.meta_v2 import parse_store_metadata

    meta = dataclasses.replace(make_metadata(lattice="band", width=3), ctc_top_k=2, extra={"settings": {"band": 3}})
    assert StoreMetadata.from_json(meta.to_json()) == meta
    assert parse_store_metadata(json.loads(json.dumps(meta.to_json()))) == meta
    hours_as_int = {**meta.to_json(), "counts": {**meta.to_json()["counts"], "hours": 2}}  # JSON may drop ".0"
    assert StoreMetadata.from_json(hours_as_int).counts.hours == 2.0


def test_verify_checks_each_utterance_band_width_against_the_metadata(tmp_path):
    path = tmp_path / "s.zarr"
    group = open_for_writing(path, {"k": K})
    items = {key: utt for key, utt in build(seed=18, count=12).items() if utt["width"] > 3}
    write_part(group, 0, items, None)  # full rows ...
    commit_store(group, make_metadata(lattice="band", width=3), {"tokenizer.model": b"x"})  # ... said to be W = 3
    with pytest.raises(StoreError, match=r"rows per frame, expected W' = 3"):
        verify_store(path)


def test_verify_reports_band_starts_that_break_the_rules(tmp_path):
    path = tmp_path / "s.zarr"
    group = open_for_writing(path, {"k": K})
    write_part(group, 0, build(seed=19, count=5, width=3), 3)
    commit_store(group, make_metadata(lattice="band", width=3), {"tokenizer.model": b"x"})
    starts = zarr.open_array(str(path / "parts/00000/frame/band_start"), mode="r+")
    starts[0] = 1
    with pytest.raises(StoreError, match=r"parts/00000/frame/band_start utterance 0: band starts must begin at 0"):
        verify_store(path)


def test_ctc_rows_round_trip_and_verify(tmp_path):
    """``--ctc`` stores: frame/ctc_logp and frame/ctc_ids (T rows per utterance, k_ctc wide) and root ctc_top_k."""
    k_ctc = 2
    items = build(seed=20, count=6, width=3)
    rng = np.random.default_rng(20)
    ctc = {}
    for key, utt in items.items():
        frames = utt["starts"].shape[0]
        logits = rng.normal(size=(frames, VOCAB + 1))
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        ids = np.argsort(-logp, -1)[:, :k_ctc]
        ctc[key] = (np.take_along_axis(logp, ids, -1).astype(np.float32), ids)
    path = tmp_path / "ctc.zarr"
    group = open_for_writing(path, {"k": K})
    writer = PartWriter(group, 0, top_k=K, vocab_size=VOCAB, value_dtype="float32", ctc_top_k=k_ctc)
    for key, utt in items.items():
        writer.add_utterance(key, frames=utt["starts"].shape[0], labels=utt["dense"][0].shape[1] - 1,
                             band_start=utt["starts"], logp=utt["band"]["logp"].reshape(-1, K),
                             ids=utt["band"]["ids"].reshape(-1, K), blank_label=utt["band"]["blank_label"].reshape(-1, 2),
                             ctc_logp=ctc[key][0], ctc_ids=ctc[key][1], label=person_label(utt["dense"][0].shape[1] - 1))
    writer.close()
    meta = dataclasses.replace(make_metadata("float32", "band", 3), ctc_top_k=k_ctc)
    commit_store(group, meta, {"tokenizer.model": b"x"})
    assert verify_store(path)
    reader = StoreReader(path)
    assert reader.metadata.ctc_top_k == k_ctc
    for key, (logp, ids) in ctc.items():
        rows = reader.read_key(key)
        np.testing.assert_array_equal(rows.ctc_logp, logp)
        np.testing.assert_array_equal(rows.ctc_ids, ids)
    _edit_root_attribute(path, _set("ctc_top_k", value=None))  # arrays present, metadata says none
    with pytest.raises(StoreError, match="frame/ctc_logp: present but ctc_top_k is None"):
        verify_store(path)
    _edit_root_attribute(path, _set("ctc_top_k", value=k_ctc))
    zarr.open_array(str(path / "parts/00000/frame/ctc_ids"), mode="r+")[1, 0] = VOCAB + 1
    with pytest.raises(StoreError, match=r"frame/ctc_ids: id above blank \(30\) at row 1"):
        verify_store(path)


def test_unfinished_dump_verifies_its_committed_prefix(tmp_path):
    from kdstore.store.verify import is_unfinished, verify_unfinished

    pending = {"top_k": K, "value_dtype": "float16", "band": 4, "ctc": False, "vocab_size": VOCAB}
    items = build(seed=21, count=40, width=4)
    path = tmp_path / "s.zarr"
    crashed = write_part(open_for_writing(path, pending), 0, items, 4, stop_after=30)
    assert is_unfinished(path)
    totals = verify_unfinished(path)
    assert totals["parts"] == 1 and totals["utterances"] == crashed.committed_utterances > 0
    other = tmp_path / "other.zarr"  # the same rows, but the dump's settings say band 2
    write_part(open_for_writing(other, {**pending, "band": 2}), 0, items, 4, stop_after=30)
    with pytest.raises(StoreError, match="expected W' = 2"):
        verify_unfinished(other)


@pytest.mark.parametrize("overwrite", [False, True])
def test_out_naming_a_folder_that_is_not_a_store_deletes_nothing(tmp_path, overwrite):
    from kdstore.store import open_for_writing
    from kdstore.store.local_store import TEMPORARY_SUFFIX

    mine = tmp_path / "my_data"
    (mine / "sub").mkdir(parents=True)
    (mine / "sub" / "notes.txt").write_text("keep me")
    with pytest.raises(StoreError, match="exists and is not a store .no zarr.json.; kdstore deletes nothing"):
        open_for_writing(mine, {"top_k": 4}, overwrite=overwrite)
    assert (mine / "sub" / "notes.txt").read_text() == "keep me"
    a_file = tmp_path / "file.zarr"
    a_file.write_text("x")
    with pytest.raises(StoreError, match="is not a store"):
        open_for_writing(a_file, {"top_k": 4}, overwrite=overwrite)
    leftovers = tmp_path / "crashed.zarr"  # killed before its root was written: reused
    (leftovers / "parts").mkdir(parents=True)
    (leftovers / f".zarr.json.0123456789ab{TEMPORARY_SUFFIX}").write_text("{")
    assert "parts" in open_for_writing(leftovers, {"top_k": 4}, overwrite=overwrite, resume=not overwrite)
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    assert "parts" in open_for_writing(empty, {"top_k": 4}, overwrite=overwrite)
    half_deleted = tmp_path / "half.zarr"  # --overwrite killed after deleting the root's zarr.json
    open_for_writing(half_deleted, {"top_k": 4})
    (half_deleted / "zarr.json").unlink()
    assert "parts" in open_for_writing(half_deleted, {"top_k": 4}, overwrite=True)
