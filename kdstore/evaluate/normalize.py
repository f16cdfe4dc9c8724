"""Text normalisation applied to references and hypotheses before scoring (explicit, documented).

Three normalisers, chosen by name (``kdstore eval --normalizer``):

``basic`` (default)
    Unicode NFKC, lower case, every apostrophe-like mark (``’ ‘ ʼ ` ´ ′`` and the like) written as
    ``'``, every character that is not a letter, digit or apostrophe becomes a space; apostrophes are kept only inside words (``don't`` stays one word, as in LibriSpeech),
    a decimal point only between digits, thousands separators dropped (``1,000`` -> ``1000``);
    whitespace collapsed. Numbers are not rewritten: ``twenty six`` and ``26`` differ.
``whisper``
    A small English normaliser in the spirit of Whisper's ``EnglishTextNormalizer`` (written for
    kdstore, not a copy, and not byte-identical): lower case, accents removed, bracketed and
    parenthesised asides dropped, fillers (``um``, ``uh``, ``hmm``, ``mm``, ``mhm``) dropped,
    contractions expanded (``won't`` -> ``will not``, ``n't`` -> `` not``, ``'re`` -> `` are``, ...),
    titles spelled out (``mr`` -> ``mister``), a short table of British spellings made American,
    spelled-out cardinals turned into digits (``twenty six`` -> ``26``, ``one hundred and five`` ->
    ``105``), thousands separators removed (``1,000`` -> ``1000``), ``%`` kept, other symbols removed.
``none``
    Whitespace collapsed, nothing else: case and punctuation count as errors.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

from kdstore.errors import ConfigError

NORMALIZERS = ("basic", "whisper", "none")

_NOT_WORD = re.compile(r"(?<!\d)\.|\.(?!\d)|[^\w'.]+|_")
_DIGIT_GROUP = re.compile(r"(?<=\d),(?=\d{3}\b)")
_STRAY_APOSTROPHE = re.compile(r"(?<!\w)'|'(?!\w)")
# Marks people and editors type for an apostrophe: right/left single quotation marks, modifier letter
# apostrophe and turned comma, grave and acute accents, prime, single low-9 and reversed-9 quotation marks.
APOSTROPHES = "\u2019\u2018\u02bc\u02bb\u0060\u00b4\u2032\u201a\u201b"
_TO_APOSTROPHE = str.maketrans({mark: "'" for mark in APOSTROPHES})


def unify_apostrophes(text: str) -> str:
    """Every apostrophe-like mark in :data:`APOSTROPHES` written as ASCII ``'`` (``o’clock`` -> ``o'clock``)."""
    return text.translate(_TO_APOSTROPHE)


def normalize_none(text: str) -> str:
    return " ".join(text.split())


def normalize_basic(text: str) -> str:
    text = unicodedata.normalize("NFKC", unify_apostrophes(text)).lower()
    text = _DIGIT_GROUP.sub("", text)  # 1,000 -> 1000 and 3.5 stays one token
    text = _NOT_WORD.sub(" ", text)
    text = _STRAY_APOSTROPHE.sub(" ", text)
    return " ".join(text.split())


# --- whisper-style English -----------------------------------------------------------------------

_FILLERS = re.compile(r"\b(?:hmm+|mm+|mhm|uh+|um+)\b")
_ASIDES = re.compile(r"\[[^\]]*\]|\([^)]*\)|<[^>]*>")
_CONTRACTIONS = [  # whole words first, then suffixes
    (r"\bwon't\b", "will not"), (r"\bcan't\b", "can not"), (r"\bshan't\b", "shall not"),
    (r"\blet's\b", "let us"), (r"\bain't\b", "aint"), (r"\by'all\b", "you all"),
    (r"\bwanna\b", "want to"), (r"\bgonna\b", "going to"), (r"\bgotta\b", "got to"),
    (r"n't\b", " not"), (r"'re\b", " are"), (r"'ll\b", " will"), (r"'ve\b", " have"),
    (r"'m\b", " am"), (r"'d\b", " would"),
]
_TITLES = {"mr": "mister", "mrs": "missus", "ms": "miss", "dr": "doctor", "prof": "professor", "st": "saint",
           "jr": "junior", "sr": "senior", "lt": "lieutenant", "capt": "captain", "gen": "general",
           "gov": "governor", "sen": "senator", "rep": "representative", "rev": "reverend"}
_TITLE = re.compile(r"\b(" + "|".join(_TITLES) + r")\b\.?(?=\s)")
_BRITISH = {
    "colour": "color", "colours": "colors", "favourite": "favorite", "favourites": "favorites",
    "honour": "honor", "labour": "labor", "neighbour": "neighbor", "neighbours": "neighbors",
    "behaviour": "behavior", "humour": "humor", "harbour": "harbor", "flavour": "flavor",
    "centre": "center", "centres": "centers", "metre": "meter", "metres": "meters", "litre": "liter",
    "litres": "liters", "theatre": "theater", "fibre": "fiber", "grey": "gray", "tyre": "tire",
    "tyres": "tires", "programme": "program", "programmes": "programs", "cheque": "check",
    "catalogue": "catalog", "dialogue": "dialog", "analyse": "analyze", "organise": "organize",
    "organised": "organized", "realise": "realize", "realised": "realized", "recognise": "recognize",
    "recognised": "recognized", "apologise": "apologize", "travelled": "traveled", "travelling": "traveling",
    "cancelled": "canceled", "cancelling": "canceling", "defence": "defense", "offence": "offense",
    "licence": "license", "practise": "practice", "jewellery": "jewelry", "aluminium": "aluminum",
    "mum": "mom", "plough": "plow", "pyjamas": "pajamas", "kerb": "curb", "storey": "story",
}
_UNITS = {w: i for i, w in enumerate(
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"])}
_TENS = {w: 10 * (i + 2) for i, w in enumerate(["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"])}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}
_NUMBER_WORDS = set(_UNITS) | set(_TENS) | set(_SCALES)


def _words_to_number(words: list[str]) -> int | None:
    """Cardinal number words (no 'and') -> int, or None when they do not form one number."""
    total, current, last = 0, 0, None
    for word in words:
        if word in _UNITS:
            if last in ("unit", "teen") or (last == "tens" and (_UNITS[word] >= 10 or current % 10)):
                return None
            current += _UNITS[word]
            last = "teen" if _UNITS[word] >= 10 else "unit"
        elif word in _TENS:
            if last in ("unit", "teen", "tens"):
                return None
            current += _TENS[word]
            last = "tens"
        else:
            scale = _SCALES[word]
            if current == 0 and last is None:
                current = 1
            if scale == 100:
                if current >= 100 or last == "hundred":
                    return None
                current *= 100
                last = "hundred"
            else:
                if last == "big":
                    return None
                total += current * scale
                current = 0
                last = "big"
    return total + current


def _numbers_to_digits(words: list[str]) -> list[str]:
    """Replace runs of cardinal number words by digits, longest valid number first ('and' allowed after a
    scale word): ``one hundred and five`` -> 105, ``four two`` -> 4 2, ``five fifty`` -> 5 50."""
    out: list[str] = []
    i = 0
    while i < len(words):
        if words[i] not in _NUMBER_WORDS:
            out.append(words[i])
            i += 1
            continue
        j = i  # extend the run of number words (and scale-word 'and's)
        while j < len(words) and (words[j] in _NUMBER_WORDS or (
                words[j] == "and" and words[j - 1] in _SCALES and j + 1 < len(words)
                and words[j + 1] in _NUMBER_WORDS and words[j + 1] not in _SCALES)):
            j += 1
        for end in range(j, i, -1):  # the longest prefix that is one number
            if words[end - 1] == "and":
                continue
            value = _words_to_number([w for w in words[i:end] if w != "and"])
            if value is not None:
                out.append(str(value))
                i = end
                break
    return out


def normalize_whisper(text: str) -> str:
    text = unicodedata.normalize("NFKC", unify_apostrophes(text)).lower()
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = _ASIDES.sub(" ", text)
    text = _FILLERS.sub(" ", text)
    for pattern, replacement in _CONTRACTIONS:
        text = re.sub(pattern, replacement, text)
    text = _TITLE.sub(lambda m: _TITLES[m.group(1)], text + " ")
    text = _DIGIT_GROUP.sub("", text)  # 1,000 -> 1000
    text = re.sub(r"(?<=\d)\s*%", " percent", text)
    text = text.replace("'", "")
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text)  # keep decimal points
    text = re.sub(r"[^\w.]+|_", " ", text)
    words = [_BRITISH.get(w, w) for w in text.split()]
    words = _numbers_to_digits(words)
    return re.sub(r"(\d) percent\b", r"\1%", " ".join(words))


def get_normalizer(name: str) -> Callable[[str], str]:
    """The normaliser called ``name`` (one of :data:`NORMALIZERS`)."""
    table = {"basic": normalize_basic, "whisper": normalize_whisper, "none": normalize_none}
    if name not in table:
        raise ConfigError(f"normalizer: expected one of {', '.join(NORMALIZERS)}, got {name!r}")
    return table[name]
