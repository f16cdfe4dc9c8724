"""What runs around Lightning's fit: the per-step loss curve and NeMo's experiment manager."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl


class CurveRecorder(pl.Callback):
    """Writes one CSV row of losses per training step (the demo plots these curves).

    With ``print_losses`` (runs without a progress bar) it also prints them every
    ``trainer.log_every_n_steps`` steps. A run resumed from a checkpoint (``exp_manager.resume_if_exists``)
    keeps the earlier run's rows up to the checkpoint's step and appends its own, its ``seconds`` going on
    from the last kept row; a fresh run starts the file anew.
    """

    def __init__(self, path: Path, print_losses: bool = False) -> None:
        self.path, self.rows, self.start, self.print_losses = path, [], time.time(), print_losses

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.time()
        if trainer.global_rank != 0 or trainer.global_step == 0 or not self.path.is_file():
            return
        with self.path.open(newline="") as handle:  # the run being resumed: its rows up to the checkpoint
            earlier = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]
        self.rows = [{**row, "step": int(row["step"])} for row in earlier if row.get("step", 0) <= trainer.global_step]
        if self.rows:
            self.start -= float(self.rows[-1].get("seconds", 0.0))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_rank != 0:
            return  # one curve per run: rank 0's
        logs = getattr(pl_module, "last_step_logs", {})
        row = {"step": trainer.global_step, "seconds": round(time.time() - self.start, 3), **logs}
        self.rows.append(row)
        if self.print_losses and trainer.global_step % max(trainer.log_every_n_steps, 1) == 0:
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


def start_exp_manager(trainer: pl.Trainer, params: dict[str, Any] | None, output: Path,
                      validation: bool) -> Path | None:
    """NeMo's exp_manager (the config's ``exp_manager`` section, None: off): loggers, checkpoints (best
    by val WER), early stopping, resume. Returns its log folder.

    ``exp_dir`` null means ``<output folder>/logs``. Checkpoint selection and early stopping watch
    ``val_wer``, so without validation they are switched off (the final model is still saved to
    ``run.output``).
    """
    from nemo.utils.exp_manager import exp_manager
    from omegaconf import OmegaConf

    if params is None:
        return None
    params = {**params, "exp_dir": params["exp_dir"] if params.get("exp_dir") else str(output.parent / "logs")}
    if not validation:
        params.update(create_checkpoint_callback=False, create_early_stopping_callback=False)
    log_dir = exp_manager(trainer, OmegaConf.create(params))
    return Path(log_dir) if log_dir else None
