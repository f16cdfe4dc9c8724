"""File helpers every stage shares: a content hash and a crash-safe write.

``sha256_file`` is the fingerprint kdstore records for teachers, manifests, tokenizers and exported
models (store metadata, export metadata), so there is one definition of it. ``write_atomic`` is how
kdstore writes the small text and JSON files a later step reads (manifests, side files): a reader
sees the old file or the new one, never half of one, even if the writer is killed mid-way.
Standard library only, so every package, including those kept free of torch, may import it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

_CHUNK_BYTES = 1 << 20


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; done once, at import
    os.umask(mask)
    return mask


_NEW_FILE_MODE = 0o666 & ~_umask()


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data`` (the same digest ``sha256_file`` gives for a file holding ``data``)."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of the file at ``path``, read in 1 MiB blocks so large checkpoints fit in memory.

    Raises ``OSError`` (``FileNotFoundError`` and so on) if the file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: str | Path, data: str | bytes | Iterable[str]) -> None:
    """Replace ``path`` with ``data`` atomically.

    ``data`` is text (written as UTF-8 with ``\\n`` line ends), bytes, or an iterable of text pieces
    (lines, each with its own ``\\n``; consumed lazily, so a generator of rows is never held whole).
    The data goes to a hidden temporary file in the same folder, is flushed and fsync-ed, then
    ``os.replace``-d over ``path`` (atomic on POSIX and Windows within one file system). On any error,
    the temporary file is removed and ``path`` is left as it was. The parent folder must exist. The new
    file keeps the mode of the one it replaces (a new one gets the umask's default).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        # mkstemp makes the file private (0600); give it the mode an ordinary write would.
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else _NEW_FILE_MODE)
        if isinstance(data, bytes):
            with os.fdopen(fd, "wb") as raw:
                raw.write(data)
                raw.flush()
                os.fsync(raw.fileno())
        else:
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
                if isinstance(data, str):
                    handle.write(data)
                else:
                    handle.writelines(data)
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
