"""kdstore.files: the one sha256 and the one atomic write."""

from __future__ import annotations

import hashlib
import os

import pytest

from kdstore.files import sha256_bytes, sha256_file, write_atomic


def test_sha256_file_matches_hashlib(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)  # spans several read blocks
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest() == sha256_bytes(data)


@pytest.mark.parametrize("data", ["a\nb\n", b"\x00\x01", iter(["x\n", "y\n"])])
def test_write_atomic_writes_text_bytes_and_lines(tmp_path, data):
    path = tmp_path / "out.json"
    write_atomic(path, data)
    expected = {str: b"a\nb\n", bytes: b"\x00\x01"}.get(type(data), b"x\ny\n")
    assert path.read_bytes() == expected
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_write_atomic_leaves_old_file_on_error(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old\n")
    path.chmod(0o640)

    def rows():
        yield "new\n"
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_atomic(path, rows())
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    write_atomic(path, "new\n")
    assert path.read_text() == "new\n" and path.stat().st_mode & 0o777 == 0o640
