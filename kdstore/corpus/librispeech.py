"""``prepare_librispeech``: NeMo manifests for a LibriSpeech tree already on disk.

Why our own reader: the layout is simple and stable, and a broken download should fail with the file
and line to look at, not deep inside a training run. The layout read (as the OpenSLR archives
extract)::

    ROOT/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
    ROOT/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt     # "<UTTID> <TEXT IN CAPITALS>"

``ROOT`` may be the ``LibriSpeech`` folder itself or the folder that contains it. Durations come from
the FLAC headers (``soundfile.info``, read by a thread pool: the work is I/O), so no audio is decoded.

Outputs in ``OUT``:

* ``<subset>.json`` for every subset converted (NeMo manifest: ``audio_filepath`` absolute,
  ``duration`` in seconds, ``text`` lower-cased with apostrophes kept);
* ``train.json`` with ``combine="train"``: the train-* subsets converted, concatenated;
* ``skipped.jsonl`` with ``skip_bad=True``: one JSON object per entry left out, with the reason (the
  one side-file schema of ``kdstore.inputs.screening``; emptied when the run starts).

Rows are sorted by subset, speaker, chapter and utterance (ids compared as numbers), so the same tree
gives byte-identical manifests whatever ``num_jobs`` is. Every manifest is written to a temporary
name and renamed into place (``kdstore.files.write_atomic``): an interrupted run never leaves a
truncated manifest behind.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdstore.errors import ManifestError
from kdstore.files import write_atomic
from kdstore.inputs.screening import BadInputPolicy, Skipped

SUBSETS = (
    "train-clean-100",
    "train-clean-360",
    "train-other-500",
    "dev-clean",
    "dev-other",
    "test-clean",
    "test-other",
)
TRAIN_SUBSETS = tuple(s for s in SUBSETS if s.startswith("train-"))
# combine name -> (subsets it concatenates, manifest file name in OUT)
COMBINATIONS: dict[str, tuple[tuple[str, ...], str]] = {"train": (TRAIN_SUBSETS, "train.json")}
SKIPPED_FILE = "skipped.jsonl"

_UTT = re.compile(r"\w+")


@dataclass
class LibriSpeechManifests:
    """What ``prepare_librispeech`` wrote. ``manifests`` maps a subset (or ``"train"``) to its file."""

    root: Path  # the folder holding the subsets (the LibriSpeech folder)
    out_dir: Path
    manifests: dict[str, Path]
    utterances: dict[str, int]
    hours: dict[str, float]
    combined: dict[str, tuple[str, ...]]  # e.g. {"train": ("train-clean-100", "train-clean-360")}
    skipped: list[Skipped]
    skipped_path: Path | None  # OUT/skipped.jsonl when skip_bad, else None


@dataclass(frozen=True)
class _Utterance:
    subset: str
    key: tuple[Any, ...]
    utt_id: str
    audio: Path
    text: str


def _id_key(name: str) -> tuple[int, int, str]:
    """Numeric ids in numeric order (``84`` before ``1089``), anything else after them, by name."""
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def _visible_dirs(folder: Path) -> list[Path]:
    dirs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(dirs, key=lambda p: _id_key(p.name))


def find_root(root: str | Path) -> Path:
    """The folder holding the subset folders: ``root`` itself, or ``root/LibriSpeech``."""
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"LibriSpeech root {root} is not a folder")
    for candidate in (root, root / "LibriSpeech"):
        if any((candidate / s).is_dir() for s in SUBSETS):
            return candidate.resolve()
    hint = (
        f"; {root} is itself a subset, point ROOT at its parent" if root.name in SUBSETS else ""
    )
    raise ManifestError(
        f"no LibriSpeech subset ({', '.join(SUBSETS)}) found under {root} or {root / 'LibriSpeech'}{hint}; "
        "point ROOT at the LibriSpeech folder (the one that contains e.g. dev-clean/) or at its parent"
    )


def _parse_transcript(
    trans: Path, prefix: str, policy: BadInputPolicy
) -> tuple[dict[str, tuple[int, str]], set[str]]:
    """``utt_id -> (line number, lower-cased text)`` of one chapter, and the ids named by bad lines.

    Bad lines whose id is still recognisable claim their FLAC, so it is not reported a second time
    as "without a transcript line".
    """
    lines: dict[str, tuple[int, str]] = {}
    claimed: set[str] = set()
    hint = "fix the line or re-extract this chapter from the LibriSpeech archive"
    try:
        raw_lines = trans.read_bytes().split(b"\n")
    except OSError as err:
        policy.add(Skipped("unreadable_transcript", str(trans), None, None,
                           f"cannot read the transcript ({err.strerror or err})", hint="check its permissions"))
        return lines, claimed
    for number, raw in enumerate(raw_lines, start=1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            policy.add(Skipped("malformed_line", str(trans), number, None, "line is not UTF-8 text",
                               raw.decode("utf-8", "replace"), hint))
            continue
        if not line:
            continue
        parts = line.split(None, 1)
        utt_id = parts[0]
        text = " ".join(parts[1].split()).lower() if len(parts) > 1 else ""
        good_id = utt_id.startswith(prefix + "-") and _UTT.fullmatch(utt_id[len(prefix) + 1 :]) is not None
        if good_id and utt_id in lines:
            claimed.add(utt_id)
            policy.add(Skipped("malformed_line", str(trans), number, utt_id,
                               f"{utt_id} is listed twice (also on line {lines[utt_id][0]}; both left out)", line, hint))
            continue
        if not good_id or not text:
            if good_id:
                claimed.add(utt_id)
            what = "no transcript text after the id" if good_id else f"utterance id is not '{prefix}-<number>'"
            shown = line if len(line) <= 80 else line[:77] + "..."
            policy.add(Skipped("malformed_line", str(trans), number, utt_id if good_id else None,
                               f"expected '<UTTID> <TEXT>', {what}: {shown!r}", line, hint))
            continue
        lines[utt_id] = (number, text)
    # a listed id that is a duplicate stays out of the manifest entirely (which text is right?)
    for utt_id in claimed:
        lines.pop(utt_id, None)
    return lines, claimed


def _scan_subset(subset: str, folder: Path, policy: BadInputPolicy) -> list[_Utterance]:
    """Every well-formed utterance of one subset, in (speaker, chapter, utterance) order."""
    found: list[_Utterance] = []
    for speaker_dir in _visible_dirs(folder):
        for chapter_dir in _visible_dirs(speaker_dir):
            prefix = f"{speaker_dir.name}-{chapter_dir.name}"
            trans = chapter_dir / f"{prefix}.trans.txt"
            flacs = {
                p.name[: -len(".flac")]: p
                for p in chapter_dir.iterdir()
                if p.name.endswith(".flac") and not p.name.startswith(".") and p.is_file()
            }
            if trans.is_file():
                lines, claimed = _parse_transcript(trans, prefix, policy)
            else:
                lines, claimed = {}, set()
            for utt_id, (number, text) in sorted(lines.items(), key=lambda kv: kv[1][0]):
                audio = flacs.get(utt_id)
                if audio is None:
                    policy.add(Skipped("missing_audio", str(trans), number, utt_id,
                                       f"{utt_id} is listed but {chapter_dir / (utt_id + '.flac')} does not exist",
                                       hint="re-extract this chapter from the LibriSpeech archive"))
                    continue
                key = (subset, _id_key(speaker_dir.name), _id_key(chapter_dir.name),
                       _id_key(utt_id[len(prefix) + 1 :]))
                found.append(_Utterance(subset, key, utt_id, audio, text))
            for utt_id in sorted(set(flacs) - set(lines) - claimed, key=_id_key):
                reason = (f"no line for {utt_id} in {trans.name}" if trans.is_file()
                          else f"no transcript {trans.name} in its folder")
                policy.add(Skipped("missing_transcript", str(flacs[utt_id]), None, utt_id, reason, hint="re-extract "
                                   "this chapter from the LibriSpeech archive or remove the stray file"))
    found.sort(key=lambda u: u.key)
    return found


def _duration(audio: Path) -> float | str:
    """Seconds from the FLAC header, or why the header cannot be used."""
    import soundfile

    try:
        info = soundfile.info(str(audio))
    except (soundfile.SoundFileError, RuntimeError, OSError, ValueError) as err:
        return f"cannot read the audio header ({getattr(err, 'error_string', None) or err})"
    if info.samplerate <= 0 or info.frames <= 0:
        return f"the header gives no audio ({info.frames} frames at {info.samplerate} Hz)"
    return info.frames / info.samplerate


def _with_durations(
    utterances: list[_Utterance], num_jobs: int, progress: bool, policy: BadInputPolicy
) -> Iterator[tuple[_Utterance, float]]:
    """Header reads on a thread pool, yielded in input order; the first bad one stops the pool."""
    pool = ThreadPoolExecutor(max_workers=num_jobs)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(utterances), desc="reading FLAC headers", unit="file")
    try:
        for utt, result in zip(utterances, pool.map(_duration, (u.audio for u in utterances))):
            if bar is not None:
                bar.update()
            if isinstance(result, str):
                policy.add(Skipped("unreadable_audio", str(utt.audio), None, utt.utt_id, result, hint="the file is "
                                   "truncated or corrupt: re-extract it from the LibriSpeech archive"))
                continue
            yield utt, result
    finally:
        if bar is not None:
            bar.close()
        pool.shutdown(wait=True, cancel_futures=True)


def _row(utt: _Utterance, duration: float) -> str:
    return json.dumps({"audio_filepath": str(utt.audio), "duration": duration, "text": utt.text}) + "\n"


def subset_names(subsets: Iterable[str] | None) -> tuple[str, ...] | None:
    """Accept ``["dev-clean", "test-clean"]`` and ``["dev-clean,test-clean"]`` alike."""
    if subsets is None:
        return None
    names = [s.strip() for item in ([subsets] if isinstance(subsets, str) else subsets) for s in item.split(",")]
    names = list(dict.fromkeys(s for s in names if s))
    unknown = [s for s in names if s not in SUBSETS]
    if unknown:
        raise ManifestError(f"unknown LibriSpeech subset(s) {', '.join(unknown)}; choose from {', '.join(SUBSETS)}")
    return tuple(names) or None


def prepare_librispeech(
    root: str | Path,
    out_dir: str | Path,
    subsets: Iterable[str] | str | None = None,
    *,
    combine: str | None = None,
    num_jobs: int = 1,
    skip_bad: bool = False,
    progress: bool = False,
) -> LibriSpeechManifests:
    """Write ``OUT/<subset>.json`` for every requested subset under ``root`` (see the module doc).

    ``subsets=None`` converts every standard subset present; named subsets must all be present
    (names may also be given comma-separated). ``combine="train"`` also writes ``OUT/train.json``,
    the train-* subsets converted, concatenated in subset order. ``num_jobs`` threads read the FLAC
    headers; ``progress`` shows a tqdm bar on stderr.

    Bad entries (a malformed transcript line, a listed utterance without its FLAC, a FLAC without a
    transcript line, an unreadable FLAC header) raise ``ManifestError`` naming the file (and line) and
    what to do, before anything is written. With ``skip_bad=True`` they are left out and listed in
    ``OUT/skipped.jsonl`` (``kdstore.inputs.screening``'s side file; emptied when the run starts).
    """
    if num_jobs < 1:
        raise ManifestError(f"num_jobs must be at least 1, got {num_jobs}")
    if combine is not None and combine not in COMBINATIONS:
        raise ManifestError(f"unknown combination {combine!r}; choose from {', '.join(COMBINATIONS)}")
    wanted = subset_names(subsets)
    base = find_root(root)
    found = _present_subsets(base, wanted)
    to_combine: dict[str, tuple[str, ...]] = {}
    if combine is not None:
        members, _ = COMBINATIONS[combine]
        to_combine[combine] = tuple(s for s in found if s in members)
        if not to_combine[combine]:
            raise ManifestError(
                f"--combine {combine} needs at least one of {', '.join(members)}, but the subsets converted "
                f"are {', '.join(found)}"
            )
    out = Path(out_dir)
    skipped_path = out / SKIPPED_FILE if skip_bad else None  # the policy creates OUT and empties it
    policy = BadInputPolicy(skip_bad=skip_bad, side_file=skipped_path, listed_in=str(out / SKIPPED_FILE))

    # 1. the tree and transcripts (fast; structural problems stop here, before any header is read)
    scanned: dict[str, list[_Utterance]] = {}
    for subset in found:
        before = len(policy.skipped)
        scanned[subset] = _scan_subset(subset, base / subset, policy)
        if not scanned[subset] and len(policy.skipped) == before:
            policy.add(Skipped("empty_subset", str(base / subset), None, None,
                               "no <speaker>/<chapter>/<speaker>-<chapter>.trans.txt transcripts",
                               hint="extract the subset's archive again"))

    # 2. durations from the FLAC headers, in parallel, in order
    everything = [u for subset in found for u in scanned[subset]]
    rows: dict[str, list[str]] = {subset: [] for subset in found}
    seconds: dict[str, float] = {subset: 0.0 for subset in found}
    for utt, duration in _with_durations(everything, num_jobs, progress, policy):
        rows[utt.subset].append(_row(utt, duration))
        seconds[utt.subset] += duration
    for subset in found:  # only reachable when skipping: a subset whose every entry was bad
        folder = str(base / subset)
        if not rows[subset] and not any(p.kind == "empty_subset" and p.file == folder for p in policy.skipped):
            policy.add(Skipped("empty_subset", folder, None, None, "every utterance was skipped",
                               hint=f"see the other entries of {SKIPPED_FILE}"))

    # 3. write (each file atomically); subsets left with no rows get no manifest
    out.mkdir(parents=True, exist_ok=True)
    manifests: dict[str, Path] = {}
    utterances: dict[str, int] = {}
    hours: dict[str, float] = {}
    for subset in found:
        if rows[subset]:
            manifests[subset] = out / f"{subset}.json"
            write_atomic(manifests[subset], rows[subset])
            utterances[subset], hours[subset] = len(rows[subset]), seconds[subset] / 3600
    for name, members in to_combine.items():
        members = tuple(s for s in members if rows[s])
        to_combine[name] = members
        if members:
            manifests[name] = out / COMBINATIONS[name][1]
            write_atomic(manifests[name], (row for s in members for row in rows[s]))
            utterances[name] = sum(utterances[s] for s in members)
            hours[name] = sum(hours[s] for s in members)
    return LibriSpeechManifests(root=base, out_dir=out, manifests=manifests, utterances=utterances, hours=hours,
                                combined=to_combine, skipped=policy.skipped, skipped_path=skipped_path)


def _present_subsets(base: Path, wanted: tuple[str, ...] | None) -> list[str]:
    """The subsets to convert, in ``SUBSETS`` order: ``wanted`` (all must exist) or every one present."""
    present = [s for s in SUBSETS if (base / s).is_dir()]
    if wanted is None:
        return present
    missing = [s for s in wanted if s not in present]
    if missing:
        raise ManifestError(
            f"subset(s) {', '.join(missing)} not found in {base} (present: {', '.join(present)}); "
            "download and extract them there, or leave them out of --subsets"
        )
    return sorted(wanted, key=SUBSETS.index)
