"""Stage 2 entry point: train a student (with KD from a store, or plainly) and save a plain .nemo.

Callable without the CLI: ``train_student(load_train_config("tiny", [...], store=...))``.
Order as in a readable recipe: settings -> checks -> model -> trainer -> fit -> save.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl

from kdstore.distill.augment import length_changing
from kdstore.distill.config import require
from kdstore.errors import ConfigError, IncompatibleStoreError
from kdstore.files import sha256_file
from kdstore.distill.settings import KDSettings


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


def check_store_compatible(cfg, store_path: str) -> object:
    """Refuse a store whose front end or tokenizer differs from the student's (design section 6)."""
    from kdstore.store import StoreReader

    reader = StoreReader(store_path)
    meta = reader.metadata
    pre, enc = cfg.model.preprocessor, cfg.model.encoder
    student = {
        "sample_rate": int(pre.sample_rate), "window_size": float(pre.window_size),
        "window_stride": float(pre.window_stride), "features": int(pre.features),
        "normalize": str(pre.normalize), "subsampling_factor": int(enc.subsampling_factor),
    }
    for name, value in student.items():
        stored = getattr(meta.front_end, name)
        if stored != value:
            raise IncompatibleStoreError(
                f"store {store_path} was dumped with {name}={stored} but the student has {name}={value}; "
                "student and teacher must share the preprocessor and subsampling factor (set "
                f"model.{'encoder' if name == 'subsampling_factor' else 'preprocessor'}.{name}={stored})"
            )
    top_k = (cfg.model.get("kd") or {}).get("top_k")
    if top_k and int(top_k) > meta.top_k:
        raise IncompatibleStoreError(f"model.kd.top_k={top_k} but store {store_path} holds only k={meta.top_k} per node; "
                                     f"use model.kd.top_k<={meta.top_k} (or null for all)")
    changing = length_changing(cfg.model.train_ds.get("augmentor"))
    if changing:
        raise IncompatibleStoreError(f"{changing[0]} perturbation changes the number of frames T: remove "
                                     f"model.train_ds.augmentor.{changing[0]} while KD from a store is on")
    return reader


def _tokenizer_for_store(cfg, reader, workdir: Path) -> None:
    """Use the store's tokenizer unless one is given; if one is given it must be the same."""
    from omegaconf import OmegaConf

    stored_sha = reader.metadata.fingerprint.tokenizer_sha256
    if OmegaConf.is_missing(cfg.model.tokenizer, "dir"):
        cfg.model.tokenizer.dir = str(reader.write_tokenizer(workdir / "tokenizer"))
        return
    model_file = Path(cfg.model.tokenizer.dir) / "tokenizer.model"
    if not model_file.is_file():
        raise ConfigError(f"model.tokenizer.dir={cfg.model.tokenizer.dir} has no tokenizer.model")
    if sha256_file(model_file) != stored_sha:
        raise IncompatibleStoreError(
            f"tokenizer {model_file} differs from the teacher's tokenizer in the store; leave "
            "model.tokenizer.dir unset to use the store's own tokenizer"
        )


def build_student(model_cfg, trainer=None):
    """Instantiate the student class that fits the config; it records the plain NeMo class as target."""
    from omegaconf import open_dict

    from kdstore.distill.student import PLAIN_TARGETS, KDHybridModel, KDRNNTModel

    hybrid = "aux_ctc" in model_cfg and model_cfg.aux_ctc is not None
    with open_dict(model_cfg):
        model_cfg.target = PLAIN_TARGETS["hybrid" if hybrid else "rnnt"]
    cls = KDHybridModel if hybrid else KDRNNTModel
    return cls(cfg=model_cfg, trainer=trainer)


class CurveRecorder(pl.Callback):
    """Writes one CSV row of losses per training step (the demo plots these curves)."""

    def __init__(self, path: Path, print_every: int = 0) -> None:
        self.path, self.rows, self.start, self.print_every = path, [], time.time(), print_every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_rank != 0:
            return  # one curve per run: rank 0's
        logs = getattr(pl_module, "last_step_logs", {})
        row = {"step": trainer.global_step, "seconds": round(time.time() - self.start, 3), **logs}
        self.rows.append(row)
        if self.print_every and trainer.global_step % self.print_every == 0:
            losses = " ".join(f"{k.removeprefix('train_')}={v:.4g}" for k, v in logs.items() if k != "learning_rate")
            print(f"step {trainer.global_step}/{trainer.max_steps} {row['seconds']:.0f}s {losses}", flush=True)
        if trainer.global_step % 25 == 0:
            self.write()

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_rank == 0:
            self.write()

    def write(self) -> None:
        """Rewrite the CSV (cheap: a few thousand rows), so a killed run still leaves its curve."""
        keys = sorted({k for row in self.rows for k in row}, key=lambda k: (k not in ("step", "seconds"), k))
        with self.path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)


def start_exp_manager(trainer, cfg, output: Path) -> Path | None:
    """NeMo's exp_manager: loggers, checkpoints (best by val WER), early stopping, resume.

    Checkpoint selection and early stopping watch ``val_wer``, so without a validation manifest they
    are switched off (the final model is still saved to ``run.output``).
    """
    from nemo.utils.exp_manager import exp_manager
    from omegaconf import OmegaConf

    if cfg.get("exp_manager") is None:
        return None
    params = OmegaConf.to_container(cfg.exp_manager, resolve=True)
    params["exp_dir"] = params.get("exp_dir") or str(output.parent / "logs")
    if not cfg.model.validation_ds.get("manifest_filepath"):
        params["create_checkpoint_callback"] = False
        params["create_early_stopping_callback"] = False
    log_dir = exp_manager(trainer, OmegaConf.create(params))
    return Path(log_dir) if log_dir else None


def train_student(cfg, progress: bool = False) -> TrainResult:
    """Train per ``cfg`` (see configs/models/tiny.yaml) and save ``cfg.run.output`` as a plain .nemo."""
    import torch
    from omegaconf import OmegaConf, open_dict

    require(cfg, "run.output", "set run.output=PATH.nemo")
    require(cfg, "model.train_ds.manifest_filepath", "set model.train_ds.manifest_filepath=train.json")
    output = Path(cfg.run.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    workdir = output.with_suffix(".files")
    workdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(cfg.run.num_threads))
    pl.seed_everything(int(cfg.run.seed), verbose=False)

    if cfg.model.train_ds.get("skip_bad") and not cfg.model.train_ds.get("skipped_file"):
        cfg.model.train_ds.skipped_file = str(output.with_suffix(".skipped.jsonl"))
    settings = KDSettings.from_model_config(cfg.model)
    if settings.enabled and settings.store:
        reader = check_store_compatible(cfg, settings.store)
        _tokenizer_for_store(cfg, reader, workdir)
    require(cfg, "model.tokenizer.dir", "set model.tokenizer.dir=DIR (or give --store to use the teacher's)")

    curve_csv = Path(cfg.run.log_csv) if cfg.run.get("log_csv") else output.with_suffix(".log.csv")
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_kwargs.setdefault("enable_progress_bar", progress)
    trainer_kwargs["enable_progress_bar"] = progress
    trainer_kwargs.setdefault("enable_model_summary", False)
    recorder = CurveRecorder(curve_csv, print_every=0 if progress else int(cfg.trainer.log_every_n_steps))
    trainer_kwargs.update(logger=False, enable_checkpointing=False)  # exp_manager adds both
    trainer_kwargs.setdefault("use_distributed_sampler", False)  # our duration buckets shard by rank
    trainer = pl.Trainer(**trainer_kwargs, callbacks=[recorder])
    log_dir = start_exp_manager(trainer, cfg, output)

    model_cfg = cfg.model
    with open_dict(model_cfg):
        model_cfg.pop("kdstore_rnnt_loss", None)
    model = build_student(model_cfg, trainer=trainer)
    model.rnnt_loss_choice = str(cfg.run.rnnt_loss)
    params = int(sum(p.numel() for p in model.parameters()))

    start = time.time()
    trainer.fit(model)
    seconds = time.time() - start
    # With validation, NeMo's checkpoint callback restores the best-by-val-WER weights at the end of
    # fit (and the trainer's step counter with them): run.output then holds the best model.
    steps = max((int(row["step"]) for row in recorder.rows), default=int(trainer.global_step))

    model.eval()
    if trainer.global_rank == 0:
        model.save_to(str(output))
        OmegaConf.save(cfg, workdir / "train_config.yaml", resolve=True)
    if trainer.global_rank != 0:
        return TrainResult(output, steps, seconds, params, curve_csv, {}, log_dir, None)
    best = next(iter(sorted(Path(log_dir).rglob(f"{cfg.name}.nemo"))), None) if log_dir else None
    return TrainResult(output, steps, seconds, params, curve_csv,
                       dict(getattr(model, "last_step_logs", {})), log_dir, best, int(getattr(model, "skipped_lines", 0)))
