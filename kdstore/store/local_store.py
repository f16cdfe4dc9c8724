"""A Zarr ``LocalStore`` whose every write replaces its file atomically (temporary file + rename).

The commit protocol (docs/store-format.md, "Writing") relies on it: a write that a crash interrupts
leaves the file as it was, never half written. That matters because appending rows rewrites the
shard file holding the previous commit's last rows (Zarr rewrites a whole shard to change one chunk
of it). zarr-python >= 3.1.3 writes this way too; kdstore does not rely on the installed version.
A crash can leave a temporary file behind: :func:`remove_temporaries` deletes them on ``--resume``.
Object stores (``s3://`` and the like) replace objects atomically already and are used as they are.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

from zarr.core.buffer import Buffer
from zarr.storage import LocalStore

TEMPORARY_SUFFIX = ".kdstore-tmp"


def _replace(temporary: Path, path: Path) -> None:
    """The moment a write becomes visible (one rename). Kept separate so tests can crash right before it."""
    os.replace(temporary, path)


def write_file(path: Path, payload: bytes | memoryview) -> None:
    """Write ``payload`` to ``path`` so that a crash leaves either the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{TEMPORARY_SUFFIX}")
    try:
        with open(temporary, "wb") as handle:
            handle.write(payload)
        _replace(temporary, path)
    except Exception:
        temporary.unlink(missing_ok=True)
        raise


def remove_temporaries(root: str | Path) -> int:
    """Delete the temporary files an interrupted writer left under ``root``; returns how many."""
    removed = 0
    for path in Path(root).rglob(f"*{TEMPORARY_SUFFIX}"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


class CrashSafeLocalStore(LocalStore):
    """``LocalStore`` with atomic ``set``: what the commit protocol needs from a local folder."""

    async def set(self, key: str, value: Buffer) -> None:
        if not self._is_open:
            await self._open()
        self._check_writable()
        if not isinstance(value, Buffer):
            raise TypeError(f"CrashSafeLocalStore.set(): value must be a Buffer, got {type(value)}")
        await asyncio.to_thread(write_file, self.root / key, value.to_bytes())

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        if not (self.root / key).exists():
            await self.set(key, value)
