"""``kdstore inspect``: what a store holds, at a glance."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from kdstore.store import layout
from kdstore.store.backend import Source
from kdstore.store.reader import StoreReader
from kdstore.store.verify import row_blocks


def _disk_bytes(path: str) -> int | None:
    if "://" in path:
        return None
    p = Path(path)
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def summarize(path: str | os.PathLike) -> dict[str, Any]:
    """Utterances, hours, nodes, bytes per node, top-k mass and, for band stores, the occupancy kept."""
    reader = StoreReader(path)
    meta = reader.metadata
    source = Source(path)
    nodes = mass_sum = 0.0
    for part, p in reader.parts.items():
        base = layout.part_name(part)
        total = int(p.node_offset[-1])
        nodes += total
        for _, block in row_blocks(source.array(f"{base}/{layout.LOGP}"), total, f"{base}/{layout.LOGP}"):
            mass_sum += float(np.exp(block.astype(np.float64)).sum())
    size = _disk_bytes(str(path))
    summary: dict[str, Any] = {
        "format": meta.format,
        "teacher": f"{meta.fingerprint.teacher_class} ({meta.fingerprint.teacher_params / 1e6:.2f}M params)",
        "utterances": len(reader),
        "hours": round(meta.counts.hours, 4),
        "frames": meta.counts.frames,
        "nodes": int(nodes),
        "parts": len(reader.parts),
        "lattice": meta.lattice if meta.lattice == "full" else f"band (W={meta.band_width})",
        "top_k": meta.top_k,
        "ctc_top_k": meta.ctc_top_k,  # None: no CTC rows (a plain RNN-T teacher, or dump-teacher --no-ctc)
        "vocab_size": meta.vocab_size,
        "teacher_kind": meta.teacher_kind,  # "rnnt" or "tdt" (a TDT teacher's store also holds node/duration_logp)
        "tdt_durations": list(meta.tdt.durations) if meta.tdt is not None else None,
        "value_dtype": meta.value_dtype,
        "frame_shift_s": meta.front_end.frame_shift_s,
        "bytes_on_disk": size,
        "bytes_per_node": round(size / nodes, 2) if size and nodes else None,
        "mb_per_audio_hour": round(size / 1e6 / meta.counts.hours, 2) if size and meta.counts.hours else None,
        "mean_topk_mass": round(mass_sum / max(1.0, nodes), 6),
        "created": meta.created,
    }
    if reader.has_occupancy:
        # An RNN-T alignment visits exactly T + U nodes, so the full lattice's occupancy sums to T + U per
        # utterance; a TDT alignment visits one node per arc, a number the dump stored (utt/occupancy_sum).
        # The stored occupancy over that is the mass the band keeps.
        kept = visited = 0.0
        for part, p in reader.parts.items():
            base = f"{layout.part_name(part)}/{layout.OCCUPANCY}"
            for _, block in row_blocks(source.array(base), int(p.node_offset[-1]), base):
                kept += float(block.astype(np.float64).sum())
            if meta.is_tdt:
                sums = source.array(f"{layout.part_name(part)}/{layout.OCCUPANCY_SUM}")
                visited += float(np.asarray(sums[: len(p.frames)]).astype(np.float64).sum())
            else:
                visited += float(p.frames.sum() + p.labels.sum())
        summary["band_occupancy_kept"] = round(kept / max(visited, 1.0), 6)
    if meta.labels is not None:
        labels = [reader.label(i) for i in range(len(reader))]
        teacher = [lab.confidence for lab in labels if lab.source == "teacher"]
        summary["person_labels"] = len(labels) - len(teacher)  # utterances forced on the manifest's transcript
        summary["teacher_labels"] = len(teacher)  # utterances whose label is the teacher's hypothesis
        if teacher:
            summary["teacher_search"] = meta.labels.search
            summary["teacher_label_confidence_median"] = round(float(np.median(teacher)), 4)  # nats per token
            summary["teacher_label_confidence_min"] = round(min(teacher), 4)
        else:
            summary.update(teacher_search=None, teacher_label_confidence_median=None, teacher_label_confidence_min=None)
        summary["min_confidence"] = meta.labels.min_confidence  # None: no teacher label was filtered
        summary["left_out_low_confidence"] = meta.labels.dropped_low_confidence
        summary["left_out_empty"] = meta.labels.dropped_empty
    return summary
