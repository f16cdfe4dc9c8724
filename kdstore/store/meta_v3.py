"""Root metadata of a ``kdstore/3`` store: ``kdstore/2`` plus the teacher's kind, for TDT teachers.

A Token-and-Duration Transducer teacher (TDT; Xu et al. 2023, arXiv 2304.06795) predicts per lattice
node a token distribution over V+1 (as an RNN-T) and, separately, a distribution over D durations. Its
lattice has other arcs (a token or blank may advance d frames), so the meaning of ``node/occupancy`` and
of the label confidence changes, and a store gains ``node/duration_logp`` [rows, D] and
``utt/occupancy_sum`` (docs/store-format.md). A ``kdstore/2`` reader would take such a store for an
RNN-T one, so it must refuse it: hence the new version. RNN-T dumps still write ``kdstore/2`` (their
content did not change); ``kdstore/3`` with ``teacher_kind: "rnnt"`` is valid too and means the same as
``kdstore/2``.

Every kdstore reader parses through :func:`parse_store_metadata` here (all three versions); the shared
field parsers live in :mod:`kdstore.store.meta_v1` and :mod:`kdstore.store.meta_v2`.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any, Literal

from kdstore.errors import MetadataError, StoreError
from kdstore.store import meta_v1, meta_v2
from kdstore.store.json_parse import MISSING, describe, parse_choice, parse_float, parse_member, parse_object
from kdstore.store.meta_v1 import ATTRS_KEY, Counts, Fingerprint, FrontEnd
from kdstore.store.meta_v2 import LABEL_SOURCES, LabelInfo

FORMAT_VERSION: Literal["kdstore/3"] = "kdstore/3"
READABLE_VERSIONS = (meta_v1.FORMAT_VERSION, meta_v2.FORMAT_VERSION, FORMAT_VERSION)
TEACHER_KINDS = ("rnnt", "tdt")

__all__ = ["ATTRS_KEY", "FORMAT_VERSION", "LABEL_SOURCES", "READABLE_VERSIONS", "TEACHER_KINDS", "Counts", "Fingerprint",
           "FrontEnd", "LabelInfo", "StoreMetadata", "TDTInfo", "parse_store_metadata", "parse_tdt"]


@dataclass(frozen=True, kw_only=True)
class TDTInfo:
    """A TDT teacher's duration outputs and training-loss settings (root field ``tdt``).

    ``durations``: frames per duration output, in joint order (logit V+1+i is ``durations[i]``; strictly
    ascending, with 0 and 1, as NeMo's TDT loss requires); column i of ``node/duration_logp`` is
    ``log P(durations[i] | t, u)``. ``sigma`` (logit under-normalisation) and ``omega`` (weight of the
    plain RNN-T loss) are the teacher's ``loss.tdt_kwargs``, recorded for a student that wants the same
    loss; the stored log-probs never include sigma (they are the teacher's normalised distributions).
    """

    durations: tuple[int, ...]
    sigma: float = 0.0
    omega: float = 0.0


@dataclass(frozen=True, kw_only=True)
class StoreMetadata(meta_v2.StoreMetadata):
    """Everything in the root attribute ``kdstore``, any readable version.

    ``teacher_kind`` is "rnnt" (RNN-T, hybrid RNN-T/CTC: every ``kdstore/1`` and ``kdstore/2`` store) or
    "tdt"; ``tdt`` is set exactly for TDT teachers (which need ``kdstore/3``).
    """

    format: Literal["kdstore/1", "kdstore/2", "kdstore/3"] = FORMAT_VERSION  # type: ignore[assignment]
    teacher_kind: Literal["rnnt", "tdt"] = "rnnt"
    tdt: TDTInfo | None = None

    def __post_init__(self) -> None:
        if (self.teacher_kind == "tdt") != (self.tdt is not None):
            raise StoreError(f"teacher_kind {self.teacher_kind!r} and tdt {self.tdt!r} disagree: a TDT store needs "
                             "its durations, an RNN-T store has none")
        if self.tdt is not None and self.format != FORMAT_VERSION:
            raise StoreError(f"a TDT teacher's store must be {FORMAT_VERSION}, not {self.format}")
        if self.format == FORMAT_VERSION and self.labels is None:
            raise StoreError(f"a {FORMAT_VERSION} store records how its labels were made (labels)")

    @property
    def is_tdt(self) -> bool:
        """True for a TDT teacher's store (``node/duration_logp`` in every part)."""
        return self.tdt is not None

    @property
    def tdt_durations(self) -> tuple[int, ...] | None:
        """The teacher's durations (frames per duration output) of a TDT store, else None."""
        return self.tdt.durations if self.tdt is not None else None

    def to_json(self) -> dict[str, Any]:
        """The root attribute; ``kdstore/1`` and ``kdstore/2`` metadata serialise as those versions did
        (without ``teacher_kind`` and ``tdt``)."""
        data = dataclasses.asdict(self)
        if self.format != FORMAT_VERSION:
            data.pop("teacher_kind")
            data.pop("tdt")
        elif self.tdt is not None:
            data["tdt"]["durations"] = list(self.tdt.durations)
        return data

    @classmethod
    def from_json(cls, data: Any, store: str = "") -> meta_v2.StoreMetadata:  # type: ignore[override]
        """:func:`parse_store_metadata`; ``store`` (the path) goes into error messages."""
        return parse_store_metadata(data, store)


def _parse_durations(value: Any, field: str) -> tuple[int, ...]:
    ok = isinstance(value, list) and value and all(isinstance(d, int) and not isinstance(d, bool) for d in value)
    if not ok or any(b <= a for a, b in itertools.pairwise(value)) or 0 not in value or 1 not in value:
        raise MetadataError(field, "array of ints, strictly ascending, with 0 and 1", describe(value))
    return tuple(int(d) for d in value)


def parse_tdt(data: Any, field: str = f"{ATTRS_KEY}.tdt") -> TDTInfo:
    """The ``tdt`` object of a TDT store; unknown members are ignored. Raises MetadataError."""
    obj = parse_object(data, field)
    omega = parse_member(obj, field, "omega", parse_float, minimum=0.0, default=0.0)
    if omega > 1.0:
        raise MetadataError(f"{field}.omega", "float in [0, 1]", describe(omega))
    return TDTInfo(durations=_parse_durations(obj.get("durations", MISSING), f"{field}.durations"),
                   sigma=parse_member(obj, field, "sigma", parse_float, minimum=0.0, default=0.0), omega=omega)


def parse_store_metadata(data: Any, store: str = "") -> meta_v2.StoreMetadata:
    """The root attribute ``kdstore`` (decoded JSON) of a ``kdstore/1``, ``/2`` or ``/3`` store.

    ``kdstore/1`` and ``kdstore/2`` stores parse as :class:`kdstore.store.meta_v2.StoreMetadata` (as before;
    its ``teacher_kind`` is "rnnt" and ``tdt`` None), ``kdstore/3`` ones as this module's class, which
    adds ``teacher_kind`` ("rnnt" | "tdt", required) and ``tdt`` (an object for TDT
    teachers, absent or null otherwise) to ``kdstore/2``.

    Raises:
        MetadataError: a required field is missing or has the wrong type (message names ``store``).
        StoreError: a format version this kdstore does not read.
    """
    try:
        obj = parse_object(data, ATTRS_KEY)
        version = obj.get("format", MISSING)
        if version in READABLE_VERSIONS[:2]:
            return meta_v2.parse_store_metadata(data)  # type: ignore[return-value]  # an RNN-T teacher's store
        if not isinstance(version, str):
            raise MetadataError(f"{ATTRS_KEY}.format", " or ".join(map(repr, READABLE_VERSIONS)), describe(version))
        if version != FORMAT_VERSION:
            raise StoreError(f"store format {version!r} is not supported by this kdstore (it reads "
                             f"{', '.join(READABLE_VERSIONS)}); re-dump the teacher with this version or upgrade kdstore")
        kind = parse_member(obj, ATTRS_KEY, "teacher_kind", parse_choice, choices=TEACHER_KINDS)
        tdt_json = obj.get("tdt")
        if kind == "tdt":
            tdt = parse_tdt(tdt_json if tdt_json is not None else MISSING)
        elif tdt_json is not None:
            raise MetadataError(f"{ATTRS_KEY}.tdt", "null (teacher_kind is 'rnnt')", describe(tdt_json))
        else:
            tdt = None
        labels = meta_v2.parse_labels(obj.get("labels", MISSING))
        return StoreMetadata(format=version, labels=labels, teacher_kind=kind, tdt=tdt,  # type: ignore[arg-type]
                             **meta_v1.parse_store_fields(obj))
    except (MetadataError, StoreError) as err:
        raise meta_v1.with_store(err, store) from None

