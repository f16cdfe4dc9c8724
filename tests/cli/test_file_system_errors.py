"""A path the file system will not write (read-only mount, no permission) gets one line from every
command, never a traceback, and nothing is lost (issue 14, fault 7)."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from kdstore.cli.main import cli

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` read-only for this process: a read-only bind mount as root (root ignores permissions),
    else no write permission. Skips the test where neither can be had."""
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, check=False).returncode == 0
        if not mounted:
            pytest.skip("root without mount: cannot make a folder read-only")
        try:
            if subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True, check=False).returncode:
                pytest.skip("cannot remount read-only")
            yield
        finally:
            subprocess.run(["umount", str(folder)], check=True)
    else:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
        for path, mode in modes.items():
            path.chmod(mode & ~0o222)
        try:
            yield
        finally:
            for path, mode in modes.items():
                path.chmod(mode)


@pytest.fixture(scope="module")
def small(demo_corpus, tmp_path_factory):
    from kdstore.assets import demo_teacher_dir

    folder = tmp_path_factory.mktemp("fs")
    manifest = folder / "m.json"
    manifest.write_text("".join(line + "\n" for line in Path(demo_corpus.train_manifest).read_text().splitlines()[:4]))
    return demo_teacher_dir() / "teacher.nemo", manifest


def test_overwriting_a_read_only_store_is_one_line_and_deletes_nothing(small, tmp_path):
    from kdstore.store.verify import verify_store

    teacher, manifest = small
    folder = tmp_path / "stores"
    folder.mkdir()
    out = folder / "s.zarr"
    args = ["dump-teacher", "--teacher", str(teacher), "--manifest", str(manifest), "--out", str(out), "--no-progress"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    files = sorted(p.relative_to(out) for p in out.rglob("*"))
    with read_only(folder):
        result = CliRunner().invoke(cli, [*args, "--overwrite"])
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
        assert f"cannot replace the store {out}" in result.output and "choose a writable --out" in result.output
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == files and verify_store(out)


def test_a_read_only_output_folder_stops_training_and_export_in_one_line(small, demo_corpus, tmp_path):
    teacher, manifest = small
    folder = tmp_path / "out"
    folder.mkdir()
    with read_only(folder):
        result = CliRunner().invoke(cli, [
            "train-student", "--config", "tiny", "--no-progress", f"model.train_ds.manifest_filepath={manifest}",
            f"model.tokenizer.dir={demo_corpus.tokenizer_dir}", "model.enable_kd=false", "trainer.max_steps=1",
            "model.train_ds.batch_size=2", f"run.output={folder / 's.nemo'}"])
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        last = result.output.strip().splitlines()[-1]
        assert last.startswith("Error: cannot write or read") and ("read-only" in last or "permission denied" in last)
        result = CliRunner().invoke(cli, ["export-onnx", "--model", str(teacher), "--out", str(folder / "onnx")])
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert result.output.strip().splitlines()[-1].startswith("Error: cannot write or read"), result.output


def test_only_file_system_errors_are_shortened():
    from kdstore.cli.common import file_system_message

    assert "read-only" in file_system_message(OSError(errno.EROFS, "Read-only file system", "/x"))
    assert file_system_message(OSError(errno.ENOSPC, "No space left on device")).startswith(
        "cannot write or read: no space left on the device")
    assert file_system_message(OSError(errno.ECONNREFUSED, "Connection refused")) is None  # a bug keeps its traceback
