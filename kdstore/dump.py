"""Stage 1: run a NeMo transducer teacher once over a manifest and write its top-k lattice store.

The batch plan (duration-sorted) is fixed up front from the manifest. Each batch is encoded once,
the joint is evaluated in time slices, reduced to the top-k per node plus the blank/next-label pair,
and appended to the store, which becomes visible only when committed at the end.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdstore import __version__
from kdstore.data import TranscribedAudioDataset, collate, duration_sorted_batches
from kdstore.manifest import file_sha256, read_manifest
from kdstore.nemo_files import read_tokenizer_files, restore_model
from kdstore.store import StoreWriter
from kdstore.store.layout import label_slot_fill
from kdstore.store.metadata import Counts, Fingerprint, FrontEnd, StoreMetadata
from kdstore.teacher import encode_teacher_forced, frames_per_slice_for, lattice_rows, time_sliced_log_probs


@dataclass(frozen=True)
class DumpSettings:
    top_k: int = 8
    batch_size: int = 8
    value_dtype: str = "float16"  # float32 for exactness tests
    device: str = "cpu"
    overwrite: bool = False
    progress: bool = False


def front_end_of(model) -> FrontEnd:
    """The settings that decide T, read from a NeMo model's config."""
    pre = model.cfg.preprocessor
    return FrontEnd(
        sample_rate=int(pre.get("sample_rate", model.cfg.sample_rate)),
        window_size=float(pre.get("window_size", 0.02)),
        window_stride=float(pre.get("window_stride", 0.01)),
        features=int(pre.get("features", 64)),
        normalize=str(pre.get("normalize", "per_feature")),
        subsampling_factor=int(model.cfg.encoder.get("subsampling_factor", 1)),
    )


def dump_teacher(teacher_path: str | Path, manifest_path: str | Path, out: str | Path,
                 settings: DumpSettings = DumpSettings()) -> StoreMetadata:
    """Write ``out`` (a kdstore/1 Zarr store) from the teacher's teacher-forced lattices."""
    from tqdm import tqdm

    entries = read_manifest(manifest_path)
    model = restore_model(teacher_path, map_location=settings.device)
    vocab = int(model.decoder.vocab_size)
    blank = int(model.decoder.blank_idx)
    top_k = min(settings.top_k, vocab + 1)
    front_end = front_end_of(model)
    dataset = TranscribedAudioDataset(entries, model.tokenizer.text_to_ids, front_end.sample_rate)
    plan = duration_sorted_batches(entries, settings.batch_size)
    fill = label_slot_fill(np.dtype(settings.value_dtype))

    writer = StoreWriter(out, top_k=top_k, vocab_size=vocab, value_dtype=settings.value_dtype,
                         overwrite=settings.overwrite)
    bar = tqdm(total=len(entries), desc="dump-teacher", unit="utt", disable=not settings.progress)
    with torch.inference_mode():
        for batch_indices in plan:
            batch = collate([dataset[i] for i in batch_indices])
            encoded = encode_teacher_forced(model, batch.signal.to(settings.device), batch.signal_len.to(settings.device),
                                            batch.tokens.to(settings.device), batch.tokens_len.to(settings.device))
            nodes = encoded.prediction.shape[-1]
            slice_frames = frames_per_slice_for(len(batch_indices), nodes, vocab + 1)
            rows: list[list[tuple[torch.Tensor, ...]]] = [[] for _ in batch_indices]
            for t0, log_probs in time_sliced_log_probs(model, encoded, slice_frames):  # (B, t, U+1, V+1)
                for b in range(len(batch_indices)):
                    frames_b = int(encoded.encoded_len[b]) - t0
                    if frames_b <= 0:
                        continue
                    labels_b = int(batch.tokens_len[b])
                    rows[b].append(lattice_rows(log_probs[b, :frames_b, : labels_b + 1], batch.tokens[b].to(log_probs.device),
                                              labels_b, top_k, blank, fill))
            for b, key in enumerate(batch.keys):
                values, ids, blank_label = (torch.cat(parts, 0).cpu().numpy() for parts in zip(*rows[b]))
                writer.add_utterance(key, values, ids, blank_label)
            bar.update(len(batch_indices))
    bar.close()

    hours = sum(e.duration for e in entries) / 3600.0
    metadata = StoreMetadata(
        top_k=top_k,
        value_dtype=settings.value_dtype,  # type: ignore[arg-type]
        id_dtype=str(writer.id_dtype),  # type: ignore[arg-type]
        blank_id=blank,
        vocab_size=vocab,
        fingerprint=Fingerprint(
            teacher_sha256=file_sha256(teacher_path),
            teacher_class=type(model).__name__,
            teacher_params=int(sum(p.numel() for p in model.parameters())),
            tokenizer_sha256=_sha256_bytes(read_tokenizer_files(teacher_path)["tokenizer.model"]),
            manifest_sha256=file_sha256(manifest_path),
        ),
        front_end=front_end,
        counts=Counts(utterances=writer.num_utterances, nodes=writer.num_nodes, frames=writer.num_frames,
                      hours=round(hours, 6)),
        kdstore_version=__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        extra={"teacher_path": str(teacher_path), "manifest_path": str(manifest_path)},
    )
    writer.commit(metadata, read_tokenizer_files(teacher_path))
    return metadata


def _sha256_bytes(payload: bytes) -> str:
    import hashlib

    return hashlib.sha256(payload).hexdigest()
