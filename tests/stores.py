"""Helpers for tests that compare stores on disk (shared by several test folders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def all_arrays(path: Path | str) -> dict[str, np.ndarray]:
    """Every array of the Zarr group at ``path``, by its path inside the group (``parts/00000/node/logp``)."""
    import zarr

    out: dict[str, np.ndarray] = {}

    def walk(group, prefix: str = "") -> None:
        for name, array in group.arrays():
            out[prefix + name] = np.asarray(array[:])
        for name, sub in group.groups():
            walk(sub, prefix + name + "/")

    walk(zarr.open_group(str(path), mode="r"))
    return out
