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
import zarr

from kdstore.store import StoreReader
from kdstore.store.verify import verify_store

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


def all_arrays(path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}

    def walk(group, prefix=""):
        for name, array in group.arrays():
            out[prefix + name] = np.asarray(array[:])
        for name, sub in group.groups():
            walk(sub, prefix + name + "/")

    walk(zarr.open_group(str(path), mode="r"))
    return out


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
