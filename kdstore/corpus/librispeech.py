"""``prepare_librispeech``: NeMo manifests for a LibriSpeech tree already on disk.

Why our own reader: the layout is simple and stable (``ROOT/<subset>/<speaker>/<chapter>/`` with
``<speaker>-<chapter>-<utt>.flac`` and one ``<speaker>-<chapter>.trans.txt``), and a broken download
should fail with the file and line to look at, not deep inside a training run. Durations come from
the FLAC header, so no audio is decoded.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from kdstore.errors import ManifestError

SUBSETS = (
    "train-clean-100",
    "train-clean-360",
    "train-other-500",
    "dev-clean",
    "dev-other",
    "test-clean",
    "test-other",
)


def _transcripts(subset_dir: Path) -> Iterator[Path]:
    yield from sorted(subset_dir.glob("*/*/*.trans.txt"))


def _read_transcript(path: Path) -> Iterator[dict[str, object]]:
    """Manifest rows of one chapter: ``UTTID TEXT`` lines, each checked against its audio file."""
    import soundfile

    prefix = path.name[: -len(".trans.txt")]
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        utt_id, _, text = line.strip().partition(" ")
        if not text.strip() or not utt_id.startswith(prefix + "-"):
            raise ManifestError(
                f"{path}:{number}: expected 'UTTID TEXT' with UTTID starting '{prefix}-', got {line!r}; "
                "re-extract this chapter from the LibriSpeech archive"
            )
        audio = path.parent / f"{utt_id}.flac"
        if not audio.is_file():
            raise ManifestError(
                f"{path}:{number}: audio file {audio} for {utt_id} is missing; re-extract the archive"
            )
        info = soundfile.info(str(audio))
        yield {
            "audio_filepath": str(audio.resolve()),
            "duration": info.frames / info.samplerate,
            "text": " ".join(text.lower().split()),
        }


def prepare_librispeech(
    root: str | Path, out_dir: str | Path, subsets: list[str] | tuple[str, ...] | None = None
) -> dict[str, Path]:
    """Write ``OUT/<subset>.json`` for every requested subset found under ``root``.

    ``subsets=None`` means all seven standard subsets that exist. Text is lowercased (NeMo's
    LibriSpeech recipes do the same). Returns ``subset -> manifest path``.
    """
    root, out = Path(root), Path(out_dir)
    wanted = tuple(subsets) if subsets else SUBSETS
    unknown = [s for s in wanted if s not in SUBSETS]
    if unknown:
        raise ManifestError(f"unknown LibriSpeech subset(s) {unknown}; choose from {', '.join(SUBSETS)}")
    found = [s for s in wanted if (root / s).is_dir()]
    if not found:
        raise ManifestError(
            f"no LibriSpeech subset ({', '.join(wanted)}) found under {root}; point ROOT at the folder "
            "that contains e.g. train-clean-100/ (usually .../LibriSpeech)"
        )
    out.mkdir(parents=True, exist_ok=True)
    manifests: dict[str, Path] = {}
    for subset in found:
        rows = [row for trans in _transcripts(root / subset) for row in _read_transcript(trans)]
        if not rows:
            raise ManifestError(f"{root / subset} contains no <speaker>/<chapter>/*.trans.txt transcripts")
        path = out / f"{subset}.json"
        tmp = path.with_suffix(".json.part")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        tmp.replace(path)
        manifests[subset] = path
    return manifests
