"""Offline speech synthesis with the Debian TTS engines: which voices exist, and one utterance -> WAV.

Why three engines: espeak-ng alone gives ~800 voices, but all of them formant-synthesised; a corpus
that is mostly espeak is far less natural than one weighted across espeak-ng, flite (recorded
speakers: kal, awb, rms, slt) and festival (diphone and HTS voices). The caller balances engine
families by utterance count; this module only says what is installed and renders one utterance.

Why sox: every engine writes its own sample rate (16, 22.05 or 32 kHz); sox converts to the 16 kHz
mono 16-bit PCM NeMo expects, applies pitch/tempo variants for engines with few voices, trims the
engine's own leading/trailing silence and pads both ends equally so silence does not identify an
engine, and normalises loudness. Dither is off (``-D``) so the output is byte-reproducible.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kdstore.errors import ConfigError, DependencyError

log = logging.getLogger(__name__)

ESPEAK, FLITE, FESTIVAL = "espeak-ng", "flite", "festival"
ENGINES = (ESPEAK, FLITE, FESTIVAL)
APT_PACKAGES = "espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts sox"
SAMPLE_RATE = 16000
MIN_SEC_PER_WORD, MAX_SEC_PER_WORD = 0.15, 1.0
_TIMEOUT_S = 120

# Base voices per engine, in hold-out order: the first are unseen test speakers, the next validation.
ESPEAK_DIALECTS = (
    "en-029",
    "en-gb-x-gbcwmd",
    "en-us-nyc",
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-rp",
)
FLITE_VOICES = ("rms", "awb", "kal", "kal16", "slt")
FESTIVAL_VOICES = ("ked_diphone", "kal_diphone", "cmu_us_slt_arctic_hts")
FESTIVAL_PACKAGES = {
    "kal_diphone": "festvox-kallpc16k",
    "ked_diphone": "festvox-kdlpc16k",
    "cmu_us_slt_arctic_hts": "festvox-us-slt-hts",
}
# espeak-ng variants change pitch and formants, i.e. they act as speakers: split them too.
ESPEAK_VARIANTS = {
    "test": ("m3", "f2", "m6"),
    "val": ("f4", "m1"),
    "train": ("m2", "m4", "m5", "m7", "f1", "f3", "f5"),
}
# flite/festival have few speakers; sox pitch shifts (cents) multiply them. A shift is not a new
# speaker, so held-out shifts are used only where a family has no held-out base voice.
PITCH_VARIANTS = {"test": (-300,), "val": (300,), "train": (-150, 0, 150)}
# ``variety="wide"`` (the demo teacher's corpus): many more training speakers, never a held-out one.
# espeak-ng variants that sound like people (no whisper/robot/croak variants), klatt synthesis included.
ESPEAK_WIDE_TRAIN = (
    "m2", "m4", "m5", "m7", "m8", "f1", "f3", "f5", "adam", "Alex", "Alicia", "Andy", "Annie", "aunty",
    "belinda", "benjamin", "caleb", "david", "ed", "edward", "Gene", "iven", "john", "Lee", "linda", "max",
    "Michael", "Mike", "paul", "quincy", "rob", "robert", "steph", "travis", "victor", "zac", "klatt",
    "klatt2", "klatt3", "klatt4", "grandpa", "grandma", "norbert", "shelby", "anika",
)
PITCH_WIDE_TRAIN = (-250, -150, -75, 0, 75, 150, 250)
# The untranscribed split's voices: training voices at pitch shifts (cents) no other split uses (new voices,
# not new speakers: the closest stand-in the engines offer for a team's wider untranscribed audio).
UNHEARD_PITCHES = (-200, -110, 110, 200)
VARIETIES = ("standard", "wide")
RATES = (0.88, 0.94, 1.0, 1.06, 1.12)


@dataclass(frozen=True, order=True)
class Voice:
    """One synthetic speaker: engine, the engine's voice, a variant, and a speaking-rate factor."""

    engine: str
    name: str
    variant: str = ""  # espeak-ng variant ("m3") or "" for the others
    pitch: int = 0  # sox pitch shift in cents (flite/festival)
    rate: float = 1.0  # speaking rate relative to the engine's default

    @property
    def id(self) -> str:
        """Stable, filename-safe identity, e.g. ``espeak-ng.en-029.m3`` or ``flite.slt.p+150``."""
        detail = self.variant if self.engine == ESPEAK else f"p{self.pitch:+d}"
        if self.engine == ESPEAK and self.pitch:
            detail += f".p{self.pitch:+d}"
        return f"{self.engine}.{self.name}.{detail}"


def _rate_for(engine: str, name: str, detail: str) -> float:
    """A fixed speaking rate per voice (from a hash), so rate varies across voices, not per run."""
    digest = hashlib.sha1(f"{engine}/{name}/{detail}".encode()).digest()
    return RATES[digest[0] % len(RATES)]


def make_voice(engine: str, name: str, variant: str = "", pitch: int = 0) -> Voice:
    detail = variant if engine == ESPEAK else str(pitch)
    return Voice(engine, name, variant, pitch, _rate_for(engine, name, detail))


# ---------------------------------------------------------------- detection


def _run_text(args: list[str], stdin: str | None = None) -> str:
    try:
        done = subprocess.run(
            args, input=stdin, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""


def _espeak_inventory() -> tuple[list[str], list[str]]:
    """(dialects, variants) installed; mbrola voices are skipped (they need extra data packages)."""
    dialects = []
    for line in _run_text(["espeak-ng", "--voices=en"]).splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 5 and cols[4].startswith("gmw/") and cols[1] in ESPEAK_DIALECTS:
            dialects.append(cols[1])
    variants = set()
    for line in _run_text(["espeak-ng", "--voices=variant"]).splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 5 and cols[4].startswith("!v/"):
            variants.add(cols[4][3:])
    wanted = [v for group in ESPEAK_VARIANTS.values() for v in group] + list(ESPEAK_WIDE_TRAIN)
    return [d for d in ESPEAK_DIALECTS if d in dialects], [v for v in dict.fromkeys(wanted) if v in variants]


def _flite_inventory() -> list[str]:
    listed = _run_text(["flite", "-lv"]).replace("Voices available:", "").split()
    return [v for v in FLITE_VOICES if v in listed]


def _festival_inventory() -> list[str]:
    listed = _run_text(["festival", "--pipe"], stdin="(print (voice.list))\n")
    names = listed.replace("(", " ").replace(")", " ").split()
    return [v for v in FESTIVAL_VOICES if v in names]


@dataclass(frozen=True)
class Inventory:
    """What is installed: base voice names per engine (hold-out order) and espeak-ng variants."""

    names: dict[str, list[str]]
    espeak_variants: list[str]
    warnings: list[str]


def detect_engines() -> Inventory:
    """Find the installed engines and voices; a missing engine is a warning, none at all an error."""
    if shutil.which("sox") is None:
        raise DependencyError(
            f"sox is not installed (kdstore converts all TTS output with it). "
            f"Install it with: sudo apt-get install {APT_PACKAGES}"
        )
    names: dict[str, list[str]] = {}
    variants: list[str] = []
    warnings: list[str] = []
    if shutil.which("espeak-ng"):
        dialects, variants = _espeak_inventory()
        if dialects and variants:
            names[ESPEAK] = dialects
    if shutil.which("flite"):
        names[FLITE] = _flite_inventory()
    if shutil.which("text2wave") and shutil.which("festival"):
        names[FESTIVAL] = _festival_inventory()
        for voice in FESTIVAL_VOICES:
            if voice not in names[FESTIVAL]:
                warnings.append(
                    f"festival voice {voice} is missing; install it with: "
                    f"sudo apt-get install {FESTIVAL_PACKAGES[voice]}"
                )
    names = {engine: found for engine, found in names.items() if found}
    if not names:
        raise DependencyError(
            f"No speech synthesis engine found (tried {', '.join(ENGINES)}). "
            f"Install them with: sudo apt-get install {APT_PACKAGES}"
        )
    for engine in ENGINES:
        if engine not in names:
            package = "festival festvox-kallpc16k" if engine == FESTIVAL else engine
            warnings.append(
                f"TTS engine {engine} is not available; the corpus uses {', '.join(names)} only. "
                f"Install it with: sudo apt-get install {package}"
            )
    for message in warnings:
        log.warning(message)
    return Inventory(names=names, espeak_variants=variants, warnings=warnings)


# ---------------------------------------------------------------- splitting voices


def _hold_out(names: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(test, val, train) base voices: test needs 2+ names, val 4+; train keeps the rest."""
    n_test = max(1, len(names) // 4) if len(names) >= 2 else 0
    n_val = max(1, len(names) // 8) if len(names) >= 4 else 0
    return names[:n_test], names[n_test : n_test + n_val], names[n_test + n_val :]


def split_voices(inventory: Inventory, variety: str = "standard",
                 hold_out_engine: str | None = None) -> dict[str, dict[str, list[Voice]]]:
    """``split -> engine -> voices`` with no voice shared between splits.

    Test and validation voices are unseen base voices where an engine has enough of them (and for
    espeak-ng also unseen variants); otherwise held-out pitch/variant versions of training voices.
    ``variety="wide"`` gives the training split many more speakers (45 espeak-ng variants, seven pitch
    shifts per flite/festival voice); validation and test voices are the same as with ``standard``,
    so a wide-voiced teacher is scored on the same unseen speakers. ``hold_out_engine`` removes one
    engine family from training and validation and makes the test split all of that family's voices
    (a generalisation check: speech from a synthesiser never heard in training).
    Raises ConfigError for an unknown variety or an engine that is not installed.
    """
    if variety not in VARIETIES:
        raise ConfigError(f"voice variety must be one of {', '.join(VARIETIES)}, got {variety!r}")
    if hold_out_engine is not None and hold_out_engine not in inventory.names:
        raise ConfigError(f"cannot hold out {hold_out_engine!r}: installed engines are {', '.join(inventory.names)}")
    out: dict[str, dict[str, list[Voice]]] = {"train": {}, "val": {}, "test": {}}
    for engine, names in inventory.names.items():
        held = dict(zip(("test", "val", "train"), _hold_out(names)))
        for split in ("train", "val", "test"):
            base = held[split] or held["train"]
            wide = variety == "wide" and split == "train"
            if engine == ESPEAK:
                pool = ESPEAK_WIDE_TRAIN if wide else ESPEAK_VARIANTS[split]
                chosen = [v for v in pool if v in inventory.espeak_variants]
                voices = [make_voice(engine, n, variant=v) for n in base for v in chosen]
            else:
                pitches = PITCH_WIDE_TRAIN if wide and held[split] else PITCH_VARIANTS["train" if held[split] else split]
                voices = [make_voice(engine, n, pitch=p) for n in base for p in pitches]
            if voices:
                out[split][engine] = voices
    if hold_out_engine is not None:
        family = sorted({v for split in out.values() for v in split.get(hold_out_engine, [])})
        for split in ("train", "val"):
            out[split].pop(hold_out_engine, None)
        out["test"] = {hold_out_engine: family}
    return out


def unheard_voices(train: dict[str, list[Voice]]) -> dict[str, list[Voice]]:
    """Speakers for untranscribed audio: every training voice (engine voice and variant) at the pitch
    shifts of ``UNHEARD_PITCHES``, which no training, validation or test voice uses. A team's
    untranscribed audio comes from more speakers than its transcribed audio; these stand in for them
    (never a test speaker, so the test split stays unseen)."""
    out: dict[str, list[Voice]] = {}
    for engine, voices in train.items():
        bases = sorted({(v.name, v.variant) for v in voices})
        out[engine] = [make_voice(engine, name, variant=variant, pitch=p) for name, variant in bases
                       for p in UNHEARD_PITCHES]
    return out


# ---------------------------------------------------------------- synthesis


@dataclass(frozen=True)
class SynthesisResult:
    """What happened to one utterance: ``ok``, ``implausible`` (dropped) or ``failed``."""

    path: str
    status: str
    duration: float = 0.0
    detail: str = ""


def _engine_command(voice: Voice, text: str, text_file: Path, raw_wav: Path) -> list[str]:
    if voice.engine == ESPEAK:
        speed = str(round(175 * voice.rate))
        return ["espeak-ng", "-v", f"{voice.name}+{voice.variant}", "-s", speed, "-w", str(raw_wav), text]
    if voice.engine == FLITE:
        return ["flite", "-voice", voice.name, "-f", str(text_file), "-o", str(raw_wav)]
    return ["text2wave", "-eval", f"(voice_{voice.name})", str(text_file), "-o", str(raw_wav)]


def _sox_command(voice: Voice, raw_wav: Path, out_wav: Path) -> list[str]:
    effects = ["channels", "1"]
    if voice.pitch:
        effects += ["pitch", str(voice.pitch)]
    if voice.engine != ESPEAK and voice.rate != 1.0:
        effects += ["tempo", "-s", str(voice.rate)]
    trim = ["silence", "1", "0.02", "0.3%"]
    effects += [*trim, "reverse", *trim, "reverse", "norm", "-3", "pad", "0.15", "0.15"]
    effects += ["rate", "-h", str(SAMPLE_RATE)]
    output = ["-b", "16", "-e", "signed-integer", "-c", "1", str(out_wav)]
    return ["sox", "-D", "-V1", str(raw_wav), *output, *effects]


def wav_duration(path: str | os.PathLike[str]) -> float:
    """Seconds of audio from the file header (frames / sample rate)."""
    import soundfile

    info = soundfile.info(str(path))
    return info.frames / info.samplerate


def plausible(duration: float, num_words: int) -> bool:
    """Catch truncated or stuck synthesis: seconds per word outside [0.15, 1.0] is not speech."""
    return num_words > 0 and MIN_SEC_PER_WORD <= duration / num_words <= MAX_SEC_PER_WORD


def synthesize(voice: Voice, text: str, out_path: str) -> SynthesisResult:
    """Render ``text`` with ``voice`` to a 16 kHz mono 16-bit WAV at ``out_path`` (atomically).

    An existing ``out_path`` is trusted (it was renamed into place only when complete), which makes
    an interrupted corpus build resumable.
    """
    if os.path.exists(out_path):
        return SynthesisResult(out_path, "ok", wav_duration(out_path))
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kdstore-tts-") as tmp:
        text_file, raw_wav = Path(tmp) / "text.txt", Path(tmp) / "raw.wav"
        text_file.write_text(text + "\n", encoding="utf-8")
        out_tmp = Path(tmp) / "out.wav"
        for command in (
            _engine_command(voice, text, text_file, raw_wav),
            _sox_command(voice, raw_wav, out_tmp),
        ):
            try:
                done = subprocess.run(
                    command, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
                )
            except (OSError, subprocess.TimeoutExpired) as err:
                return SynthesisResult(out_path, "failed", detail=f"{command[0]}: {err}")
            error = done.stderr.strip().splitlines()[-1:] if done.stderr.strip() else []
            if done.returncode != 0 or "ERROR" in done.stderr:
                return SynthesisResult(out_path, "failed", detail=f"{command[0]}: {' '.join(error)}")
        if not out_tmp.exists() or out_tmp.stat().st_size <= 44:
            return SynthesisResult(out_path, "failed", detail=f"{voice.engine} wrote no audio")
        duration = wav_duration(out_tmp)
        if not plausible(duration, len(text.split())):
            return SynthesisResult(
                out_path, "implausible", duration, f"{duration / len(text.split()):.3f} s/word"
            )
        shutil.move(str(out_tmp), out_path + ".part")
        os.replace(out_path + ".part", out_path)
    return SynthesisResult(out_path, "ok", duration)
