"""``kdstore convert``: the same layout as one HDF5 file (h5py), and back.

Some cluster filesystems (and lhotse/icefall users) prefer one big file to a folder of shards.
Group paths, array names, dtypes and attributes are kept; attributes are JSON strings in HDF5.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from kdstore.errors import StoreError
from kdstore.store import layout
from kdstore.store.backend import is_hdf5
from kdstore.store.meta_v1 import ATTRS_KEY

ROWS_PER_COPY = 1 << 20


def _walk_zarr(group, prefix: str = ""):
    """Yield ('group', path, attrs) and ('array', path, array) depth-first, parents first."""
    yield "group", prefix, dict(group.attrs)
    for name, array in sorted(group.arrays()):
        yield "array", f"{prefix}{name}", array
    for name, sub in sorted(group.groups()):
        yield from _walk_zarr(sub, f"{prefix}{name}/")


def _copy_rows(read: Callable[[int, int], np.ndarray], write: Callable[[int, int, np.ndarray], None], rows: int) -> None:
    for start in range(0, rows, ROWS_PER_COPY):
        stop = min(rows, start + ROWS_PER_COPY)
        write(start, stop, read(start, stop))


def zarr_to_hdf5(src: str, dst: str, compression: str | None = "lzf") -> None:
    import h5py
    import zarr

    group = zarr.open_group(src, mode="r", zarr_format=3)
    if ATTRS_KEY not in group.attrs:
        raise StoreError(f"{src} is not a committed store; finish the dump first")
    tmp = dst + ".partial"
    with h5py.File(tmp, "w") as out:
        for kind, path, obj in _walk_zarr(group):
            if kind == "group":
                target = out.require_group(path.rstrip("/")) if path else out
                for key, value in obj.items():
                    target.attrs[key] = json.dumps(value)
                continue
            shape = tuple(obj.shape)
            chunks = (max(1, min(shape[0], obj.chunks[0])), *shape[1:]) if shape[0] else None
            dataset = out.create_dataset(path, shape=shape, dtype=obj.dtype, chunks=chunks,
                                         compression=compression if shape[0] else None)
            _copy_rows(lambda a, b, arr=obj: np.asarray(arr[a:b]),
                       lambda a, b, data, ds=dataset: ds.__setitem__(slice(a, b), data), shape[0])
    os.replace(tmp, dst)


def hdf5_to_zarr(src: str, dst: str) -> None:
    import h5py
    import zarr

    tmp = dst + ".partial"
    if Path(tmp).exists():
        shutil.rmtree(tmp)
    root = zarr.open_group(tmp, mode="w", zarr_format=3)
    root_attrs: dict[str, Any] = {}
    with h5py.File(src, "r") as source:
        if ATTRS_KEY not in source.attrs:
            raise StoreError(f"{src} is not a committed kdstore HDF5 file")

        def visit(name: str, obj) -> None:
            if isinstance(obj, h5py.Group):
                target = root.require_group(name)
                for key, value in obj.attrs.items():
                    target.attrs[key] = json.loads(value)
                return
            rows = obj.shape[0]
            is_node = "/node/" in f"/{name}" or name.endswith(layout.BAND_START)
            chunk = (obj.chunks[0] if obj.chunks else max(1, rows)) if is_node else max(1, min(rows, layout.INDEX_CHUNK * 4))
            kwargs = {"shards": (chunk * layout.CHUNKS_PER_SHARD, *obj.shape[1:])} if is_node and rows else {}
            array = root.create_array(name, shape=obj.shape, dtype=obj.dtype, chunks=(chunk, *obj.shape[1:]),
                                      compressors=layout.compressors(), fill_value=0, **kwargs)
            _copy_rows(lambda a, b: obj[a:b], lambda a, b, data: array.__setitem__(slice(a, b), data), rows)

        source.visititems(visit)
        root_attrs = {key: json.loads(value) for key, value in source.attrs.items()}
    # Root metadata last, as every writer does: only now is the folder a store.
    for key, value in sorted(root_attrs.items(), key=lambda kv: kv[0] == ATTRS_KEY):
        root.attrs[key] = value
    if Path(dst).exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)


def convert(src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool = False) -> str:
    """Zarr -> HDF5 when ``dst`` ends in .h5/.hdf5, HDF5 -> Zarr when ``src`` does."""
    src, dst = str(src), str(dst)
    if Path(dst).exists() and not overwrite:
        raise StoreError(f"{dst} already exists; pass --overwrite to replace it")
    if is_hdf5(dst) and not is_hdf5(src):
        zarr_to_hdf5(src, dst)
    elif is_hdf5(src) and not is_hdf5(dst):
        hdf5_to_zarr(src, dst)
    else:
        raise StoreError("convert needs one Zarr store and one .h5/.hdf5 file (e.g. S.zarr S.h5, or S.h5 S.zarr)")
    return dst
