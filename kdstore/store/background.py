"""Write in a background thread so the teacher never waits on disk.

Compression and Zarr I/O release the GIL for most of their work, so one writer thread overlaps
well with the teacher's forward pass. A bounded queue applies back-pressure instead of hoarding
memory; an error in the thread is re-raised in the caller on its next call.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import Any

from kdstore.store.part_writer import PartWriter

_STOP = object()


class BackgroundWriter:
    def __init__(self, writer: PartWriter, max_pending: int = 64) -> None:
        self.writer = writer
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kdstore-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is None:
                try:
                    key, kwargs = item
                    self.writer.add_utterance(key, **kwargs)
                except BaseException as err:  # noqa: BLE001 - re-raised in the caller
                    self._error = err

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def add_utterance(self, key: str, **kwargs: Any) -> None:
        self._raise_if_failed()
        self._queue.put((key, kwargs))

    def close(self) -> None:
        """Drain the queue, then flush and mark the part complete."""
        self._queue.put(_STOP)
        self._thread.join()
        self._raise_if_failed()
        self.writer.close()

    def abandon(self) -> None:
        """Stop the thread without completing the part: committed utterances stay resumable, and what the
        thread was given is committed too (unless writing is what failed), so ``--resume`` redoes little.
        A failure of that last commit is left to the error being handled: the part stays resumable."""
        self._queue.put(_STOP)
        self._thread.join()
        if self._error is None:
            with contextlib.suppress(Exception):
                self.writer.flush()
