"""Root metadata of a ``kdstore/1`` store: a frozen dataclass parsed with field-level errors.

The store describes itself (teacher, tokenizer, frame rate, encoding), so a student can refuse a
store that does not match it before training on garbage. One module per format version.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from kdstore.errors import StoreError

FORMAT_VERSION: Literal["kdstore/1"] = "kdstore/1"
ATTRS_KEY = "kdstore"


@dataclass(frozen=True, kw_only=True)
class Fingerprint:
    """What produced a store: enough to tell two teachers, tokenizers or manifests apart."""

    teacher_sha256: str
    teacher_class: str
    teacher_params: int
    tokenizer_sha256: str
    manifest_sha256: str


@dataclass(frozen=True, kw_only=True)
class FrontEnd:
    """Settings that decide the number of encoder frames T; student and teacher must agree."""

    sample_rate: int
    window_size: float
    window_stride: float
    features: int
    normalize: str
    subsampling_factor: int

    @property
    def frame_shift_s(self) -> float:
        """Seconds per encoder frame (e.g. 0.01 s hop x 8 = 80 ms)."""
        return self.window_stride * self.subsampling_factor


@dataclass(frozen=True, kw_only=True)
class Counts:
    utterances: int
    nodes: int
    frames: int
    hours: float


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
    created: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> StoreMetadata:
        obj = _parse_mapping(data, "kdstore")
        fmt = obj.get("format")
        if fmt != FORMAT_VERSION:
            raise StoreError(
                f"store format {fmt!r} is not supported by this kdstore (expected {FORMAT_VERSION!r}); "
                "re-dump the teacher with this version or upgrade kdstore"
            )
        try:
            return cls(
                **{
                    **{k: v for k, v in obj.items() if k not in ("fingerprint", "front_end", "counts")},
                    "fingerprint": Fingerprint(**_parse_mapping(obj.get("fingerprint"), "fingerprint")),
                    "front_end": FrontEnd(**_parse_mapping(obj.get("front_end"), "front_end")),
                    "counts": Counts(**_parse_mapping(obj.get("counts"), "counts")),
                }
            )
        except TypeError as err:  # missing or unknown field
            raise StoreError(f"store metadata is malformed: {err}") from None


def _parse_mapping(data: Any, name: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise StoreError(f"store metadata field {name!r}: expected an object, got {type(data).__name__}")
    return data
