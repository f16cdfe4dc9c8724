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


def toy_metadata(*, top_k: int, vocab: int, value_dtype: str = "float16", lattice: str = "full",
                 band_width: int | None = None, ctc_top_k: int | None = None, created: str = "now"):
    """Root metadata of a hand-written store (no teacher): fixed fingerprint and front end, no labels made."""
    from kdstore.store.meta_v2 import Counts, Fingerprint, FrontEnd, LabelInfo, StoreMetadata

    return StoreMetadata(
        top_k=top_k, value_dtype=value_dtype, id_dtype="uint16", blank_id=vocab, vocab_size=vocab,
        lattice=lattice, band_width=band_width, ctc_top_k=ctc_top_k,
        fingerprint=Fingerprint(teacher_sha256="t", teacher_class="C", teacher_params=1,
                                tokenizer_sha256="tok", manifest_sha256="m"),
        front_end=FrontEnd(sample_rate=16000, window_size=0.025, window_stride=0.01, features=80,
                           normalize="per_feature", subsampling_factor=8),
        counts=Counts(utterances=0, nodes=0, frames=0, hours=0.0), kdstore_version="test", created=created,
        labels=LabelInfo(pseudo_label="missing", decoding="greedy_batch", beam_size=None, min_confidence=None,
                         teacher_labelled=0),
    )
