"""Dump robustness with a real NeMo teacher: kill -9 + --resume, two ranks (gloo), band stores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kdstore.store import StoreReader
from kdstore.store.verify import verify_store
from tests.stores import all_arrays

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def teacher(demo_corpus, tmp_path_factory) -> Path:
    from tests.models import build_model

    path = tmp_path_factory.mktemp("dump_teacher") / "teacher.nemo"
    build_model("tiny", demo_corpus.tokenizer_dir, seed=11).save_to(str(path))
    return path


def dump_args(teacher, manifest, out, *extra):
    return ["dump-teacher", "--teacher", str(teacher), "--manifest", str(manifest), "--out", str(out),
            "--top-k", "4", "--batch-size", "2", "--chunk-rows", "64", "--no-progress", *extra]


def run_cli(args, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "kdstore.cli.main", *args], check=False, capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=600, **kwargs)


def store_content(path) -> dict[str, tuple]:
    reader = StoreReader(path)
    return {key: (r.band_start, r.logp, r.ids, r.blank_label, r.occupancy)
            for key, r in ((k, reader.read_key(k, dense=False)) for k in reader.keys)}




def part_progress(path: Path) -> int:
    meta = path / "parts" / "00000" / "zarr.json"
    try:
        return int(json.loads(meta.read_text())["attributes"]["kdstore_part"]["utterances"])
    except (OSError, KeyError, ValueError):
        return 0


def kill_after_commits(cli_args: list[str], out: Path, commits: int = 4) -> int:
    """Run ``kdstore CLI_ARGS`` (a dump into ``out``), SIGKILL it once ``commits`` utterances are committed
    (or it ends); returns how many were committed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "kdstore.cli.main", *cli_args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while part_progress(out) < commits and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return part_progress(out)


def test_kill_9_then_resume_equals_uninterrupted(teacher, demo_corpus, tmp_path):
    manifest = demo_corpus.train_manifest
    ref = tmp_path / "ref.zarr"
    assert run_cli(dump_args(teacher, manifest, ref, "--band", "3")).returncode == 0
    out = tmp_path / "out.zarr"
    killed_at = kill_after_commits(dump_args(teacher, manifest, out, "--band", "3"), out)
    assert 0 < killed_at < len(StoreReader(ref)), "the kill must land mid-way"
    result = run_cli(["inspect", str(out)])
    assert result.returncode != 0 and "did not finish" in result.stderr + result.stdout
    result = run_cli(dump_args(teacher, manifest, out, "--band", "3"))
    assert result.returncode != 0 and "--resume" in result.stderr
    result = run_cli(dump_args(teacher, manifest, out, "--band", "3", "--resume"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert verify_store(out)
    a, b = all_arrays(ref), all_arrays(out)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_two_rank_dump_equals_one_rank(teacher, demo_corpus, tmp_path):
    manifest = demo_corpus.train_manifest
    one = tmp_path / "one.zarr"
    assert run_cli(dump_args(teacher, manifest, one)).returncode == 0
    two = tmp_path / "two.zarr"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
                "-m", "kdstore.cli.main", *dump_args(teacher, manifest, two)]
    result = subprocess.run(torchrun, check=False, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert verify_store(two)
    assert len(StoreReader(two).parts) == 2
    a, b = store_content(one), store_content(two)
    assert a.keys() == b.keys()
    for key in a:
        for x, y in zip(a[key], b[key], strict=True):
            if x is not None:
                np.testing.assert_array_equal(x, y, err_msg=key)


def test_band_store_keeps_most_occupancy_and_trains(teacher, demo_corpus, tmp_path):
    from kdstore.store.summary import summarize

    out = tmp_path / "band.zarr"
    assert run_cli(dump_args(teacher, demo_corpus.train_manifest, out, "--band", "4")).returncode == 0
    summary = summarize(out)
    full = tmp_path / "full.zarr"
    assert run_cli(dump_args(teacher, demo_corpus.train_manifest, full, "--band", "full")).returncode == 0
    assert summary["nodes"] < summarize(full)["nodes"]
    assert 0.0 < summary["band_occupancy_kept"] <= 1.0
    reader = StoreReader(out)
    rows = reader.read(0)
    assert rows.stored.sum() == rows.num_frames * min(4, rows.num_labels + 1) or rows.num_frames == 1


def test_defaults_are_band_6_with_ctc_rows_for_a_hybrid_teacher(teacher, demo_corpus, tmp_path):
    """The study's defaults (docs/decisions.md): band W=6, and CTC rows whenever the teacher has a CTC
    head (the `tiny` config is hybrid by default); --no-ctc leaves them out, --ctc on a plain teacher fails."""
    from tests.models import build_model

    default = tmp_path / "default.zarr"
    assert run_cli(dump_args(teacher, demo_corpus.train_manifest, default)).returncode == 0
    meta = StoreReader(default).metadata
    assert (meta.band_width, meta.ctc_top_k) == (6, 4)
    rows = StoreReader(default).read(0)
    assert rows.ctc_logp is not None and rows.ctc_logp.shape == (rows.num_frames, 4)
    plain = tmp_path / "no-ctc.zarr"
    assert run_cli(dump_args(teacher, demo_corpus.train_manifest, plain, "--no-ctc")).returncode == 0
    assert StoreReader(plain).metadata.ctc_top_k is None
    rnnt_only = tmp_path / "rnnt.nemo"
    build_model("tiny", demo_corpus.tokenizer_dir, seed=12, **{"model.aux_ctc": "null"}).save_to(str(rnnt_only))
    auto = tmp_path / "auto.zarr"
    assert run_cli(dump_args(rnnt_only, demo_corpus.train_manifest, auto)).returncode == 0
    assert StoreReader(auto).metadata.ctc_top_k is None
    refused = run_cli(dump_args(rnnt_only, demo_corpus.train_manifest, tmp_path / "x.zarr", "--ctc"))
    assert refused.returncode != 0 and "has no CTC head" in refused.stderr


def test_write_failure_mid_dump_keeps_a_valid_committed_prefix_and_resumes(teacher, demo_corpus, tmp_path):
    import resource

    manifest = demo_corpus.train_manifest
    out = tmp_path / "out.zarr"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    # An ignored SIGXFSZ is inherited by the child: a write past the file-size limit then fails with
    # EFBIG (like a full disk) instead of killing the process.
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "kdstore.cli.main", *dump_args(teacher, manifest, out)],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGXFSZ, previous)
    deadline = time.time() + 300
    while part_progress(out) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the dump finished before the failure could be injected"
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (1, 1))  # from now on, every file write fails: "disk full"
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in stderr and "failed" in stderr and "--resume" in stderr, stderr[-1500:]
    committed = part_progress(out)
    assert committed >= 2
    result = run_cli(["inspect", str(out), "--verify"])
    assert result.returncode == 0, result.stderr
    assert f"unfinished dump: {committed} utterances" in result.stdout
    result = run_cli(dump_args(teacher, manifest, out, "--resume"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert verify_store(out)
    assert len(StoreReader(out)) == sum(1 for line in Path(manifest).read_text().splitlines() if line.strip())


# -- fault 11: every crash point of the commit protocol, through the real CLI (issue 14) ---------------
# A dump-teacher process killed (os._exit, no cleanup) right before the k-th write of a named file of the
# store: the write that would have made the next step of the commit protocol visible.
CRASH_DRIVER = """
import os, sys, threading
from kdstore.store import local_store

store, name, k = os.environ["KDSTORE_TEST_STORE"], os.environ.get("KDSTORE_TEST_CRASH_FILE"), int(os.environ.get("KDSTORE_TEST_CRASH_K", "0"))
rank = os.environ.get("RANK", "0")
crash_here = rank == os.environ.get("KDSTORE_TEST_CRASH_RANK", "0")
log = os.environ.get("KDSTORE_TEST_WRITE_LOG")
seen, lock, replace = {}, threading.Lock(), local_store._replace

def counted(temporary, path):
    rel = os.path.relpath(path, store)
    with lock:
        seen[rel] = seen.get(rel, 0) + 1
        if crash_here and rel == name and seen[rel] == k:
            os._exit(77)
        if log:
            with open(log + "." + rank, "a") as handle:
                handle.write(rel + "\\n")
    replace(temporary, path)

local_store._replace = counted
from kdstore.cli.main import cli
cli()
"""


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (torchrun starts each rank in a session of its own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def run_in_session(command: list[str], env: dict[str, str], timeout: int = 400) -> subprocess.CompletedProcess:
    """Run ``command``; on a timeout kill it and every process below it (torchrun's ranks, which would
    otherwise outlive it holding its output pipes) and fail with what it printed."""
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in [*descendants(proc.pid), proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        stdout, stderr = proc.communicate(timeout=60)
        pytest.fail(f"{' '.join(command[:6])} ... did not end in {timeout} s:\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def run_crashing(tmp_path: Path, args: list[str], out: Path, *, crash_file: str | None = None, k: int = 0,
                 log: Path | None = None, world: int = 1, crash_rank: int = 0):
    """``kdstore ARGS`` (a dump into ``out``), killed right before the ``k``-th write of ``crash_file`` (a path
    relative to ``out``) in rank ``crash_rank``; ``log``: each rank appends the files it writes to LOG.<rank>."""
    driver = tmp_path / "crashing_kdstore.py"
    driver.write_text(CRASH_DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KDSTORE_TEST_STORE": str(out), "KDSTORE_TEST_CRASH_K": str(k),
           "KDSTORE_TEST_CRASH_FILE": crash_file or "", "KDSTORE_TEST_CRASH_RANK": str(crash_rank)}
    if log is not None:
        env["KDSTORE_TEST_WRITE_LOG"] = str(log)
    command = [sys.executable, str(driver), *args] if world == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world), "--master-port",
        str(free_port()), str(driver), *args]
    return run_in_session(command, env)


@pytest.fixture(scope="module")
def reference_dump(teacher, demo_corpus, tmp_path_factory):
    """An uninterrupted one-rank dump (chunks of 64 rows: a commit every utterance or so) and the files it
    wrote, in order."""
    folder = tmp_path_factory.mktemp("reference_dump")
    out, log = folder / "ref.zarr", folder / "writes"
    result = run_crashing(folder, dump_args(teacher, demo_corpus.train_manifest, out), out, log=log)
    assert result.returncode == 0, result.stderr[-2000:]
    return out, (folder / "writes.0").read_text().splitlines()


def assert_resumes_to(reference: Path, out: Path, args: list[str], world: int = 1) -> None:
    """The crashed folder is an unfinished dump (not a store, not corrupt), and --resume finishes it with the
    reference's arrays."""
    result = run_cli(["inspect", str(out), "--verify"])
    assert result.returncode == 0, result.stderr[-1500:]
    assert "unfinished dump:" in result.stdout and "dump-teacher --resume" in result.stdout, result.stdout
    with pytest.raises(Exception, match="did not finish|not a Zarr"):
        StoreReader(out)
    if world == 1:
        result = run_cli([*args, "--resume"])
    else:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        result = run_in_session([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world),
                                 "--master-port", str(free_port()), "-m", "kdstore.cli.main", *args, "--resume"], env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert verify_store(out)
    if world == 1:
        a, b = all_arrays(reference), all_arrays(out)
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    else:  # parts differ from a one-rank dump; every utterance's rows are the same
        a, b = store_content(reference), store_content(out)
        assert a.keys() == b.keys()
        for key in a:
            for x, y in zip(a[key], b[key], strict=True):
                if x is not None:
                    np.testing.assert_array_equal(x, y, err_msg=key)


def test_dump_killed_before_its_first_commit_resumes(teacher, demo_corpus, reference_dump, tmp_path):
    """The issue's case: killed after the part's arrays exist, before any utterance is committed. Before the fix
    --resume said `part parts/00000 has no progress record; dump again with --overwrite`."""
    reference, writes = reference_dump
    out = tmp_path / "out.zarr"
    args = dump_args(teacher, demo_corpus.train_manifest, out)
    assert "parts/00000/node/logp/c/0/0" in writes
    result = run_crashing(tmp_path, args, out, crash_file="parts/00000/node/logp/c/0/0", k=1)
    assert result.returncode == 77, result.stderr[-2000:]
    assert part_progress(out) == 0
    refused = run_cli(args)
    assert refused.returncode != 0 and "--resume" in refused.stderr
    assert_resumes_to(reference, out, args)


@pytest.mark.parametrize("crash_file, which", [
    ("parts/00000/zarr.json", 5),  # the 3rd commit's progress record: its index entries are already appended
    ("parts/00000/zarr.json", -1),  # the part's close: marking it complete
    ("utt/part/zarr.json", 1),  # the root commit, midway: merging the part indexes
    ("zarr.json", 2),  # the root commit's last write: the metadata that makes the folder a store
], ids=["index-appended-progress-not-moved", "part-close", "root-commit-midway", "root-commit-last-write"])
def test_dump_killed_at_each_step_of_the_commit_protocol_resumes(teacher, demo_corpus, reference_dump, tmp_path,
                                                                  crash_file, which):
    reference, writes = reference_dump
    count = writes.count(crash_file)
    k = count if which == -1 else which
    assert 1 <= k <= count, (crash_file, count)
    out = tmp_path / "out.zarr"
    args = dump_args(teacher, demo_corpus.train_manifest, out)
    result = run_crashing(tmp_path, args, out, crash_file=crash_file, k=k)
    assert result.returncode == 77, result.stderr[-2000:]
    assert_resumes_to(reference, out, args)


def test_two_rank_dump_with_a_rank_killed_before_its_first_commit_resumes(teacher, demo_corpus, reference_dump,
                                                                          tmp_path):
    """Rank 1 dies right before its first data write (its part exists, nothing committed); torchrun stops rank 0
    wherever it is. --resume under torchrun finishes both parts; every utterance equals the one-rank dump's."""
    reference, _ = reference_dump
    out = tmp_path / "two.zarr"
    args = dump_args(teacher, demo_corpus.train_manifest, out)
    result = run_crashing(tmp_path, args, out, crash_file="parts/00001/node/logp/c/0/0", k=1, world=2,
                          crash_rank=1)
    assert result.returncode != 0, "the injected kill of rank 1 must fail the torchrun job"
    assert (out / "parts" / "00001").is_dir() and not (out / "parts" / "00001" / "node" / "logp" / "c" / "0" / "0").exists()
    assert_resumes_to(reference, out, args, world=2)


def test_two_ranks_with_different_numbers_of_batches_finish(teacher, demo_corpus, tmp_path):
    """Three batches on two ranks: rank 0 runs two forwards, rank 1 one, as after any --resume (which skips
    committed batches). NeMo's encoders all-reduce the batch length in every forward once torch.distributed
    is up, so rank 0's second forward waited forever for rank 1, which sat in the final barrier."""
    lines = [line for line in Path(demo_corpus.train_manifest).read_text().splitlines() if line.strip()][:3]
    manifest = tmp_path / "three.json"
    manifest.write_text("\n".join(lines) + "\n")
    one, two = tmp_path / "one.zarr", tmp_path / "two.zarr"

    def args(out: Path) -> list[str]:  # batches of one utterance
        command = dump_args(teacher, manifest, out)
        command[command.index("--batch-size") + 1] = "1"
        return command

    assert run_cli(args(one)).returncode == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = run_in_session([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                             str(free_port()), "-m", "kdstore.cli.main", *args(two)], env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(StoreReader(two).parts) == 2
    a, b = store_content(one), store_content(two)
    assert a.keys() == b.keys() and len(a) == 3
    for key in a:
        for x, y in zip(a[key], b[key], strict=True):
            if x is not None:
                np.testing.assert_array_equal(x, y, err_msg=key)
