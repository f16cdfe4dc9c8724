"""Typed view of the KD settings in a model config (``model.enable_kd``, ``model.kd.*``...).

The original project's keys keep their meaning: ``model.enable_kd``, ``model.kd_alpha`` (0.5),
``model.kd_temperature`` (1.0) and ``model.teacher_model_path`` (online KD, teacher in the loop).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args

from kdstore.errors import ConfigError
from kdstore.distill.losses import KDLossName

NODE_WEIGHTS = ("uniform", "occupancy")


@dataclass(frozen=True, kw_only=True)
class KDSettings:
    enabled: bool
    alpha: float
    temperature: float
    store: str | None
    loss: KDLossName
    weights: str = "uniform"
    top_k: int | None = None  # use only the first top_k stored entries (rows are sorted)
    ctc: bool = True  # KD on a hybrid student's CTC head when the store has CTC rows
    teacher_model_path: str | None = None  # online KD (teacher in the loop)

    @property
    def active(self) -> bool:
        return self.enabled and (self.store is not None or self.teacher_model_path is not None)

    @classmethod
    def from_model_config(cls, cfg: Any) -> KDSettings:
        kd = cfg.get("kd") or {}
        top_k = kd.get("top_k")
        settings = cls(
            enabled=bool(cfg.get("enable_kd", False)),
            alpha=float(cfg.get("kd_alpha", 0.5)),
            temperature=float(cfg.get("kd_temperature", 1.0)),
            store=kd.get("store") or None,
            loss=kd.get("loss", "topk_rest"),
            weights=kd.get("weights", "uniform"),
            top_k=int(top_k) if top_k else None,
            ctc=bool(kd.get("ctc", True)),
            teacher_model_path=cfg.get("teacher_model_path") or None,
        )
        if settings.loss not in get_args(KDLossName):
            raise ConfigError(f"model.kd.loss: expected one of {get_args(KDLossName)}, got {settings.loss!r}")
        if settings.weights not in NODE_WEIGHTS:
            raise ConfigError(f"model.kd.weights: expected one of {NODE_WEIGHTS}, got {settings.weights!r}")
        if not 0.0 <= settings.alpha <= 1.0:
            raise ConfigError(f"model.kd_alpha: expected a value in [0, 1], got {settings.alpha}")
        if settings.temperature <= 0:
            raise ConfigError(f"model.kd_temperature: expected a positive value, got {settings.temperature}")
        if settings.top_k is not None and settings.top_k < 1:
            raise ConfigError(f"model.kd.top_k: expected a positive integer or null, got {settings.top_k}")
        return settings
