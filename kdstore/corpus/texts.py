"""Sentences for the ``open`` demo task, from Debian text packages, plus the hash split rule.

Why these sources: they are in Debian main, so the demo builds offline on a fresh machine
(``fortunes`` ~12k entries, ``wordnet-base`` ~24k gloss examples). Why the strict filter: the
transcript must be exactly what the TTS engine says, so sentences with digits, acronyms, symbols or
abbreviations (which engines expand in their own ways) are dropped rather than guessed at.
Text splits are disjoint by a hash of the normalised sentence, independent of the seed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

FORTUNES_DIR = Path("/usr/share/games/fortunes")
WORDNET_DIR = Path("/usr/share/wordnet")
# Fortune databases that are pictures or lists, not prose.
_SKIP_FORTUNES = frozenset({"art", "ascii-art", "definitions", "translate-me", "perl", "linux"})
_ALLOWED = re.compile(r"[A-Za-z'\s.,;:!?\"()\-]+")
_ACRONYM = re.compile(r"\b[A-Z]{2,}\b")
_ABBREVIATION = re.compile(r"\b(?:mr|mrs|ms|dr|st|jr|sr|vs|etc|prof|gen|col|mt|ft|eg|ie)\b\.?", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
MIN_WORDS, MAX_WORDS = 5, 20


def sentence_split(sentence: str, val_percent: int = 10, test_percent: int = 10) -> str:
    """``"train"``, ``"val"`` or ``"test"`` from a hash of the text: stable across seeds and runs."""
    bucket = int.from_bytes(hashlib.sha1(sentence.encode("utf-8")).digest()[:8], "big") % 100
    if bucket < test_percent:
        return "test"
    if bucket < test_percent + val_percent:
        return "val"
    return "train"


def normalize(raw: str) -> str | None:
    """Lowercase letters, apostrophes and single spaces, or ``None`` when the text is unsafe to speak.

    Unsafe: characters a TTS engine would expand unpredictably (digits, symbols), acronyms that get
    spelled out, abbreviations, and anything outside 5-20 words.
    """
    if not _ALLOWED.fullmatch(raw) or _ACRONYM.search(raw) or _ABBREVIATION.search(raw):
        return None
    text = re.sub(r"[\-]+", " ", raw.lower())
    text = re.sub(r"[.,;:!?\"()]", " ", text)
    words = [w.strip("'") for w in text.split()]
    words = [w for w in words if w]
    if not MIN_WORDS <= len(words) <= MAX_WORDS or any("''" in w for w in words):
        return None
    if any(len(w) == 1 and w not in ("a", "i") for w in words):
        return None  # stray initials and list markers ("n. the way ...")
    return " ".join(words)


def _split_sentences(paragraph: str) -> Iterator[str]:
    yield from (s.strip() for s in _SENTENCE_END.split(" ".join(paragraph.split())) if s.strip())


def fortune_sentences(directory: Path = FORTUNES_DIR) -> Iterator[str]:
    """Raw sentences of every prose fortune database (attribution lines removed)."""
    if not directory.is_dir():
        return
    for path in sorted(directory.iterdir()):
        if path.suffix or path.is_symlink() or not path.is_file() or path.name in _SKIP_FORTUNES:
            continue
        text = path.read_text(encoding="latin-1")
        for entry in text.split("\n%\n"):
            lines = []
            for line in entry.splitlines():
                if line.strip().startswith("--"):
                    break  # attribution ("-- Mark Twain") and anything after it
                lines.append(line)
            yield from _split_sentences("\n".join(lines))


def wordnet_sentences(directory: Path = WORDNET_DIR) -> Iterator[str]:
    """Quoted example sentences from WordNet glosses (``| gloss; "an example"``)."""
    for name in ("data.noun", "data.verb", "data.adj", "data.adv"):
        path = directory / name
        if not path.is_file():
            continue
        with path.open(encoding="latin-1") as handle:
            for line in handle:
                if line.startswith(" ") or "|" not in line:
                    continue  # licence header
                gloss = line.split("|", 1)[1]
                yield from re.findall(r'"([^"]+)"', gloss)


def clean_unique(raw: Iterable[str]) -> list[str]:
    """Normalised, de-duplicated sentences in a stable (sorted) order."""
    return sorted({text for text in map(normalize, raw) if text})


def open_sentences(
    fortunes_dir: Path = FORTUNES_DIR, wordnet_dir: Path = WORDNET_DIR
) -> dict[str, list[str]]:
    """All usable sentences per split (``train``/``val``/``test``), disjoint by hash."""
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for text in clean_unique([*fortune_sentences(fortunes_dir), *wordnet_sentences(wordnet_dir)]):
        splits[sentence_split(text)].append(text)
    return splits
