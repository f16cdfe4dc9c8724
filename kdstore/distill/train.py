"""Stage 2 entry point: train a student (with KD from a store, or plainly) and save a plain .nemo.

Callable without the CLI: ``train_student(load_train_config("tiny", [...], store=...))``.
Order as in a readable recipe: settings -> checks -> trainer -> model -> fit -> save.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from kdstore.distill.augment import length_changing
from kdstore.distill.callbacks import CurveRecorder, start_exp_manager
from kdstore.distill.config import KDSettings, ModelSection, read_train_config, required
from kdstore.errors import ConfigError, IncompatibleStoreError, TrainingError
from kdstore.files import sha256_file
from kdstore.nemo.frontend import front_end_from_config
from kdstore.nemo.model_kind import config_tdt_durations

# Trainer arguments kdstore sets itself, and where to set what they stand for.
SET_BY_KDSTORE = {
    "logger": "exp_manager adds the loggers (exp_manager.create_tensorboard_logger, ...)",
    "enable_checkpointing": "exp_manager adds checkpoints (exp_manager.create_checkpoint_callback)",
    "enable_progress_bar": "use --progress/--no-progress",
    "callbacks": "kdstore adds its loss-curve callback; exp_manager adds the others",
}


@dataclass(frozen=True)
class TrainResult:
    model_path: Path
    steps: int
    seconds: float
    params: int
    curve_csv: Path
    final_losses: dict[str, float]
    log_dir: Path | None = None  # exp_manager's folder (TensorBoard, checkpoints)
    best_model: Path | None = None  # best-by-val-WER .nemo, when validation ran
    skipped_lines: int = 0  # manifest lines skipped under model.train_ds.skip_bad
    init_report: Path | None = None  # model.init_from_teacher's table (init_from_teacher.md)
    teacher_labelled: int = 0  # training utterances whose label is the teacher's (pseudo-labels from a store)
    left_out_by_dump: int = 0  # manifest lines a store's dump labelled but left out (--min-confidence, no words)
    left_out_by_duration: int = 0  # training lines outside model.train_ds.min_duration/max_duration


def check_store_compatible(model_cfg: Any, model: ModelSection, store_path: str, kd_on: bool = True) -> Any:
    """Open the store(s) (``store_path``: one path or several, comma-separated), refusing one whose frame
    count T (sample rate, hop, padding rules, subsampling: :func:`kdstore.frames.frame_count_difference`
    computes both front ends' T), k or augmentation does not fit what the student will see (design section
    6; the tokenizer, which fixes U, is checked by :func:`tokenizer_for_store`). Mel features and
    normalisation may differ (a 128-mel teacher distils into an 80-mel student). ``model_cfg`` is NeMo's
    model config (its preprocessor is built to read the front end), ``model`` its typed view; ``kd_on``
    False (labels only, no KD term) skips the checks that only KD needs. Returns the StoreSet; raises
    IncompatibleStoreError naming the setting (or StoreError for stores that cannot be read together)."""
    from kdstore.distill.checks import store_front_end_problem
    from kdstore.store import StoreSet, split_paths

    stores = StoreSet(split_paths(store_path))
    student = front_end_from_config(model_cfg)
    for reader in stores.readers:
        problem = store_front_end_problem(reader.path, reader.metadata.front_end, student)
        if problem:
            raise IncompatibleStoreError(problem)
    if not kd_on:
        return stores
    top_k = model.kd.top_k
    if top_k is not None and top_k > stores.top_k:
        raise IncompatibleStoreError(f"model.kd.top_k={top_k} but store {stores.path} holds only k={stores.top_k} "
                                     f"per node; use model.kd.top_k<={stores.top_k} (or null for all)")
    theirs, ours = stores.tdt_durations, config_tdt_durations(model_cfg)
    if theirs and ours and tuple(theirs) != ours and model.kd.duration_weight > 0:
        raise IncompatibleStoreError(f"{stores.path}: the TDT teacher's durations are {list(theirs)}, the student's "
                                     f"{list(ours)}; give the student the teacher's (model.model_defaults.tdt_durations) "
                                     "or set model.kd.duration_weight=0")
    changing = length_changing(model.train_ds.augmentor)
    if changing:
        raise IncompatibleStoreError(f"{changing[0]} perturbation changes the number of frames T: remove "
                                     f"model.train_ds.augmentor.{changing[0]} while KD from a store is on")
    return stores


def tokenizer_for_store(tokenizer_dir: str | None, reader: Any, workdir: Path) -> str:
    """The tokenizer folder to train with: the store's (written to ``workdir``) unless one is given;
    one given must be the teacher's (same tokenizer.model sha256) or IncompatibleStoreError is raised."""
    if tokenizer_dir is None:
        return str(reader.write_tokenizer(workdir / "tokenizer"))
    model_file = Path(tokenizer_dir) / "tokenizer.model"
    if not model_file.is_file():
        raise ConfigError(f"model.tokenizer.dir={tokenizer_dir} has no tokenizer.model")
    if sha256_file(model_file) != reader.metadata.fingerprint.tokenizer_sha256:
        raise IncompatibleStoreError(
            f"tokenizer {model_file} differs from the teacher's tokenizer in the store; leave "
            "model.tokenizer.dir unset to use the store's own tokenizer"
        )
    return tokenizer_dir


def build_student(model_cfg: Any, trainer: pl.Trainer | None = None) -> Any:
    """Instantiate the student class that fits NeMo's model config (hybrid when ``aux_ctc`` is set); it
    records the plain NeMo class as ``target``, so the saved .nemo loads without kdstore."""
    from omegaconf import open_dict

    from kdstore.distill.student import PLAIN_TARGETS, KDHybridModel, KDRNNTModel

    hybrid = "aux_ctc" in model_cfg and model_cfg.aux_ctc is not None
    with open_dict(model_cfg):
        model_cfg.target = PLAIN_TARGETS["hybrid" if hybrid else "rnnt"]
    cls = KDHybridModel if hybrid else KDRNNTModel
    return cls(cfg=model_cfg, trainer=trainer)


def trainer_arguments(trainer: dict[str, Any], progress: bool) -> dict[str, Any]:
    """The config's ``trainer`` section as Lightning Trainer arguments, plus kdstore's own settings.

    Raises ConfigError for a key that is not a Trainer argument, or one kdstore sets itself.
    """
    accepted = inspect.signature(pl.Trainer.__init__).parameters
    for key in trainer:
        if key in SET_BY_KDSTORE:
            raise ConfigError(f"trainer.{key} is set by kdstore: remove it ({SET_BY_KDSTORE[key]})")
        if key not in accepted:
            raise ConfigError(f"trainer.{key} is not an argument of Lightning's Trainer; check the spelling")
    return {"enable_model_summary": False,
            "use_distributed_sampler": False,  # kdstore's samplers shard batches by rank themselves
            **trainer, "enable_progress_bar": progress, "logger": False, "enable_checkpointing": False}


def train_student(cfg: Any, progress: bool = False, echo: Callable[[str], None] | None = None) -> TrainResult:
    """Train per ``cfg`` (a loaded config, :func:`kdstore.distill.config.load_train_config`; every key is
    described in kdstore/configs/_base.yaml) and save ``run.output`` as a plain .nemo.

    ``cfg`` is the DictConfig NeMo builds the model from: the store's tokenizer folder and the default
    skipped-lines file are written into it, and it is saved in the .nemo. Raises ConfigError for a
    missing or wrong setting and IncompatibleStoreError for a store the student cannot learn from.
    ``echo`` receives what the initialisation did (NeMo's init keys, the teacher-initialisation table).
    """
    import torch
    from omegaconf import OmegaConf

    settings = read_train_config(cfg)
    run, model = settings.run, settings.model
    output = Path(required(run.output, "run.output", "set run.output=PATH.nemo"))
    required(model.train_ds.manifest_filepath, "model.train_ds.manifest_filepath",
             "set model.train_ds.manifest_filepath=train.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    workdir = output.with_suffix(".files")
    workdir.mkdir(parents=True, exist_ok=True)

    if model.train_ds.skipped_file is None:  # bad lines (with skip_bad) and filtered ones are listed there
        cfg.model.train_ds.skipped_file = str(output.with_suffix(".skipped.jsonl"))
    kd = KDSettings.of(model)
    tokenizer_dir = model.tokenizer.dir
    if kd.store and not kd.teacher_model_path:
        reader = check_store_compatible(cfg.model, model, kd.store, kd_on=kd.enabled)
        tokenizer_dir = tokenizer_for_store(tokenizer_dir, reader, workdir)
    cfg.model.tokenizer.dir = required(tokenizer_dir, "model.tokenizer.dir",
                                       "set model.tokenizer.dir=DIR (or give --store to use the teacher's)")

    torch.set_num_threads(run.num_threads)
    pl.seed_everything(run.seed, verbose=False)
    curve_csv = Path(run.log_csv) if run.log_csv else output.with_suffix(".log.csv")
    recorder = CurveRecorder(curve_csv, print_losses=not progress)
    trainer = pl.Trainer(**trainer_arguments(settings.trainer, progress), callbacks=[recorder])
    log_dir = start_exp_manager(trainer, settings.exp_manager, output,
                                validation=bool(model.validation_ds.manifest_filepath))

    student = build_student(cfg.model, trainer=trainer)
    if getattr(student, "train_data_summary", None):
        (echo or (lambda line: None))(student.train_data_summary)
    student.rnnt_loss_choice = run.rnnt_loss
    init_report = initialise(student, cfg, model, workdir, echo or (lambda line: None))
    params = int(sum(p.numel() for p in student.parameters()))

    start = time.time()
    trainer.fit(student)
    seconds = time.time() - start
    # With validation, NeMo's checkpoint callback restores the best-by-val-WER weights at the end of
    # fit (and the trainer's step counter with them): run.output then holds the best model.
    steps = max((int(row["step"]) for row in recorder.rows), default=int(trainer.global_step))
    if steps == 0:
        batches = len(student._train_dl) if getattr(student, "_train_dl", None) is not None else 0
        raise TrainingError(f"no training step ran ({batches} training batches per epoch on this rank, "
                            f"trainer.max_steps={settings.trainer.get('max_steps')}); nothing was saved to {output}: "
                            "give more training utterances than ranks x model.train_ds.batch_size, and max_steps > 0")

    student.eval()
    if trainer.global_rank != 0:
        return TrainResult(output, steps, seconds, params, curve_csv, {}, log_dir, None)
    student.save_to(str(output))
    OmegaConf.save(cfg, workdir / "train_config.yaml", resolve=True)
    # the newest: a log folder may also hold earlier runs' dated folders
    best = max(Path(log_dir).rglob(f"{settings.name}.nemo"), key=lambda p: p.stat().st_mtime, default=None) \
        if log_dir else None
    return TrainResult(output, steps, seconds, params, curve_csv, dict(getattr(student, "last_step_logs", {})),
                       log_dir, best, int(getattr(student, "skipped_lines", 0)), init_report,
                       int(getattr(student, "teacher_labelled", 0)), int(getattr(student, "left_out_by_dump", 0)),
                       int(getattr(student, "left_out_by_duration", 0)))


def initialise(student: Any, cfg: Any, model: ModelSection, workdir: Path, echo: Callable[[str], None]) -> Path | None:
    """NeMo's ``init_from_*`` keys, then ``model.init_from_teacher`` (kdstore.distill.teacher_init); what each
    did goes to ``echo``; the teacher-initialisation table is written to ``workdir/init_from_teacher.md``
    (returned)."""
    from kdstore.distill.teacher_init import apply_nemo_init, init_from_teacher

    summary = apply_nemo_init(student, cfg)
    if summary:
        echo(summary)
    if not model.init_from_teacher.path:
        return None
    if not Path(model.init_from_teacher.path).is_file():
        raise ConfigError(f"model.init_from_teacher.path={model.init_from_teacher.path}: no such file (the teacher .nemo)")
    report = init_from_teacher(student, model.init_from_teacher.path, model.init_from_teacher.encoder_layers)
    echo(report.table())
    return report.write(workdir)
