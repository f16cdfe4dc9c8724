"""``prepare_demo``: a small, reproducible multi-voice TTS speech corpus for the kdstore demo.

Why synthetic speech: the demo must run offline on a fresh machine (no hub downloads), and a
transducer teacher/student pair needs paired audio and text. Why split by voice: a student that is
scored on the voices it trained on looks far better than it is; test voices here are unseen.

Steps (each restartable): plan utterances (seeded) -> synthesise them in parallel -> write NeMo
manifests -> train the SentencePiece tokenizer on the train texts -> write ``corpus.json`` -> mark
``.done``. A re-run with the same arguments returns the finished corpus; an interrupted run resumes
(finished WAVs are reused); different arguments need ``overwrite=True``.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import shutil
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdstore.corpus import grammar, texts, tts
from kdstore.corpus.tokenizer import train_tokenizer
from kdstore.errors import ConfigError, KdstoreError
from kdstore.files import write_atomic

log = logging.getLogger(__name__)

FORMAT = "kdstore-demo/1"
SPLITS = ("train", "val", "test")
SPLIT_SHARE = {"train": 0.8, "val": 0.1, "test": 0.1}
UNTRANSCRIBED = "untranscribed"  # extra training-voice audio whose text is withheld (kept only to score labels)
TASKS = ("commands", "open")
_ARTIFACTS = (
    "wavs",
    "tokenizer",
    "train.json",
    "val.json",
    "test.json",
    "untranscribed.json",
    "untranscribed.refs.json",
    "corpus.json",
    ".done",
    ".in_progress",
)
# Planning estimate of one utterance's length at rate 1.0: padding plus seconds per character
# (fitted on both tasks across the three engines: 0.4 s + 0.054 s/char, ~0.33 s/word).
_PAD_S, _SEC_PER_CHAR = 0.4, 0.054


@dataclass(frozen=True, kw_only=True)
class DemoCorpus:
    """Where a finished demo corpus lives, with its headline numbers (details in ``corpus.json``)."""

    out_dir: Path
    train_manifest: Path
    val_manifest: Path
    test_manifest: Path
    tokenizer_dir: Path
    stats_path: Path
    utterances: Mapping[str, int]
    hours: Mapping[str, float]
    dropped: int
    vocab_size: int
    warnings: tuple[str, ...]
    untranscribed_manifest: Path | None = None  # no "text": what a team's unlabelled audio looks like
    untranscribed_refs: Path | None = None  # the same lines with the withheld text, only to score labels

    @property
    def manifests(self) -> dict[str, Path]:
        return {"train": self.train_manifest, "val": self.val_manifest, "test": self.test_manifest}

    @classmethod
    def load(cls, out_dir: Path) -> DemoCorpus:
        """Read a finished corpus back from ``OUT/corpus.json``."""
        stats = json.loads((out_dir / "corpus.json").read_text())
        extra = UNTRANSCRIBED in stats["splits"]
        return cls(
            out_dir=out_dir,
            train_manifest=out_dir / "train.json",
            val_manifest=out_dir / "val.json",
            test_manifest=out_dir / "test.json",
            tokenizer_dir=out_dir / "tokenizer",
            stats_path=out_dir / "corpus.json",
            utterances={s: v["utterances"] for s, v in stats["splits"].items()},
            hours={s: v["hours"] for s, v in stats["splits"].items()},
            dropped=stats["dropped"]["total"],
            vocab_size=stats["tokenizer"]["vocab_size"],
            warnings=tuple(stats["warnings"]),
            untranscribed_manifest=out_dir / f"{UNTRANSCRIBED}.json" if extra else None,
            untranscribed_refs=out_dir / f"{UNTRANSCRIBED}.refs.json" if extra else None,
        )


@dataclass(frozen=True)
class _Planned:
    split: str
    text: str
    voice: tts.Voice
    path: str


# ---------------------------------------------------------------- arguments and markers


def _check_args(task: str, hours: float, vocab_size: int, num_jobs: int) -> None:
    if task not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if not 0 < hours <= 1000:
        raise ConfigError(f"hours must be in (0, 1000], got {hours}")
    if vocab_size < 2:
        raise ConfigError(f"vocab_size must be at least 2, got {vocab_size}")
    if num_jobs < 1:
        raise ConfigError(f"num_jobs must be at least 1, got {num_jobs}")


def _claim(out_dir: Path, args: dict[str, Any], overwrite: bool) -> bool:
    """True when ``out_dir`` already holds this exact corpus; raise if it holds another one."""
    for marker in (".done", ".in_progress"):
        path = out_dir / marker
        if not path.exists():
            continue
        previous = json.loads(path.read_text())
        if previous == args and not overwrite:
            return marker == ".done"
        if not overwrite:
            state = "holds a demo corpus" if marker == ".done" else "holds an unfinished demo corpus"
            raise KdstoreError(
                f"{out_dir} {state} built with other arguments ({previous}, now {args}); "
                "pass overwrite=True (--overwrite) to replace it, or choose another directory"
            )
    if overwrite:
        for name in _ARTIFACTS:
            target = out_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ".in_progress").write_text(json.dumps(args))
    return False


# ---------------------------------------------------------------- planning


def _text_source(task: str, split: str, rng: random.Random, pools: dict[str, list[str]]) -> Iterator[str]:
    """Endless texts of one split: grammar draws, or a seeded shuffle of the sentence pool."""
    if task == "commands":
        while True:
            yield from grammar.sample_commands(rng, split, 1)
    pool = list(pools[split])
    if not pool:
        raise KdstoreError(
            f"no {split} sentences found for task 'open'; install: sudo apt-get install fortunes wordnet-base"
        )
    while True:
        rng.shuffle(pool)
        yield from pool


def _voice_cycle(voices: list[tts.Voice], rng: random.Random) -> Iterator[tts.Voice]:
    """Every voice of a family in turn, reshuffled each round, so voices get even shares."""
    voices = list(voices)
    while True:
        rng.shuffle(voices)
        yield from voices


def estimate_seconds(text: str, voice: tts.Voice) -> float:
    """Rough length of the synthesised utterance, used only to stop planning at ``hours``."""
    return _PAD_S + _SEC_PER_CHAR * len(text) / voice.rate


def plan_utterances(
    task: str, hours: float, seed: int, voices: dict[str, dict[str, list[tts.Voice]]], wav_dir: Path
) -> list[_Planned]:
    """Seeded list of (split, text, voice, path) until each split's estimated share of ``hours``.

    Engine families take turns (round robin) so each gets about a third of the utterances, whatever
    the number of voices it has; within a family voices take turns too.
    """
    rng = random.Random(seed)
    pools = texts.open_sentences() if task == "open" else {}
    plan: list[_Planned] = []
    for split in SPLITS:
        families = sorted(voices[split])
        rng.shuffle(families)
        cycles = {f: _voice_cycle(voices[split][f], rng) for f in families}
        source = _text_source(task, split, rng, pools)
        budget = hours * 3600 * SPLIT_SHARE[split]
        for index, family in enumerate(itertools.cycle(families)):
            if budget <= 0 and index >= len(families):  # at least one utterance per family
                break
            voice, text = next(cycles[family]), next(source)
            path = wav_dir / split / voice.id / f"{split}-{index:06d}.wav"
            plan.append(_Planned(split, text, voice, str(path)))
            budget -= estimate_seconds(text, voice)
    return plan


def plan_untranscribed(task: str, hours: float, seed: int, voices: dict[str, dict[str, list[tts.Voice]]],
                       wav_dir: Path) -> list[_Planned]:
    """``hours`` of new training-split sentences spoken by voices of no other split (the training voices
    at unheard pitches, :func:`kdstore.corpus.tts.unheard_voices`): the untranscribed split. Its own
    seeded generator, so asking for it leaves the other splits exactly as they were."""
    rng = random.Random(f"{seed}-{UNTRANSCRIBED}")
    pools = texts.open_sentences() if task == "open" else {}
    unheard = tts.unheard_voices(voices["train"])
    families = sorted(unheard)
    rng.shuffle(families)
    cycles = {f: _voice_cycle(unheard[f], rng) for f in families}
    source = _text_source(task, "train", rng, pools)
    budget, plan = hours * 3600, []
    for index, family in enumerate(itertools.cycle(families)):
        if budget <= 0:
            break
        voice, text = next(cycles[family]), next(source)
        plan.append(_Planned(UNTRANSCRIBED, text, voice, str(wav_dir / UNTRANSCRIBED / voice.id / f"u-{index:06d}.wav")))
        budget -= estimate_seconds(text, voice)
    return plan


# ---------------------------------------------------------------- tokenizer


# ---------------------------------------------------------------- synthesis and outputs


def _synthesize_all(plan: list[_Planned], num_jobs: int, progress: bool) -> list[tts.SynthesisResult]:
    """Render the plan in order. Threads suffice: each job's work runs in engine and sox processes."""

    def one(item: _Planned) -> tts.SynthesisResult:
        return tts.synthesize(item.voice, item.text, item.path)

    with ThreadPoolExecutor(max_workers=num_jobs) as pool:
        results: Iterator[tts.SynthesisResult] = pool.map(one, plan)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(plan), desc="synthesising", unit="utt")
        return list(results)


def _stats(plan: list[_Planned], results: list[tts.SynthesisResult], warnings: list[str]) -> dict[str, Any]:
    splits: dict[str, Any] = {}
    dropped: dict[str, Any] = {"total": 0, "implausible": 0, "failed": 0, "by_engine": {}}
    for split in [*SPLITS, *sorted({item.split for item in plan} - set(SPLITS))]:
        by_engine: dict[str, dict[str, float]] = {}
        voices = set()
        for item, res in zip(plan, results):
            if item.split != split:
                continue
            if res.status != "ok":
                dropped["total"] += 1
                dropped[res.status] += 1
                dropped["by_engine"][item.voice.engine] = dropped["by_engine"].get(item.voice.engine, 0) + 1
                continue
            row = by_engine.setdefault(item.voice.engine, {"utterances": 0, "hours": 0.0})
            row["utterances"] += 1
            row["hours"] += res.duration / 3600
            voices.add(item.voice.id)
        splits[split] = {
            "utterances": sum(int(r["utterances"]) for r in by_engine.values()),
            "hours": round(sum(r["hours"] for r in by_engine.values()), 4),
            "by_engine": {
                e: {"utterances": r["utterances"], "hours": round(r["hours"], 4)}
                for e, r in sorted(by_engine.items())
            },
            "voices": sorted(voices),
        }
    failures = [f"{i.voice.id}: {r.detail}" for i, r in zip(plan, results) if r.status == "failed"]
    return {"splits": splits, "dropped": dropped, "warnings": warnings, "failed_examples": failures[:5]}


def prepare_demo(
    out_dir: str | Path,
    task: str = "commands",
    hours: float = 1.0,
    seed: int = 0,
    vocab_size: int = 128,
    num_jobs: int = 2,
    progress: bool = False,
    overwrite: bool = False,
    variety: str = "standard",
    hold_out_engine: str | None = None,
    untranscribed_hours: float = 0.0,
) -> DemoCorpus:
    """Build (or return the finished) demo corpus in ``out_dir``.

    Writes ``wavs/``, NeMo manifests ``train.json``/``val.json``/``test.json`` (absolute paths),
    ``tokenizer/`` (SentencePiece BPE on the train texts, NeMo ``tokenizer.type: bpe`` layout) and
    ``corpus.json`` (utterances/hours per split and engine, voices, drops, warnings).
    Deterministic in ``seed``: the same arguments give the same texts, voices and manifests.
    ``variety`` and ``hold_out_engine`` choose the voices (:func:`kdstore.corpus.tts.split_voices`):
    the demo teacher trains on ``wide``; a held-out engine family measures how it generalises.
    ``untranscribed_hours`` > 0 adds ``untranscribed.json``: more audio, in voices of no other split (training voices at unheard pitches)
    (training voices at unheard pitches), with no ``text`` (for ``dump-teacher`` to label), and ``untranscribed.refs.json``, the same lines with the
    withheld text, only for ``kdstore label-quality``.
    """
    _check_args(task, hours, vocab_size, num_jobs)
    out = Path(out_dir).resolve()
    args = {
        "format": FORMAT,
        "task": task,
        "hours": float(hours),
        "seed": int(seed),
        "vocab_size": int(vocab_size),
    }
    if variety != "standard":  # recorded only when set, so corpora built before these options still match
        args["variety"] = variety
    if hold_out_engine is not None:
        args["hold_out_engine"] = hold_out_engine
    if untranscribed_hours:
        if not 0 < untranscribed_hours <= 1000:
            raise ConfigError(f"untranscribed hours must be in (0, 1000], got {untranscribed_hours}")
        args["untranscribed_hours"] = float(untranscribed_hours)
        args["untranscribed_voices"] = "unheard"  # tts.unheard_voices
    if _claim(out, args, overwrite):
        return DemoCorpus.load(out)

    inventory = tts.detect_engines()
    warnings = list(inventory.warnings)
    voices = tts.split_voices(inventory, variety, hold_out_engine)
    plan = plan_utterances(task, hours, seed, voices, out / "wavs")
    if untranscribed_hours:
        plan += plan_untranscribed(task, untranscribed_hours, seed, voices, out / "wavs")
    results = _synthesize_all(plan, num_jobs, progress)

    stats = _stats(plan, results, warnings)
    for split in SPLITS:
        rows = [
            {"audio_filepath": item.path, "duration": res.duration, "text": item.text}
            for item, res in zip(plan, results)
            if item.split == split and res.status == "ok"
        ]
        if not rows:
            raise KdstoreError(
                f"speech synthesis produced no usable {split} audio ({stats['dropped']['total']} utterances "
                f"dropped; e.g. {stats['failed_examples'][:1]}); check the TTS engines with: "
                f"espeak-ng 'hello world' / flite -t hello"
            )
        write_atomic(out / f"{split}.json", (json.dumps(row) + "\n" for row in rows))
    if untranscribed_hours:
        rows = [{"audio_filepath": item.path, "duration": res.duration, "text": item.text}
                for item, res in zip(plan, results) if item.split == UNTRANSCRIBED and res.status == "ok"]
        write_atomic(out / f"{UNTRANSCRIBED}.refs.json", (json.dumps(row) + "\n" for row in rows))
        write_atomic(out / f"{UNTRANSCRIBED}.json",
                     (json.dumps({k: v for k, v in row.items() if k != "text"}) + "\n" for row in rows))
    if stats["dropped"]["total"]:
        log.info("dropped %d of %d utterances", stats["dropped"]["total"], len(plan))

    train_texts = [
        item.text for item, res in zip(plan, results) if item.split == "train" and res.status == "ok"
    ]
    tokenizer = train_tokenizer(train_texts, out / "tokenizer", vocab_size)
    if tokenizer.warning:
        warnings.append(tokenizer.warning)
        log.warning(tokenizer.warning)
    stats = {
        "format": FORMAT,
        "args": args,
        **stats,
        "engines": {engine: names for engine, names in inventory.names.items()},
        "tokenizer": {"requested_vocab_size": vocab_size, "vocab_size": tokenizer.vocab_size},
        "total": {
            "utterances": sum(v["utterances"] for v in stats["splits"].values()),
            "hours": round(sum(v["hours"] for v in stats["splits"].values()), 4),
        },
    }
    (out / "corpus.json").write_text(json.dumps(stats, indent=2) + "\n")
    (out / ".done").write_text(json.dumps(args))
    (out / ".in_progress").unlink(missing_ok=True)
    return DemoCorpus.load(out)
