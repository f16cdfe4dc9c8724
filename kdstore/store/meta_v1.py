"""Root metadata of a ``kdstore/1`` store: frozen dataclasses parsed field by field.

The store describes itself (teacher, tokenizer, frame rate, encoding), so a student can refuse a
store that does not match it before training on garbage. One module per format version: this one
reads and writes exactly ``kdstore/1`` (docs/store-format.md, section 3).

Reading follows the spec's rules (section 6): every known field is type-checked by a ``parse_*``
helper (:mod:`kdstore.store.json_parse`), a missing required field or a wrong type raises
:class:`~kdstore.errors.MetadataError` naming field, expected and got, and unknown fields, at any
level, are ignored, so a later writer may add optional attributes without a new version.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from kdstore.errors import MetadataError, StoreError
from kdstore.store.json_parse import (
    MISSING,
    describe,
    parse_bool,
    parse_choice,
    parse_float,
    parse_int,
    parse_member,
    parse_object,
    parse_optional_int,
    parse_str,
)

FORMAT_VERSION: Literal["kdstore/1"] = "kdstore/1"
ATTRS_KEY = "kdstore"  # the root attribute that holds the metadata (written last: it commits the store)
VALUE_DTYPES = ("float16", "float32")
ID_DTYPES = ("uint16", "uint32")
LATTICES = ("full", "band")


@dataclass(frozen=True, kw_only=True)
class Fingerprint:
    """What produced a store: enough to tell two teachers, tokenizers or manifests apart."""

    teacher_sha256: str
    teacher_class: str
    teacher_params: int
    tokenizer_sha256: str  # of tokenizer.model
    manifest_sha256: str


@dataclass(frozen=True, kw_only=True)
class FrontEnd:
    """The teacher's front end. A student must agree on what decides the number of encoder frames T
    (sample rate, hop, padding, subsampling: ``kdstore.frames.frame_count_difference``), not on ``features``
    or ``normalize``."""

    sample_rate: int  # Hz
    window_size: float  # seconds
    window_stride: float  # seconds (the feature hop)
    features: int  # mel bins
    normalize: str
    subsampling_factor: int
    n_fft: int | None = None  # STFT size in samples; None in stores written before it was recorded
    exact_pad: bool = False  # NeMo's exact_pad (one mel frame fewer); absent in older stores: False
    causal_downsampling: bool = False  # the encoder's causal subsampling stack (cache-aware teachers); absent: False

    @property
    def frame_shift_s(self) -> float:
        """Seconds per encoder frame (e.g. 0.01 s hop x 8 = 80 ms)."""
        return self.window_stride * self.subsampling_factor


@dataclass(frozen=True, kw_only=True)
class Counts:
    """Sizes of a committed store (the verifier checks them against the arrays)."""

    utterances: int
    nodes: int  # stored rows over all parts
    frames: int
    hours: float  # audio in the manifest entries dumped


@dataclass(frozen=True, kw_only=True)
class StoreMetadata:
    """Everything in the root attribute ``kdstore`` of a committed store."""

    format: Literal["kdstore/1"] = FORMAT_VERSION
    top_k: int
    value_dtype: Literal["float16", "float32"]
    id_dtype: Literal["uint16", "uint32"]
    blank_id: int
    vocab_size: int  # without blank; the joint has vocab_size + 1 outputs
    lattice: Literal["full", "band"] = "full"
    band_width: int | None = None  # W for band stores
    ctc_top_k: int | None = None  # hybrid teachers dumped with --ctc: k of frame/ctc_logp
    fingerprint: Fingerprint
    front_end: FrontEnd
    counts: Counts
    kdstore_version: str
    created: str  # ISO-8601
    extra: dict[str, Any] = field(default_factory=dict)  # free-form provenance

    def to_json(self) -> dict[str, Any]:
        """The JSON object stored as the root attribute (``from_json(to_json())`` gives it back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any, store: str = "") -> StoreMetadata:
        """:func:`parse_store_metadata`; ``store`` (the path) goes into error messages."""
        return parse_store_metadata(data, store)


def parse_fingerprint(data: Any, field: str = f"{ATTRS_KEY}.fingerprint") -> Fingerprint:
    """The ``fingerprint`` object; unknown members are ignored."""
    obj = parse_object(data, field)
    return Fingerprint(
        teacher_sha256=parse_member(obj, field, "teacher_sha256", parse_str),
        teacher_class=parse_member(obj, field, "teacher_class", parse_str),
        teacher_params=parse_member(obj, field, "teacher_params", parse_int, minimum=0),
        tokenizer_sha256=parse_member(obj, field, "tokenizer_sha256", parse_str),
        manifest_sha256=parse_member(obj, field, "manifest_sha256", parse_str),
    )


def parse_front_end(data: Any, field: str = f"{ATTRS_KEY}.front_end") -> FrontEnd:
    """The ``front_end`` object; unknown members are ignored."""
    obj = parse_object(data, field)
    return FrontEnd(
        sample_rate=parse_member(obj, field, "sample_rate", parse_int, minimum=1),
        window_size=parse_member(obj, field, "window_size", parse_float, minimum=0.0),
        window_stride=parse_member(obj, field, "window_stride", parse_float, minimum=0.0),
        features=parse_member(obj, field, "features", parse_int, minimum=1),
        normalize=parse_member(obj, field, "normalize", parse_str),
        subsampling_factor=parse_member(obj, field, "subsampling_factor", parse_int, minimum=1),
        n_fft=parse_member(obj, field, "n_fft", parse_optional_int, minimum=1),
        exact_pad=parse_member(obj, field, "exact_pad", parse_bool, default=False),
        causal_downsampling=parse_member(obj, field, "causal_downsampling", parse_bool, default=False),
    )


def parse_counts(data: Any, field: str = f"{ATTRS_KEY}.counts") -> Counts:
    """The ``counts`` object; unknown members are ignored."""
    obj = parse_object(data, field)
    return Counts(
        utterances=parse_member(obj, field, "utterances", parse_int, minimum=0),
        nodes=parse_member(obj, field, "nodes", parse_int, minimum=0),
        frames=parse_member(obj, field, "frames", parse_int, minimum=0),
        hours=parse_member(obj, field, "hours", parse_float, minimum=0.0),
    )


def parse_format(data: Any, field: str = f"{ATTRS_KEY}.format") -> Literal["kdstore/1"]:
    """The format version: exactly ``kdstore/1``.

    Raises:
        MetadataError: absent or not a string.
        StoreError: another version (written by another kdstore; a reader must refuse it).
    """
    if not isinstance(data, str):
        raise MetadataError(field, repr(FORMAT_VERSION), describe(data))
    if data != FORMAT_VERSION:
        raise StoreError(f"store format {data!r} is not supported by this kdstore (expected {FORMAT_VERSION!r}); "
                         "re-dump the teacher with this version or upgrade kdstore")
    return FORMAT_VERSION


def parse_band_width(lattice: str, data: Any, field: str = f"{ATTRS_KEY}.band_width") -> int | None:
    """W: an int >= 1 for band stores, null (or absent) for full ones."""
    width = parse_optional_int(data, field, minimum=1)
    if lattice == "band" and width is None:
        raise MetadataError(field, "int >= 1 (lattice is 'band')", describe(data))
    if lattice == "full" and width is not None:
        raise MetadataError(field, "null (lattice is 'full')", describe(data))
    return width


def parse_store_fields(obj: dict[str, Any], root: str = ATTRS_KEY) -> dict[str, Any]:
    """Every ``kdstore/1`` field except ``format``, parsed from the root object (``kdstore/2`` has the
    same ones plus ``labels``: :mod:`kdstore.store.meta_v2`). Raises MetadataError."""
    lattice = parse_member(obj, root, "lattice", parse_choice, choices=LATTICES, default="full")
    return {
        "top_k": parse_member(obj, root, "top_k", parse_int, minimum=1),
        "value_dtype": parse_member(obj, root, "value_dtype", parse_choice, choices=VALUE_DTYPES),
        "id_dtype": parse_member(obj, root, "id_dtype", parse_choice, choices=ID_DTYPES),
        "blank_id": parse_member(obj, root, "blank_id", parse_int, minimum=0),
        "vocab_size": parse_member(obj, root, "vocab_size", parse_int, minimum=1),
        "lattice": lattice,
        "band_width": parse_band_width(lattice, obj.get("band_width", MISSING)),
        "ctc_top_k": parse_member(obj, root, "ctc_top_k", parse_optional_int, minimum=1),
        "fingerprint": parse_fingerprint(obj.get("fingerprint", MISSING)),
        "front_end": parse_front_end(obj.get("front_end", MISSING)),
        "counts": parse_counts(obj.get("counts", MISSING)),
        "kdstore_version": parse_member(obj, root, "kdstore_version", parse_str),
        "created": parse_member(obj, root, "created", parse_str),
        "extra": parse_member(obj, root, "extra", parse_object, default=None) or {},
    }


def with_store(error: MetadataError | StoreError, store: str) -> MetadataError | StoreError:
    """The same error with the store's path in its message (once)."""
    if isinstance(error, MetadataError):
        if not store or error.store:
            return error
        return MetadataError(error.field, error.expected, error.got, store)
    return StoreError(f"store {store}: {error}" if store else str(error))


def parse_store_metadata(data: Any, store: str = "") -> StoreMetadata:
    """The root attribute ``kdstore`` (decoded JSON) of a ``kdstore/1`` store -> :class:`StoreMetadata`.

    Unknown members are ignored at every level; ``lattice``, ``band_width``, ``ctc_top_k`` and
    ``extra`` may be absent (stores written before them). Readers that also take ``kdstore/2`` use
    :func:`kdstore.store.meta_v2.parse_store_metadata`.

    Raises:
        MetadataError: a required field is missing or has the wrong type (message names ``store``).
        StoreError: the format version is not ``kdstore/1``.
    """
    try:
        obj = parse_object(data, ATTRS_KEY)
        version = parse_format(obj.get("format", MISSING))
        return StoreMetadata(format=version, **parse_store_fields(obj))
    except (MetadataError, StoreError) as err:
        raise with_store(err, store) from None
