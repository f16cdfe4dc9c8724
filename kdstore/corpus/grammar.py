"""A seeded voice-command grammar: the text of the ``commands`` demo task.

Why a grammar: a tiny transducer trained on CPU for minutes cannot learn open English, but it can
learn a closed vocabulary of ~140 words (field notes: a 2.8M hybrid reached ~34% test WER on unseen
voices in 18 minutes). Twelve everyday command families (timers, lights and devices, calls and
texts, media tracks and stations, digit strings, dialling, volume, temperature, weather, locks,
alarms, music control) with numbers 1-60 spoken as words make the sentence space large enough that
held-out sentences are combinations the model never heard.

Splits: whole sentences are assigned to train/val/test by a hash of their text, so a test sentence
never occurs in train (only its words and sub-patterns do), independently of the seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from kdstore.corpus.texts import sentence_split

Split = str  # "train" | "val" | "test"

_ONES = (
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
)
_TENS = {20: "twenty", 30: "thirty", 40: "forty", 50: "fifty", 60: "sixty"}
DIGITS = ("zero", *_ONES[:9])

ROOMS = ("kitchen", "bedroom", "living room", "bathroom", "garage", "office", "hallway")
DEVICES = ("lights", "lamp", "fan", "heater", "television", "radio")
CONTACTS = ("mom", "dad", "anna", "peter", "maria", "sarah", "david")
MESSAGES = ("i am running late", "i am on my way", "i am home", "i am at the office")
CITIES = ("london", "paris", "berlin", "boston", "chicago", "tokyo")
WHEN = ("today", "tomorrow", "tonight", "this weekend")
DOORS = ("front", "back", "side", "garage")
GENRES = ("jazz", "rock", "classical")
MUSIC_VERBS = ("pause", "resume", "stop", "shuffle")


def number_words(n: int) -> str:
    """Spell 1..60 the way people say them ("twenty one"); TTS engines agree on these."""
    if not 1 <= n <= 60:
        raise ValueError(f"number_words covers 1..60, got {n}")
    if n < 20:
        return _ONES[n - 1]
    tens, ones = divmod(n, 10)
    return _TENS[tens * 10] + (f" {_ONES[ones - 1]}" if ones else "")


def _num(rng: random.Random, low: int = 1, high: int = 60) -> str:
    return number_words(rng.randint(low, high))


def _digits(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(DIGITS) for _ in range(count))


def _timer(rng: random.Random) -> str:
    n = rng.randint(1, 60)
    unit = rng.choice(("minute", "second", "hour"))
    if rng.random() < 0.5:
        return f"set a timer for {number_words(n)} {unit}{'' if n == 1 else 's'}"
    return f"start a {number_words(n)} {unit} timer"


def _device(rng: random.Random) -> str:
    verb = rng.choice(("turn", "switch"))
    state = rng.choice(("on", "off"))
    room, device = rng.choice(ROOMS), rng.choice(DEVICES)
    if rng.random() < 0.5:
        return f"{verb} {state} the {room} {device}"
    return f"{verb} {state} the {device} in the {room}"


def _call(rng: random.Random) -> str:
    who = rng.choice(CONTACTS)
    if rng.random() < 0.4:
        return f"{rng.choice(('call', 'please call'))} {who}"
    return f"{rng.choice(('text', 'please text'))} {who} that {rng.choice(MESSAGES)}"


def _media(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.35:
        return f"{rng.choice(('play', 'skip to'))} track {_num(rng)}"
    if kind < 0.7:
        return f"tune the radio to station {_num(rng)}"
    return f"play station {_num(rng)} in the {rng.choice(ROOMS)}"


def _code(rng: random.Random) -> str:
    lead = rng.choice(("my pin is", "the code is", "enter code", "enter pin"))
    return f"{lead} {_digits(rng, rng.randint(4, 6))}"


def _dial(rng: random.Random) -> str:
    return f"{rng.choice(('dial', 'please dial'))} {_digits(rng, rng.randint(7, 10))}"


def _volume(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.5:
        return f"set the volume to {_num(rng, 1, 20)}"
    if kind < 0.75:
        return f"turn the volume {rng.choice(('up', 'down'))} in the {rng.choice(ROOMS)}"
    return f"{rng.choice(('increase', 'decrease'))} the volume in the {rng.choice(ROOMS)}"


def _temperature(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.4:
        return f"set the thermostat to {_num(rng, 15, 30)} degrees"
    if kind < 0.8:
        return f"set the {rng.choice(ROOMS)} temperature to {_num(rng, 15, 30)} degrees"
    return f"make the {rng.choice(ROOMS)} {rng.choice(('warmer', 'cooler'))}"


def _weather(rng: random.Random) -> str:
    city, when = rng.choice(CITIES), rng.choice(WHEN)
    if rng.random() < 0.6:
        return f"what is the weather in {city} {when}"
    return f"will it rain in {city} {when}"


def _lock(rng: random.Random) -> str:
    verb = rng.choice(("lock", "unlock"))
    if rng.random() < 0.7:
        return f"{verb} the {rng.choice(DOORS)} door"
    return f"please {verb} the {rng.choice(DOORS)} door"


def _alarm(rng: random.Random) -> str:
    hour = number_words(rng.randint(1, 12))
    minute = rng.choice(("o'clock", "fifteen", "thirty", "forty five", _num(rng, 10, 59)))
    part = rng.choice(("morning", "evening"))
    if rng.random() < 0.5:
        return f"set an alarm for {hour} {minute} in the {part}"
    return f"wake me up at {hour} {minute} in the {part}"


def _music(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.4:
        return f"{rng.choice(MUSIC_VERBS)} the music in the {rng.choice(ROOMS)}"
    if kind < 0.7:
        return f"play some {rng.choice(GENRES)} music in the {rng.choice(ROOMS)}"
    return f"play the {rng.choice(('next', 'previous'))} song{rng.choice(('', ' please'))}"


PATTERNS: tuple[Callable[[random.Random], str], ...] = (
    _timer,
    _device,
    _call,
    _media,
    _code,
    _dial,
    _volume,
    _temperature,
    _weather,
    _lock,
    _alarm,
    _music,
)


def random_command(rng: random.Random) -> str:
    """One sentence from the grammar, pattern chosen uniformly."""
    return rng.choice(PATTERNS)(rng)


def sample_commands(rng: random.Random, split: Split, count: int, max_tries: int = 200) -> list[str]:
    """``count`` sentences of one split (rejection sampling on the sentence hash).

    A draw that belongs to another split is redrawn (up to ``max_tries`` times per sentence), so the
    pattern mix stays near uniform within each split.
    """
    out: list[str] = []
    for _ in range(count):
        for _ in range(max_tries):
            sentence = random_command(rng)
            if sentence_split(sentence) == split:
                out.append(sentence)
                break
        else:  # pragma: no cover - every pattern has a large sentence space
            raise RuntimeError(f"could not draw a {split!r} sentence in {max_tries} tries")
    return out


def vocabulary() -> set[str]:
    """Every word the grammar can produce (used by tests and to document the task)."""
    words: set[str] = set(DIGITS) | {number_words(n) for n in range(1, 61)}
    rng = random.Random(0)
    for _ in range(20000):
        words.update(random_command(rng).split())
    return {w for phrase in words for w in phrase.split()}
