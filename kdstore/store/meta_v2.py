"""Root metadata of a ``kdstore/2`` store: ``kdstore/1`` plus the labels the lattices were forced on.

``kdstore/2`` (docs/store-format.md) stores, per utterance, the label sequence the teacher was forced
on, its text, where it came from (a person's transcript or the teacher's own hypothesis) and a
confidence. The version changes because the meaning of U and of ``node/blank_label[..., 1]`` changes:
in a ``kdstore/1`` store they follow the manifest's transcript, in a ``kdstore/2`` store they follow
the stored label, which for a pseudo-labelled utterance is not in any manifest. A ``kdstore/1``
reader must therefore refuse a ``kdstore/2`` store; this reader takes both (``labels`` is None for
``kdstore/1`` stores, whose labels are the manifest's transcripts).

Every kdstore reader parses through :func:`parse_store_metadata` here; the field parsers of the
shared part live in :mod:`kdstore.store.meta_v1`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from kdstore.errors import MetadataError, StoreError
from kdstore.store import meta_v1
from kdstore.store.json_parse import (
    MISSING,
    describe,
    parse_choice,
    parse_float,
    parse_int,
    parse_member,
    parse_object,
)
from kdstore.store.meta_v1 import ATTRS_KEY, Counts, Fingerprint, FrontEnd

FORMAT_VERSION: Literal["kdstore/2"] = "kdstore/2"
READABLE_VERSIONS = (meta_v1.FORMAT_VERSION, FORMAT_VERSION)
PSEUDO_LABEL_MODES = ("missing", "all")  # which manifest lines the teacher labels
DECODINGS = ("greedy_batch", "beam")
CONFIDENCE_MEASURES = ("mean_token_logp",)
LABEL_SOURCES = ("person", "teacher")  # utt/label_source: 0 = person, 1 = teacher

__all__ = ["ATTRS_KEY", "FORMAT_VERSION", "Counts", "Fingerprint", "FrontEnd", "LabelInfo", "StoreMetadata",
           "parse_store_metadata"]


@dataclass(frozen=True, kw_only=True)
class LabelInfo:
    """How a ``kdstore/2`` store's labels were made (root field ``labels``).

    ``pseudo_label``: "missing" (the teacher labelled the lines without text) or "all" (every line,
    ``--pseudo-label``); ``decoding`` and ``beam_size``: the teacher's search; ``confidence``: what
    ``utt/confidence`` holds ("mean_token_logp": log P(label | audio) / max(U, 1), nats per token);
    ``min_confidence``: teacher labels below it were left out (None: none were); the counts say how
    many utterances carry a teacher label and how many were left out, and why.
    """

    pseudo_label: Literal["missing", "all"]
    decoding: Literal["greedy_batch", "beam"]
    beam_size: int | None
    confidence: Literal["mean_token_logp"] = "mean_token_logp"
    min_confidence: float | None
    teacher_labelled: int
    dropped_low_confidence: int = 0
    dropped_empty: int = 0

    @property
    def search(self) -> str:
        """The teacher's search in words: ``greedy_batch`` or ``beam (size N)``."""
        return self.decoding if self.beam_size is None else f"{self.decoding} (size {self.beam_size})"


@dataclass(frozen=True, kw_only=True)
class StoreMetadata(meta_v1.StoreMetadata):
    """Everything in the root attribute ``kdstore``; ``labels`` is None for ``kdstore/1`` stores."""

    format: Literal["kdstore/1", "kdstore/2"] = FORMAT_VERSION  # type: ignore[assignment]
    labels: LabelInfo | None = None

    @property
    def has_labels(self) -> bool:
        """True when the store holds the labels its lattices were forced on (``kdstore/2``)."""
        return self.labels is not None

    # A kdstore/1 or kdstore/2 store always holds an RNN-T teacher's lattice; kdstore/3
    # (kdstore.store.meta_v3) turns these into fields, so every reader asks any version the same way.
    @property
    def teacher_kind(self) -> str:
        """"rnnt": the teacher of a ``kdstore/1`` or ``kdstore/2`` store is an RNN-T (or hybrid) model."""
        return "rnnt"

    @property
    def tdt(self) -> None:
        """No TDT settings: see :class:`kdstore.store.meta_v3.TDTInfo`."""
        return None

    @property
    def is_tdt(self) -> bool:
        """False: only ``kdstore/3`` stores hold a TDT teacher's lattice."""
        return False

    @property
    def tdt_durations(self) -> tuple[int, ...] | None:
        """None: no duration outputs (``kdstore/3`` TDT stores list them)."""
        return None

    @classmethod
    def from_json(cls, data: Any, store: str = "") -> StoreMetadata:
        """:func:`parse_store_metadata`; ``store`` (the path) goes into error messages."""
        return parse_store_metadata(data, store)


def _optional_number(data: Any, field: str) -> float | None:
    return None if data is None else parse_float(data, field)


def _optional_positive(data: Any, field: str) -> int | None:
    return None if data is None else parse_int(data, field, minimum=1)


def parse_labels(data: Any, field: str = f"{ATTRS_KEY}.labels") -> LabelInfo:
    """The ``labels`` object of a ``kdstore/2`` store; unknown members are ignored."""
    obj = parse_object(data, field)
    return LabelInfo(
        pseudo_label=parse_member(obj, field, "pseudo_label", parse_choice, choices=PSEUDO_LABEL_MODES),
        decoding=parse_member(obj, field, "decoding", parse_choice, choices=DECODINGS),
        beam_size=_optional_positive(obj.get("beam_size"), f"{field}.beam_size"),
        confidence=parse_member(obj, field, "confidence", parse_choice, choices=CONFIDENCE_MEASURES,
                                default="mean_token_logp"),
        min_confidence=_optional_number(obj.get("min_confidence"), f"{field}.min_confidence"),
        teacher_labelled=parse_member(obj, field, "teacher_labelled", parse_int, minimum=0),
        dropped_low_confidence=parse_member(obj, field, "dropped_low_confidence", parse_int, minimum=0, default=0),
        dropped_empty=parse_member(obj, field, "dropped_empty", parse_int, minimum=0, default=0),
    )


def parse_store_metadata(data: Any, store: str = "") -> StoreMetadata:
    """The root attribute ``kdstore`` (decoded JSON) of a ``kdstore/1`` or ``kdstore/2`` store.

    Raises:
        MetadataError: a required field is missing or has the wrong type (message names ``store``).
        StoreError: a format version this kdstore does not read.
    """
    try:
        obj = parse_object(data, ATTRS_KEY)
        version = obj.get("format", MISSING)
        if not isinstance(version, str):
            raise MetadataError(f"{ATTRS_KEY}.format", " or ".join(map(repr, READABLE_VERSIONS)), describe(version))
        if version not in READABLE_VERSIONS:
            raise StoreError(f"store format {version!r} is not supported by this kdstore (it reads "
                             f"{', '.join(READABLE_VERSIONS)}); re-dump the teacher with this version or upgrade kdstore")
        labels = parse_labels(obj.get("labels", MISSING)) if version == FORMAT_VERSION else None
        return StoreMetadata(format=version, labels=labels, **meta_v1.parse_store_fields(obj))  # type: ignore[arg-type]
    except (MetadataError, StoreError) as err:
        raise meta_v1.with_store(err, store) from None


def upgrade(meta: meta_v1.StoreMetadata) -> StoreMetadata:
    """A ``kdstore/1`` metadata object as this module's class (``labels`` None, format unchanged)."""
    if isinstance(meta, StoreMetadata):
        return meta
    return StoreMetadata(**{f.name: getattr(meta, f.name) for f in dataclasses.fields(meta_v1.StoreMetadata)})
