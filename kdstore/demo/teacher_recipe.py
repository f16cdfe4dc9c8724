"""``kdstore demo --train-teacher``: the recipe behind the committed demo teacher.

Trained once, in the background, on a larger synthetic corpus than the demo's (same grammar, same
validation and test voices, so the demo's test voices stay unseen; many more training voices:
``variety="wide"``), with NeMo's waveform augmentations (speed, synthetic rooms and noise, gain:
:mod:`kdstore.corpus.acoustics`) and validation-based checkpointing so an interrupted run resumes.
``hold_out_engine`` trains a second, smaller teacher without one engine family and tests on that
family only: how the recipe generalises to a synthesiser it never heard. The result is saved with fp16 weights (small enough to commit) next to its
training curve and its scores on the test split, in ``WORKDIR/demo_teacher/``: the same files as the
package data ``kdstore/assets/demo_teacher/`` (:mod:`kdstore.assets`), which a maintainer replaces
by copying them there. Nothing is ever written into the installed package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdstore.errors import KdstoreError

if TYPE_CHECKING:
    from kdstore.corpus import DemoCorpus


@dataclass(frozen=True)
class TeacherRecipe:
    """How the committed demo teacher was trained: corpus size and seed, steps, batch, threads, config."""

    hours: float = 4.0
    seed: int = 0
    steps: int = 4000
    batch_size: int = 16
    threads: int = 1
    val_every_epochs: int = 2
    config: str = "tiny-teacher"
    variety: str = "wide"
    augment: bool = True
    hold_out_engine: str | None = None
    max_minutes: int = 88  # Lightning's max_time: the run ends (and keeps its best checkpoint) by then
    init_from: str | None = None  # a .nemo whose weights (and tokenizer) the teacher starts from (the TDT teacher)


def write_recipe_config(recipe: TeacherRecipe, work: Path) -> Path:
    """``WORKDIR/teacher.yaml``: the recipe's config (``defaults: [tiny-teacher]``) plus NeMo's
    augmentor settings with freshly generated rooms and noise (:mod:`kdstore.corpus.acoustics`)."""
    import yaml

    from kdstore.corpus.acoustics import augmentor_config, write_rooms_and_noise

    body: dict[str, Any] = {"defaults": [recipe.config], "name": recipe.config}
    if recipe.augment:
        impulses, noise = write_rooms_and_noise(work / "acoustics", seed=recipe.seed)
        body["model"] = {"train_ds": {"augmentor": augmentor_config(impulses, noise)}}
    path = work / "teacher.yaml"
    path.write_text("# written by kdstore demo --train-teacher (kdstore/demo/teacher_recipe.py)\n"
                    + yaml.safe_dump(body, sort_keys=False))
    return path


def teacher_command(recipe: TeacherRecipe, corpus: DemoCorpus, work: Path) -> list[str]:
    """The ``kdstore train-student`` command line (a subprocess, resumable via exp_manager) of the recipe."""
    minutes = f"00:{recipe.max_minutes // 60:02d}:{recipe.max_minutes % 60:02d}:00"
    tokenizer = corpus.tokenizer_dir
    init: list[str] = []
    if recipe.init_from:  # start from that model: its weights where shapes fit, and its tokenizer (same token ids)
        from kdstore.nemo.checkpoint import read_tokenizer_files

        tokenizer = work / "init-tokenizer"
        tokenizer.mkdir(parents=True, exist_ok=True)
        for name, payload in read_tokenizer_files(recipe.init_from).items():
            (tokenizer / name).write_bytes(payload)
        init = [f"model.init_from_teacher.path={recipe.init_from}", "model.init_from_teacher.encoder_layers=even"]
    return [sys.executable, "-m", "kdstore.cli.main", "train-student", "--config", str(write_recipe_config(recipe, work)),
            "--no-progress", f"+trainer.max_time={minutes}",
            "model.enable_kd=false", f"model.train_ds.manifest_filepath={corpus.train_manifest}",
            f"model.validation_ds.manifest_filepath={corpus.val_manifest}",
            f"model.tokenizer.dir={tokenizer}", *init, f"model.train_ds.batch_size={recipe.batch_size}",
            f"trainer.max_steps={recipe.steps}", f"trainer.check_val_every_n_epoch={recipe.val_every_epochs}",
            "trainer.accelerator=cpu", f"run.seed={recipe.seed}", f"run.num_threads={recipe.threads}",
            f"run.output={work / 'teacher.nemo'}", f"exp_manager.exp_dir={work / 'logs'}",
            "exp_manager.resume_if_exists=true", "+exp_manager.use_datetime_version=false"]


def recipe_command(recipe: TeacherRecipe, workdir: str | Path) -> str:
    """The ``kdstore demo --train-teacher`` command line that trains ``recipe`` into ``workdir`` (every setting the
    CLI offers that the recipe changes: the TDT config, steps, hours, seed, held-out engine)."""
    return ("kdstore demo --train-teacher --workdir " + str(workdir)
            + (" --tdt" if recipe.config.endswith("-tdt") else "")
            + f" --teacher-steps {recipe.steps} --teacher-hours {recipe.hours:g}"
            + (f" --seed {recipe.seed}" if recipe.seed else "")
            + (f" --hold-out-engine {recipe.hold_out_engine}" if recipe.hold_out_engine else ""))


def train_demo_teacher(workdir: str | Path, recipe: TeacherRecipe = TeacherRecipe(), out_dir: Path | None = None,
                       echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Corpus -> train (resumable) -> score on the test split -> ``out_dir``/teacher.nemo (fp16) + scores.

    ``out_dir`` defaults to ``WORKDIR/demo_teacher``; it gets the files of ``kdstore/assets/demo_teacher``
    (``teacher.nemo``, ``teacher-scores.json``, ``teacher-train.log.csv``). Returns the scores written.
    Raises ``KdstoreError`` when the training subprocess fails (its log is ``WORKDIR/train.log``).
    """
    from kdstore.corpus import prepare_demo
    from kdstore.evaluate.transcribe import evaluate_model
    from kdstore.nemo.checkpoint import restore_model

    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out_dir = work / "demo_teacher" if out_dir is None else Path(out_dir)
    corpus = prepare_demo(work / "corpus", task="commands", hours=recipe.hours, seed=recipe.seed,
                          variety=recipe.variety, hold_out_engine=recipe.hold_out_engine, num_jobs=2)
    command = teacher_command(recipe, corpus, work)
    echo("[teacher] " + " ".join(command[2:]))
    start = time.time()
    with (work / "train.log").open("a") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if code != 0:
        raise KdstoreError(f"teacher training failed; see {work / 'train.log'}")
    scores = evaluate_model(work / "teacher.nemo", corpus.test_manifest)
    by_engine = wer_by_engine(scores)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = restore_model(work / "teacher.nemo")
    model.half().save_to(str(out_dir / "teacher.nemo"))  # fp16 weights: half the size; loads as fp32
    shutil.copyfile(work / "teacher.log.csv", out_dir / "teacher-train.log.csv")
    summary = {
        "wer": scores.wer, "cer": scores.cer, "params": scores.params, "test_utterances": scores.utterances,
        "wer_by_engine": by_engine, "hold_out_engine": recipe.hold_out_engine,
        "steps": recipe.steps, "train_seconds": round(time.time() - start, 1), "recipe": asdict(recipe),
        "corpus": {"hours": dict(corpus.hours), "utterances": dict(corpus.utterances)},
        "command": recipe_command(recipe, workdir),
    }
    (out_dir / "teacher-scores.json").write_text(json.dumps(summary, indent=2) + "\n")
    asset = "demo_teacher_tdt" if recipe.config.endswith("-tdt") else "demo_teacher"
    echo(f"[teacher] test WER {100 * scores.wer:.2f}% CER {100 * scores.cer:.2f}% -> {out_dir / 'teacher.nemo'}; "
         f"to ship it, copy that folder's files into kdstore/assets/{asset}/ of a checkout")
    return summary


def wer_by_engine(result: Any) -> dict[str, float]:
    """Test WER per TTS engine family (the engine is the first part of each WAV's voice folder,
    ``wavs/test/<engine>.<voice>.<variant>/``), scored with the same normaliser as the whole set."""
    from kdstore.evaluate.scoring import score

    groups: dict[str, tuple[list[str], list[str]]] = {}
    for key, ref, hyp in zip(result.keys, result.references, result.hypotheses):
        engine = Path(key).parent.name.split(".")[0]
        refs, hyps = groups.setdefault(engine, ([], []))
        refs.append(ref)
        hyps.append(hyp)
    return {engine: round(score(refs, hyps, result.normalizer).wer, 4) for engine, (refs, hyps) in sorted(groups.items())}
