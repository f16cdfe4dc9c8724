"""NeMo JSON-lines manifests: parsing with errors that name the file and line.

Keys identify an utterance across stages: the manifest's ``audio_filepath`` exactly as written,
plus offset and duration with 3 decimals, so the same manifest always maps to the same store rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kdstore.errors import ManifestError


@dataclass(frozen=True)
class ManifestEntry:
    """One usable manifest line (seconds for ``duration`` and ``offset``)."""

    audio_filepath: str  # as written in the manifest
    audio_path: Path  # resolved on this machine
    duration: float
    offset: float
    text: str
    line: int  # 1-based line number, for error messages
    manifest: Path
    raw: str | None = field(default=None, compare=False)  # the line as written (side files quote it)
    segment: bool = field(default=False, compare=False)  # the line gives an "offset": a span of a longer file

    @property
    def key(self) -> str:
        return utterance_key(self.audio_filepath, self.offset, self.duration)

    @property
    def where(self) -> str:
        return f"{self.manifest}:{self.line}"


def utterance_key(audio_filepath: str, offset: float, duration: float) -> str:
    """The store key of an utterance: ``audio_filepath|offset|duration`` (seconds, 3 decimals)."""
    return f"{audio_filepath}|{offset:.3f}|{duration:.3f}"


def _resolve(audio_filepath: str, manifest: Path) -> Path:
    """Absolute paths as they are; relative ones against the manifest's folder (as NeMo does)."""
    path = Path(audio_filepath).expanduser()
    if path.is_absolute():
        return path
    beside = manifest.parent / path
    return beside if beside.exists() or not path.exists() else path.resolve()


@dataclass(frozen=True)
class BadLine:
    """A manifest line that cannot be used, and why (``kind``: a ``screening.KINDS`` name)."""

    manifest: Path
    line: int
    kind: str
    reason: str
    raw: str


OnBadLine = Callable[[BadLine], None]


class _LineError(ManifestError):
    def __init__(self, reason: str, kind: str = "malformed_line") -> None:
        super().__init__(reason)
        self.kind = kind


def _parse_line(raw: str, number: int, manifest: Path, require_text: bool, check_audio: bool) -> ManifestEntry:
    """One line -> entry, or _LineError with a reason and kind (without the file:line prefix)."""
    try:
        item = json.loads(raw)
    except json.JSONDecodeError as err:
        raise _LineError(f"not a JSON object ({err.msg}); each line must be one JSON object") from None
    if not isinstance(item, dict):
        raise _LineError(f"expected a JSON object, got {type(item).__name__}")
    for name in ("audio_filepath", "duration"):
        if name not in item:
            raise _LineError(f"missing field {name!r}")
    try:
        duration = float(item["duration"])
        offset = float(item.get("offset") or 0.0)
    except (TypeError, ValueError):
        raise _LineError("duration/offset must be numbers") from None
    if duration <= 0:
        raise _LineError(f"duration must be positive, got {duration}")
    text = str(item.get("text") or "").strip()
    if require_text and not text:
        raise _LineError("no transcript ('text' missing or empty); give it a 'text', or let the teacher label it "
                         "(kdstore dump-teacher over this manifest, then train with that store)", "bad_transcript")
    audio_path = _resolve(str(item["audio_filepath"]), manifest)
    if check_audio and not audio_path.is_file():
        raise _LineError(f"audio file {item['audio_filepath']} not found (looked at {audio_path})", "missing_audio")
    return ManifestEntry(str(item["audio_filepath"]), audio_path, duration, offset, text, number, manifest,
                         raw.rstrip("\n"), segment=item.get("offset") is not None)


def read_manifest(path: str | Path, *, require_text: bool = True, check_audio: bool = True,
                  on_bad_line: OnBadLine | None = None) -> list[ManifestEntry]:
    """Parse every line. A bad line raises ManifestError naming ``file:line``, unless ``on_bad_line``
    is given: then it is reported there and skipped (``--skip-bad``)."""
    manifest = Path(path)
    if not manifest.is_file():
        raise ManifestError(f"manifest {manifest} does not exist")
    entries: list[ManifestEntry] = []
    with manifest.open(encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                entries.append(_parse_line(raw, number, manifest, require_text, check_audio))
            except _LineError as err:
                if on_bad_line is None:
                    raise ManifestError(f"{manifest}:{number}: {err}") from None
                on_bad_line(BadLine(manifest, number, err.kind, str(err), raw.rstrip("\n")))
    if not entries:
        raise ManifestError(f"manifest {manifest} has no usable entries")
    return entries
