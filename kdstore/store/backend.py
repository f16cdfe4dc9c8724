"""Read access to the same layout in a Zarr v3 store (local or fsspec URL) or an HDF5 file.

Both expose ``array(name)[a:b]`` slicing and the ``kdstore`` metadata, so the reader, verifier and
converter are written once. Handles are opened lazily and reopened after a fork.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kdstore.errors import MetadataError, StoreError, StoreNotFoundError
from kdstore.store.json_parse import describe
from kdstore.store.meta_v1 import ATTRS_KEY


def is_hdf5(path: str) -> bool:
    return path.endswith((".h5", ".hdf5"))


def _decode_json(meta: Any, path: str) -> Any:
    """The root attribute as JSON values: Zarr stores it as an object, HDF5 as a JSON string."""
    if not isinstance(meta, str):
        return meta
    try:
        return json.loads(meta)
    except json.JSONDecodeError:
        raise MetadataError(ATTRS_KEY, "a JSON object", describe(meta), path) from None


class Source:
    """A lazily opened, fork-safe handle on a committed store."""

    def __init__(self, path: str | os.PathLike, allow_unfinished: bool = False) -> None:
        """``allow_unfinished``: also open a store whose dump has not committed (for verify/inspect)."""
        self.path = str(path)
        self._handle: Any = None
        self._pid = -1
        self._arrays: dict[str, Any] = {}  # opened arrays, per process (opening re-parses zarr.json)
        if "://" not in self.path and not Path(self.path).exists():
            partial = Path(self.path + ".partial")
            hint = f" (an unfinished dump is at {partial}; re-run dump-teacher)" if partial.exists() else ""
            raise StoreNotFoundError(f"no kdstore store at {self.path}{hint}")
        meta = self.attrs().get(ATTRS_KEY)
        if meta is None and allow_unfinished:
            self.metadata_json = {}
            return
        if meta is None:
            raise StoreError(f"{self.path} has no committed kdstore metadata: the dump did not finish; "
                             "continue it with dump-teacher --resume")
        self.metadata_json: Any = _decode_json(meta, self.path)  # parsed by meta_v1.parse_store_metadata

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handle": None, "_pid": -1, "_arrays": {}}

    def handle(self) -> Any:
        if self._handle is None or self._pid != os.getpid():
            self._handle = self._open()
            self._pid = os.getpid()
            self._arrays = {}
        return self._handle

    def _open(self) -> Any:
        if is_hdf5(self.path):
            import h5py

            try:
                return h5py.File(self.path, "r")
            except OSError as err:
                raise StoreNotFoundError(f"{self.path} is not a readable HDF5 file ({err})") from None
        import zarr

        try:
            return zarr.open_group(self.path, mode="r", zarr_format=3)
        except (FileNotFoundError, ValueError, KeyError) as err:
            raise StoreNotFoundError(f"{self.path} is not a Zarr v3 group ({err}); is it a kdstore store?") from None

    def attrs(self) -> dict[str, Any]:
        return dict(self.handle().attrs)

    def array(self, name: str) -> Any:
        handle = self.handle()
        if name not in self._arrays:
            try:
                self._arrays[name] = handle[name]
            except KeyError:
                raise StoreError(f"{self.path}: array {name!r} is missing") from None
        return self._arrays[name]

    def has(self, name: str) -> bool:
        try:
            self.handle()[name]
        except KeyError:
            return False
        return True

    def children(self, name: str) -> list[str]:
        group = self.handle()[name]
        return sorted(group.keys()) if hasattr(group, "keys") else []


class TensorstoreRows:
    """Optional fast row reads through tensorstore (``pip install tensorstore``): 1.6x zarr-python at the
    default chunking, ~6.7x at 4096-row chunks (docs/benchmarks.md, "Store").

    Only row reads go through it; the index is read with zarr-python. tensorstore hangs in a forked
    process if the parent used it first (field notes), so arrays are opened lazily per process and
    a DataLoader using it should start workers with ``multiprocessing_context="spawn"`` or
    ``"forkserver"`` whenever the parent process also reads rows.
    """

    def __init__(self, path: str) -> None:
        try:
            import tensorstore  # noqa: F401
        except ImportError:
            raise StoreError("reader backend 'tensorstore' needs: pip install tensorstore") from None
        if "://" in path and not path.startswith("file://"):
            raise StoreError("the tensorstore reader handles local stores; use the default zarr reader for URLs")
        self.path = path.removeprefix("file://")
        self._arrays: dict[str, Any] = {}
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": {}, "_pid": -1}

    def _array(self, name: str) -> Any:
        import tensorstore as ts

        if self._pid != os.getpid():
            self._arrays, self._pid = {}, os.getpid()
        if name not in self._arrays:
            spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": f"{self.path}/{name}"}}
            self._arrays[name] = ts.open(spec, read=True).result()
        return self._arrays[name]

    def read_ranges(self, name: str, ranges: list[tuple[int, int]]) -> list:
        """All ranges requested at once (concurrent), then gathered."""
        array = self._array(name)
        futures = [array[a:b].read() for a, b in ranges]
        return [future.result() for future in futures]
