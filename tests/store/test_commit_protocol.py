"""Every crash point of the store commit protocol resumes (docs/store-format.md, "Writing").

A dump of a few utterances through kdstore's own writer path (``open_for_writing`` -> ``PartWriter``
per rank -> ``close`` -> ``commit_store``, as ``dump-teacher`` runs it) is killed at its n-th write to
disk, for every n: in a forked child, ``os._exit`` at the n-th file replacement (after the temporary file
is written, before the rename that makes it visible) or deletion. Each crashed folder must not read as
a store, must verify as an unfinished dump, and a ``resume=True`` run must finish it with arrays equal
to an uninterrupted dump's. One rank and three ranks (each rank its own part, writes interleaved the way
concurrent ranks would). Real Zarr stores on disk; no NeMo needed (tests/dump covers the CLI).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from kdstore.errors import StoreError
from kdstore.store import PartWriter, StoreReader, commit_store, local_store, open_for_writing
from kdstore.store.local_store import TEMPORARY_SUFFIX, CrashSafeLocalStore
from kdstore.store.meta_v2 import StoreMetadata
from kdstore.store.part_writer import Label
from kdstore.store.verify import is_unfinished, verify_store, verify_unfinished
from tests.stores import all_arrays, toy_metadata

K, VOCAB, BAND = 4, 30, 2
CHUNK_ROWS = 8  # rows per chunk, and a flush + commit every 8 rows or frames (~every 2 utterances)
BATCH = 2  # utterances per planned batch; batch b belongs to rank b % world (kdstore/dump/ranks.py)
PENDING = {"top_k": K, "value_dtype": "float16", "band": BAND, "ctc": True, "vocab_size": VOCAB,
           "pseudo_label": False, "chunk_rows": CHUNK_ROWS}
CRASH_EXIT = 77


def _utterance(rng: np.random.Generator, frames: int, labels: int) -> dict:
    """Rows of one band utterance obeying the format's rules (sorted top-k log-probs, band starts)."""
    width = labels + 1 if frames == 1 else min(BAND, labels + 1)
    last = labels + 1 - width
    starts = np.sort(rng.integers(0, last + 1, size=frames)).astype(np.int32)
    starts[0], starts[-1] = 0, last
    logits = rng.normal(size=(frames * width, VOCAB + 1))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ids = np.argsort(-logp, axis=-1)[:, :K]
    ctc_logits = rng.normal(size=(frames, VOCAB + 1))
    ctc = ctc_logits - np.log(np.exp(ctc_logits).sum(-1, keepdims=True))
    ctc_ids = np.argsort(-ctc, axis=-1)[:, :K]
    return {"frames": frames, "labels": labels, "band_start": starts,
            "logp": np.take_along_axis(logp, ids, -1).astype(np.float32), "ids": ids,
            "blank_label": np.stack([logp[:, VOCAB], logp[:, 0]], -1).astype(np.float32),
            "occupancy": rng.uniform(0, 1, size=frames * width).astype(np.float32),
            "ctc_logp": np.take_along_axis(ctc, ctc_ids, -1).astype(np.float32), "ctc_ids": ctc_ids,
            "label": Label(ids=np.arange(labels) % VOCAB, text=f"{labels} words", source="person",
                           confidence=-0.5)}


def utterances(count: int, seed: int = 0) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    return {f"a/{i}.wav|0.000|{i}.000": _utterance(rng, int(rng.integers(1, 5)), int(rng.integers(0, 4)))
            for i in range(count)}


def metadata() -> StoreMetadata:
    return toy_metadata(top_k=K, vocab=VOCAB, lattice="band", band_width=BAND, ctc_top_k=K, created="fixed")


def dump(path: Path, items: dict[str, dict], world: int, *, resume: bool = False, mark=lambda step: None) -> None:
    """What ``dump-teacher`` does, with ``world`` ranks in one process: rank 0 opens (or reopens) the root,
    every rank its part; batches go round-robin, the ranks' writes interleave; then every part is closed
    and rank 0 commits. ``mark(step)`` is called as each step of the protocol begins."""
    mark("root creation")
    groups = [open_for_writing(path, PENDING, resume=resume)]
    groups += [open_for_writing(path, PENDING, create=False) for _ in range(1, world)]
    writers = []
    for rank in range(world):
        mark("part creation")
        writers.append(PartWriter(groups[rank], rank, top_k=K, vocab_size=VOCAB, value_dtype="float16",
                                  with_occupancy=True, ctc_top_k=K, resume=resume, chunk_rows=CHUNK_ROWS,
                                  commit_seconds=float("inf"), flush_rows=CHUNK_ROWS))
    mark("appending")
    committed = [set(w.committed_keys) for w in writers]
    keys = list(items)
    batches = [keys[i:i + BATCH] for i in range(0, len(keys), BATCH)]
    for number, batch in enumerate(batches):
        rank = number % world
        for key in batch:
            if key not in committed[rank]:
                writers[rank].add_utterance(key, **items[key])
    for writer in writers:
        mark("part close")
        writer.close()
    mark("root commit")
    commit_store(groups[0], metadata(), {"tokenizer.model": b"tok"})


class Mutations:
    """Counts the store's writes (the rename that makes a file visible) and deletions; ``os._exit`` at
    the ``crash_at``-th one, or, with ``crash_at`` None, records what each one touched and in which step
    of the protocol (``dump``'s ``mark``)."""

    def __init__(self, crash_at: int | None) -> None:
        self.crash_at = crash_at
        self.count = 0
        self.log: list[tuple[str, str]] = []  # (step, what) per write
        self.step = ""
        self._lock = threading.Lock()

    def mark(self, step: str) -> None:
        self.step = step

    def tick(self, what: str) -> None:
        with self._lock:
            self.count += 1
            if self.count == self.crash_at:
                os._exit(CRASH_EXIT)  # a kill: no cleanup, no flush, no finally
            if self.crash_at is None:
                self.log.append((self.step, what))

    def install(self, monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
        replace, delete, delete_dir = local_store._replace, CrashSafeLocalStore.delete, CrashSafeLocalStore.delete_dir

        def counted_replace(temporary: Path, path: Path) -> None:
            self.tick("write " + Path(path).relative_to(root).as_posix())
            replace(temporary, path)

        async def counted_delete(store, key: str) -> None:
            self.tick("delete " + key)
            await delete(store, key)

        async def counted_delete_dir(store, prefix: str) -> None:
            self.tick("delete " + prefix + "/")
            await delete_dir(store, prefix)

        monkeypatch.setattr(local_store, "_replace", counted_replace)
        monkeypatch.setattr(CrashSafeLocalStore, "delete", counted_delete)
        monkeypatch.setattr(CrashSafeLocalStore, "delete_dir", counted_delete_dir)

    def phases(self) -> dict[str, list[int]]:
        """Write numbers (1-based) by step of the protocol, the appending step split into "before the first
        commit" (of that part), "index appended, progress record not yet moved" and "after a commit"."""
        out: dict[str, list[int]] = {}
        committed: set[str] = set()
        for n, (step, what) in enumerate(self.log, start=1):
            name = what.split(" ", 1)[1]
            part = "/".join(name.split("/")[:2]) if name.startswith("parts/0") else ""
            if step == "appending":
                progress = name == f"{part}/zarr.json"
                if part not in committed:
                    step = "before the first commit"
                elif "/utt/" in name or "/label/" in name:
                    step = "index appended, progress record not yet moved"
                else:
                    step = "after a commit"
                if progress:
                    committed.add(part)
            out.setdefault(step, []).append(n)
        return out


def crashed_dump(path: Path, items: dict[str, dict], world: int, crash_at: int, *, resume: bool = False) -> bool:
    """Run ``dump`` in a forked child killed at its ``crash_at``-th write; True if the kill happened."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            with pytest.MonkeyPatch.context() as monkeypatch:
                Mutations(crash_at).install(monkeypatch, path)
                dump(path, items, world, resume=resume)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, CRASH_EXIT), f"the dump killed at write {crash_at} failed on its own (exit {code})"
    return code == CRASH_EXIT




class Reference:
    """An uninterrupted dump (verified), its arrays and its write log."""

    def __init__(self, path: Path, items: dict[str, dict], world: int) -> None:
        self.writes = Mutations(None)
        with pytest.MonkeyPatch.context() as monkeypatch:
            self.writes.install(monkeypatch, path)
            dump(path, items, world, mark=self.writes.mark)
        assert verify_store(path)
        self.path, self.items, self.world = path, items, world
        self.arrays = all_arrays(path)
        self.attributes = json.loads((path / "zarr.json").read_text())["attributes"]

    def check_crash_at(self, n: int, folder: Path, *, resuming: Path | None = None, what: str | None = None) -> None:
        """Kill a dump at write n (with ``resuming``: a resume of a copy of that crashed folder); the folder is
        an unfinished dump (not a store, not corrupt); resuming it gives this store."""
        path = folder / f"crash{n}.zarr"
        what = what or "{} ({})".format(*self.writes.log[n - 1])
        if resuming is not None:
            shutil.copytree(resuming, path)
        assert crashed_dump(path, self.items, self.world, n, resume=resuming is not None), f"write {n} never happened"
        with pytest.raises(StoreError) as refused:
            StoreReader(path)  # a crashed dump never reads as a store
        if (path / "zarr.json").exists():  # else the folder is empty: nothing was written yet
            assert "did not finish; continue it with dump-teacher --resume" in str(refused.value)
        assert is_unfinished(path), f"killed at write {n}: {what}"
        verify_unfinished(path)  # an interrupted dump, not a corruption
        dump(path, self.items, self.world, resume=True)
        arrays = all_arrays(path)
        assert arrays.keys() == self.arrays.keys(), f"killed at write {n}: {what}"
        for name, values in self.arrays.items():
            np.testing.assert_array_equal(arrays[name], values, err_msg=f"killed at write {n}: {what}: {name}")
        assert json.loads((path / "zarr.json").read_text())["attributes"] == self.attributes
        assert not list(path.rglob(f"*{TEMPORARY_SUFFIX}")), f"killed at write {n}: temporary files left"


@pytest.fixture(scope="module", params=[1, 3], ids=["one-rank", "three-ranks"])
def reference(request, tmp_path_factory) -> Reference:
    world = request.param
    return Reference(tmp_path_factory.mktemp("reference") / "ref.zarr", utterances(6 if world == 1 else 9, world),
                     world)


STEPS = ("root creation", "part creation", "before the first commit", "index appended, progress record not yet moved",
         "after a commit", "part close", "root commit")


def test_the_write_log_covers_every_step_of_the_protocol(reference):
    phases = reference.writes.phases()
    assert set(phases) == set(STEPS), sorted(phases)
    commits = [what for step, what in reference.writes.log if step == "appending"
               and re.fullmatch(r"write parts/\d{5}/zarr\.json", what)]
    assert len(commits) >= 3, commits  # several commits while appending: crash points between them
    if reference.world > 1:  # every rank's part goes through creation, its first commit and its close
        names = {what for _, what in reference.writes.log}
        assert {f"write parts/{r:05d}/utt/T/c/0" for r in range(reference.world)} <= names


def test_a_dump_killed_in_every_step_of_the_protocol_resumes(reference, tmp_path):
    """The fast sample: the first and the last write of each step (the slow test below kills at every write)."""
    for numbers in reference.writes.phases().values():
        for n in sorted({numbers[0], numbers[-1]}):
            reference.check_crash_at(n, tmp_path)


def test_a_resume_killed_at_its_own_writes_resumes_again(reference, tmp_path):
    """A crash during --resume (truncating the tail, rewriting the last shard, committing) is one more
    interruption: killed at every 12th of its writes, the resume of the resume still gives the store."""
    phases = reference.writes.phases()
    mid = phases["after a commit"][len(phases["after a commit"]) // 2]  # committed utterances and a tail
    first = tmp_path / "first"
    first.mkdir()
    assert crashed_dump(first / "s.zarr", reference.items, reference.world, mid)
    counted = tmp_path / "counted.zarr"
    shutil.copytree(first / "s.zarr", counted)
    writes = Mutations(None)
    with pytest.MonkeyPatch.context() as monkeypatch:
        writes.install(monkeypatch, counted)
        dump(counted, reference.items, reference.world, resume=True)
    assert writes.count > 50
    for n in [*range(1, writes.count + 1, 12), writes.count]:
        reference.check_crash_at(n, tmp_path, resuming=first / "s.zarr",
                                 what=f"write {mid} of the dump, then write {n} of its resume ({writes.log[n - 1][1]})")


EXHAUSTIVE = "KDSTORE_EXHAUSTIVE"  # set to 1 to kill at every write (~200 + ~300 crashes: 5-15 min on 2 cores)


@pytest.mark.slow
@pytest.mark.parametrize("stride", [
    9,  # every 9th write (and the last) in the default suite
    pytest.param(1, marks=pytest.mark.skipif(not os.environ.get(EXHAUSTIVE), reason=(
        f"every write, minutes on 2 cores: {EXHAUSTIVE}=1 pytest tests/store/test_commit_protocol.py -k every_write"))),
], ids=["every-9th", "every"])
def test_a_dump_killed_at_every_write_resumes_to_the_uninterrupted_store(reference, tmp_path, stride):
    """Every ``stride``-th n, 1 .. all writes of the dump (~200 for one rank, ~300 for three), and the last."""
    count = reference.writes.count
    for n in sorted({*range(1, count + 1, stride), count}):
        reference.check_crash_at(n, tmp_path)
        shutil.rmtree(tmp_path / f"crash{n}.zarr")


def test_commits_come_every_commit_seconds_not_only_at_whole_shards(tmp_path):
    """The window a crash can lose is bounded in time: with a shard far away, buffered utterances are
    committed at the first one added ``commit_seconds`` after the last commit."""
    import time

    items = utterances(3, seed=5)
    group = open_for_writing(tmp_path / "s.zarr", PENDING)
    writer = PartWriter(group, 0, top_k=K, vocab_size=VOCAB, value_dtype="float16", with_occupancy=True,
                        ctc_top_k=K, chunk_rows=1024, commit_seconds=0.3)
    keys = list(items)
    writer.add_utterance(keys[0], **items[keys[0]])
    assert writer.committed_utterances == 0  # 1,024 x 16 rows to a shard: nothing would commit before close
    time.sleep(0.35)
    writer.add_utterance(keys[1], **items[keys[1]])
    assert writer.committed_utterances == 2
    assert verify_unfinished(tmp_path / "s.zarr")["utterances"] == 2


def test_an_abandoned_background_writer_commits_what_it_was_given(tmp_path):
    """An error in the dump's own thread (a teacher failure, Ctrl-C) abandons the writer: the utterances
    already handed to it are committed, not lost, and the part stays resumable (not complete)."""
    from kdstore.store.background import BackgroundWriter

    items = utterances(5, seed=6)
    path = tmp_path / "s.zarr"
    writer = PartWriter(open_for_writing(path, PENDING), 0, top_k=K, vocab_size=VOCAB, value_dtype="float16",
                        with_occupancy=True, ctc_top_k=K, chunk_rows=1024, commit_seconds=float("inf"))
    background = BackgroundWriter(writer)
    for key, rows in items.items():
        background.add_utterance(key, **rows)
    background.abandon()
    assert verify_unfinished(path)["utterances"] == len(items)
    assert not json.loads((path / "parts/00000/zarr.json").read_text())["attributes"]["kdstore_part"]["complete"]
    resumed = PartWriter(open_for_writing(path, PENDING, resume=True), 0, top_k=K, vocab_size=VOCAB,
                         value_dtype="float16", with_occupancy=True, ctc_top_k=K, resume=True)
    assert resumed.committed_keys == list(items)
