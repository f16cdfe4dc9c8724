"""Stage 1: run a NeMo transducer teacher once over a manifest and write its top-k lattice store.

The batch plan (duration-sorted batches) is fixed up front from the manifest and dealt to ranks
round-robin; each rank writes its own part in a background thread. Per batch: encode once, evaluate
the joint in time slices, keep per node the top-k log-probs and the (blank, next-label) pair, and,
with ``--band W``, only the W label positions per frame that hold the most of the teacher's own
alignment occupancy. ``--resume`` recomputes the same batches and skips committed utterances, so
the finished store equals an uninterrupted dump's.

RNN-T and hybrid RNN-T/CTC teachers write ``kdstore/2`` stores; TDT teachers (and TDT-CTC hybrids) write
``kdstore/3`` ones, which add per node the D-way duration distribution and record the durations and the
teacher's TDT loss settings in the root attribute (docs/store-format.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from kdstore import __version__
from kdstore.dump.pseudo_labels import configure_search, search_name
from kdstore.dump.ranks import Ranks, discover, local_forwards, shutdown
from kdstore.dump.rows import RowSpec, batch_rows
from kdstore.errors import AudioError, ConfigError, KdstoreError, StoreError
from kdstore.files import sha256_bytes, sha256_file
from kdstore.inputs.batches import TranscribedAudioDataset, collate, duration_sorted_batches
from kdstore.inputs.screening import BadInputPolicy, Skipped, rules_for, screened_manifest
from kdstore.nemo.checkpoint import read_tokenizer_files, restore_model
from kdstore.nemo.frontend import front_end_from_config
from kdstore.nemo.model_kind import check_model_for, is_tdt
from kdstore.nemo.tdt import TDTSettings, tdt_settings
from kdstore.store import PartWriter, commit_store, meta_v3, open_for_writing
from kdstore.store.background import BackgroundWriter
from kdstore.store.layout import label_slot_fill
from kdstore.store.meta_v2 import Counts, Fingerprint, LabelInfo, StoreMetadata

DEFAULT_BAND = 6  # the study: band 6 at least as good as the full lattice at 42% of the bytes


@dataclass(frozen=True)
class DumpSettings:
    top_k: int = 8
    batch_size: int = 8
    value_dtype: str = "float16"  # float32 for exactness tests
    band: int | None = DEFAULT_BAND  # None: full lattice (docs/decisions.md: band 6 by default)
    ctc: bool | None = None  # CTC head's top-k per frame: None stores them when the teacher has a CTC head
    chunk_rows: int | None = None  # rows per chunk (None: ~1 MB of node/logp); 16 chunks per shard
    device: str = "cpu"
    precision: str = "fp32"  # fp32 | bf16 (teacher forward under autocast)
    overwrite: bool = False
    resume: bool = False
    skip_bad: bool = False  # skip unusable manifest lines (listed in <out>.skipped.jsonl) instead of stopping
    pseudo_label: bool = False  # the teacher labels every line (else only lines without text)
    beam_size: int = 1  # the teacher's search for pseudo-labels: 1 = greedy batch, > 1 = beam
    min_confidence: float | None = None  # leave out teacher labels below this mean log-prob per token (nats)
    progress: bool = False

    def __post_init__(self) -> None:
        """Raises ConfigError (one line, named as the CLI option) for a value no dump could use."""
        for name, value in (("--top-k", self.top_k), ("--batch-size", self.batch_size), ("--beam-size", self.beam_size)):
            if value < 1:
                raise ConfigError(f"{name} must be 1 or more, got {value}")
        if self.min_confidence is not None and not (math.isfinite(self.min_confidence) and self.min_confidence <= 0):
            raise ConfigError(f"--min-confidence is a mean log-prob per token: a finite number of nats <= 0 (0 is "
                              f"certain), got {self.min_confidence}; choose it from the table of kdstore label-quality")


def _autocast(settings: DumpSettings):
    if settings.precision == "bf16":
        return torch.autocast(device_type=torch.device(settings.device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def dump_teacher(teacher_path: str | Path, manifest_path: str | Path, out: str | Path,
                 settings: DumpSettings = DumpSettings()) -> StoreMetadata | None:
    """Write ``out``: a ``kdstore/2`` store for an RNN-T teacher, a ``kdstore/3`` one for a TDT teacher.
    Returns the metadata on the committing rank, else None."""
    from tqdm import tqdm

    ranks = discover()
    try:
        model = restore_model(teacher_path, map_location=settings.device)
        local_forwards(model)  # NeMo's per-forward all-reduce would deadlock ranks with different batch counts
        check_model_for("dump-teacher", model, teacher_path, subword=True, tdt=True)
        tdt = tdt_settings(model, teacher_path) if is_tdt(model) else None
        vocab, blank = int(model.decoder.vocab_size), int(model.decoder.blank_idx)
        top_k = min(settings.top_k, vocab + 1)
        has_ctc = getattr(model, "ctc_decoder", None) is not None
        if settings.ctc and not has_ctc:
            raise KdstoreError(f"--ctc needs a hybrid RNNT-CTC teacher; {type(model).__name__} has no CTC head")
        ctc = has_ctc if settings.ctc is None else settings.ctc
        ctc_top_k = top_k if ctc else None
        front_end = front_end_from_config(model.cfg)
        side_file = Path(str(out) + ".skipped.jsonl")
        policy = BadInputPolicy(skip_bad=settings.skip_bad, side_file=side_file if ranks.is_main else None,
                                listed_in=str(side_file))
        entries = screened_manifest(manifest_path, model.tokenizer.text_to_ids, rules_for(model, front_end), policy,
                                    untranscribed=True)
        if settings.pseudo_label:
            entries = [dataclasses.replace(e, text="") for e in entries]
        labelling = any(not e.text for e in entries)
        if labelling:
            configure_search(model, settings.beam_size)
        if ranks.is_main and not settings.skip_bad and (labelling or settings.min_confidence is not None):
            side_file.write_text("")  # this run's left-out teacher labels only
        if not ranks.is_main:  # what this rank leaves out while dumping; rank 0 gathers it at commit
            policy.side_file = _rank_side_file(side_file, ranks.rank)
            policy.side_file.write_text("")
        teacher_sha, manifest_sha = sha256_file(teacher_path), sha256_file(manifest_path)
        pending = {"teacher_sha256": teacher_sha, "manifest_sha256": manifest_sha, "top_k": top_k,
                   "value_dtype": settings.value_dtype, "band": settings.band, "batch_size": settings.batch_size,
                   "world_size": ranks.world, "chunk_rows": settings.chunk_rows, "ctc": ctc,
                   "skip_bad": settings.skip_bad, "vocab_size": vocab, "pseudo_label": settings.pseudo_label,
                   "beam_size": settings.beam_size, "min_confidence": settings.min_confidence,
                   "tdt": _tdt_json(tdt)}
        if ranks.is_main:
            try:
                group = open_for_writing(out, pending, overwrite=settings.overwrite, resume=settings.resume)
            except OSError as err:
                verb = "replace" if settings.overwrite else "resume" if settings.resume else "create"
                raise StoreError(f"cannot {verb} the store {out}: {err.strerror} ({err.filename or out}); choose a "
                                 "writable --out (or fix its permissions) and run again") from None
        ranks.barrier()
        if not ranks.is_main:
            group = open_for_writing(out, pending, create=False)
        part = PartWriter(group, ranks.rank, top_k=top_k, vocab_size=vocab, value_dtype=settings.value_dtype,
                          with_occupancy=settings.band is not None, ctc_top_k=ctc_top_k, resume=settings.resume,
                          chunk_rows=settings.chunk_rows, num_durations=len(tdt.durations) if tdt else None)
        committed = set(part.committed_keys)
        writer = BackgroundWriter(part)
        dataset = TranscribedAudioDataset(entries, model.tokenizer.text_to_ids, front_end.sample_rate,
                                          untranscribed=True)
        plan = [b for n, b in enumerate(duration_sorted_batches(entries, settings.batch_size)) if ranks.owns(n)]
        spec = RowSpec(top_k=top_k, blank=blank, vocab=vocab, label_fill=label_slot_fill(np.dtype(settings.value_dtype)),
                       band=settings.band, ctc=ctc, durations=tdt.durations if tdt else None)
        bar = tqdm(total=sum(len(b) for b in plan), desc=f"dump-teacher[{ranks.rank}]", unit="utt",
                   disable=not settings.progress, initial=len(committed))
        try:
            for batch_indices in plan:
                todo = [entries[i].key not in committed for i in batch_indices]
                if not any(todo):
                    continue  # the whole batch was committed before an interruption
                _dump_batch(model, dataset, batch_indices, todo, writer, settings, spec, policy, str(manifest_path))
                bar.update(sum(todo))
            writer.close()
        except OSError as err:
            writer.abandon()
            raise StoreError(f"writing {out} failed ({err}); what was committed stays valid: fix the disk or "
                             "permissions and rerun with --resume") from err
        except BaseException:
            writer.abandon()  # committed utterances stay, --resume continues from there
            raise
        finally:
            bar.close()
        ranks.barrier()
        if not ranks.is_main:
            return None
        _gather_rank_side_files(side_file, ranks, policy)
        dropped = {kind: sum(item.kind == kind for item in policy.skipped) for kind in ("low_confidence", "empty_label")}
        tokenizer_files = read_tokenizer_files(teacher_path)
        metadata = StoreMetadata(
            top_k=top_k, value_dtype=settings.value_dtype,  # type: ignore[arg-type]
            id_dtype=str(part.id_dtype),  # type: ignore[arg-type]
            blank_id=blank, vocab_size=vocab,
            lattice="full" if settings.band is None else "band", band_width=settings.band, ctc_top_k=ctc_top_k,
            fingerprint=Fingerprint(
                teacher_sha256=teacher_sha, teacher_class=type(model).__name__,
                teacher_params=int(sum(p.numel() for p in model.parameters())),
                tokenizer_sha256=sha256_bytes(tokenizer_files["tokenizer.model"]),
                manifest_sha256=manifest_sha,
            ),
            front_end=front_end,
            counts=Counts(utterances=0, nodes=0, frames=0, hours=round(_stored_seconds(group, entries) / 3600, 6)),
            labels=LabelInfo(pseudo_label="all" if settings.pseudo_label else "missing",
                             decoding=search_name(settings.beam_size),  # type: ignore[arg-type]
                             beam_size=settings.beam_size if settings.beam_size > 1 else None,
                             min_confidence=settings.min_confidence, teacher_labelled=part_teacher_labels(group),
                             dropped_low_confidence=dropped["low_confidence"], dropped_empty=dropped["empty_label"]),
            kdstore_version=__version__,
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            extra={"teacher_path": str(teacher_path), "manifest_path": str(manifest_path),
                   "settings": {k: v for k, v in asdict(settings).items() if k not in ("overwrite", "resume", "progress")}},
        )
        if tdt is not None:
            metadata = _as_tdt_metadata(metadata, tdt)
        bad = len(policy.skipped) - sum(dropped.values())
        if policy.skipped:
            metadata = dataclasses.replace(metadata, extra={**metadata.extra, "skipped_lines": bad,
                                                            "skipped_file": str(side_file)})
        try:
            left_out = {item.key: item.kind for item in policy.skipped
                        if item.kind in ("low_confidence", "empty_label") and item.key}
            return commit_store(group, metadata, tokenizer_files, left_out)
        except OSError as err:
            raise StoreError(f"committing {out} failed ({err}); every part is complete: fix the disk or "
                             "permissions and rerun with --resume to commit") from err
    finally:
        shutdown(ranks)


def _tdt_json(tdt: TDTSettings | None) -> dict | None:
    """The TDT settings a ``--resume`` must match (None: an RNN-T teacher, as before TDT stores existed)."""
    return None if tdt is None else {"durations": list(tdt.durations), "sigma": tdt.sigma, "omega": tdt.omega}


def _as_tdt_metadata(metadata: StoreMetadata, tdt: TDTSettings) -> meta_v3.StoreMetadata:
    """The ``kdstore/3`` metadata of a TDT teacher's store: ``metadata`` plus ``teacher_kind`` and ``tdt``."""
    fields = {f.name: getattr(metadata, f.name) for f in dataclasses.fields(metadata) if f.name != "format"}
    return meta_v3.StoreMetadata(**fields, format=meta_v3.FORMAT_VERSION, teacher_kind="tdt",
                                 tdt=meta_v3.TDTInfo(durations=tdt.durations, sigma=tdt.sigma, omega=tdt.omega))


def _rank_side_file(side_file: Path, rank: int) -> Path:
    return side_file.with_name(f"{side_file.name}.rank{rank}")


def _gather_rank_side_files(side_file: Path, ranks: Ranks, policy: BadInputPolicy) -> None:
    """Rank 0, after the last barrier: append what the other ranks left out to the side file (and count
    it), then remove their files."""
    for rank in range(1, ranks.world):
        path = _rank_side_file(side_file, rank)
        if not path.is_file():
            continue
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        for line in lines:
            row = json.loads(line)
            policy.skipped.append(Skipped(row["kind"], row["file"], row["line"], row["utterance"], row["reason"],
                                          row.get("raw"), label=row.get("label"), confidence=row.get("confidence"),
                                          key=row.get("key")))
        if lines:
            with side_file.open("a", encoding="utf-8") as handle:
                handle.write("\n".join(lines) + "\n")
        path.unlink()


def _stored_seconds(group, entries) -> float:
    """Seconds of audio of the utterances the parts hold (not of every manifest line: some were left out)."""
    from kdstore.store import layout

    stored: set[str] = set()
    for name in group[layout.PARTS_GROUP].group_keys():
        part = group[f"{layout.PARTS_GROUP}/{name}"]
        offsets = np.asarray(part[layout.KEY_OFFSET][:])
        stored.update(layout.decode_keys(offsets, np.asarray(part[layout.KEY_BYTES][:]).tobytes()))
    return sum(e.duration for e in entries if e.key in stored)


def part_teacher_labels(group) -> int:
    """How many committed utterances, over every part, carry a teacher label."""
    from kdstore.store import layout

    total = 0
    for name in group[layout.PARTS_GROUP].group_keys():
        part = group[f"{layout.PARTS_GROUP}/{name}"]
        n = int(dict(part.attrs.get(layout.PART_PROGRESS_ATTR, {})).get("utterances", 0))
        total += int((np.asarray(part[layout.LABEL_SOURCE][:n]) == layout.SOURCE_CODES["teacher"]).sum())
    return total


def _load_items(dataset, batch_indices, todo, policy: BadInputPolicy) -> tuple[list[dict], list[bool], list[int]]:
    """Audio + tokens for a planned batch; with --skip-bad, an utterance whose audio fails to decode is
    dropped (deterministically, so a resumed dump drops it again) and reported. Returns the items, their
    todo flags and their dataset indices."""
    items, kept_todo, kept = [], [], []
    for index, needed in zip(batch_indices, todo, strict=True):
        try:
            items.append(dataset[index])
            kept_todo.append(needed)
            kept.append(index)
        except AudioError as err:
            if not policy.skip_bad:
                raise
            if needed:
                policy.reject(dataset.entries[index], "unreadable_audio", str(err).split(": ", 1)[-1],
                              "re-encode or remove it")
    return items, kept_todo, kept


def _dump_batch(model, dataset, batch_indices, todo, writer, settings: DumpSettings, spec: RowSpec,
                policy: BadInputPolicy, manifest: str) -> None:
    """Teacher forward on one planned batch (labelling its untranscribed utterances first); rows of the
    not-yet-committed utterances to the writer, or, for a teacher label that is empty or below
    ``settings.min_confidence``, a line in the side file instead."""
    items, todo, kept = _load_items(dataset, batch_indices, todo, policy)
    if not any(todo):
        return
    entries = [dataset.entries[i] for i in kept]
    with torch.inference_mode(), _autocast(settings):
        for (key, rows), entry in _rows_in_order(model, items, todo, spec, settings, entries):
            _check_finite(rows, entry, manifest, settings)
            label = rows["label"]
            reason = _drop_reason(label, settings.min_confidence)
            if reason is None:
                writer.add_utterance(key, **rows)
            else:
                kind, why = reason
                raw = entry.raw if entry.raw is not None else json.dumps(
                    {"audio_filepath": entry.audio_filepath, "duration": entry.duration, "offset": entry.offset})
                policy.drop(Skipped(kind, manifest, entry.line, entry.audio_filepath, why, raw,
                                    label=label.text, confidence=label.confidence, key=entry.key))


def _check_finite(rows: dict, entry, manifest: str, settings: DumpSettings) -> None:
    """Raise ``StoreError`` (nothing of the utterance written) when the teacher's values for ``entry`` hold
    NaN or infinity: the audio passed screening (it is finite), so the teacher or its precision is at fault."""
    for name in ("logp", "ctc_logp", "occupancy", "duration_logp"):
        values = rows.get(name)
        if values is None:
            continue
        finite = np.isfinite(values)
        if not finite.all():
            raise StoreError(
                f"{manifest}:{entry.line}: the teacher's {name} for {entry.audio_filepath} holds "
                f"{int(finite.size - finite.sum())} NaN or infinite values of {finite.size} (precision "
                f"{settings.precision}); nothing of it was written and committed utterances stay: check the teacher "
                "(NaN weights?), try --precision fp32, or leave the line out")


def _rows_in_order(model, items, todo, spec, settings, entries):
    """``batch_rows`` of the batch, paired with the entries it yields for (the todo ones, in order)."""
    wanted = [e for e, t in zip(entries, todo, strict=True) if t]
    by_key = {e.key: e for e in wanted}
    for key, rows in batch_rows(model, collate(items), todo, spec, settings.device, [e.text for e in entries]):
        yield (key, rows), by_key[key]


def _drop_reason(label, min_confidence: float | None) -> tuple[str, str] | None:
    """Why a teacher label is left out of the store (kind, reason), or None to keep it. Person labels
    are always kept."""
    if label.source != "teacher":
        return None
    if len(label.ids) == 0:
        return "empty_label", "the teacher heard no words (empty hypothesis)"
    if min_confidence is not None and label.confidence < min_confidence:
        return "low_confidence", (f"teacher label confidence {label.confidence:.3f} nats per token is below "
                                  f"--min-confidence {min_confidence}")
    return None
