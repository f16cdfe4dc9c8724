"""Typed view of the KD settings in a model config (``model.enable_kd``, ``model.kd.*``...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args

from kdstore.errors import ConfigError
from kdstore.losses import KDLossName

NODE_WEIGHTS = ("uniform", "occupancy")


@dataclass(frozen=True, kw_only=True)
class KDSettings:
    enabled: bool
    alpha: float
    temperature: float
    store: str | None
    loss: KDLossName
    node_weights: str
    teacher_model_path: str | None  # online KD (teacher in the loop)

    @property
    def active(self) -> bool:
        return self.enabled and (self.store is not None or self.teacher_model_path is not None)

    @classmethod
    def from_model_config(cls, cfg: Any) -> KDSettings:
        kd = cfg.get("kd") or {}
        settings = cls(
            enabled=bool(cfg.get("enable_kd", False)),
            alpha=float(cfg.get("kd_alpha", 0.5)),
            temperature=float(cfg.get("kd_temperature", 1.0)),
            store=kd.get("store") or None,
            loss=kd.get("loss", "topk_rest"),
            node_weights=kd.get("node_weights", "uniform"),
            teacher_model_path=cfg.get("teacher_model_path") or None,
        )
        if settings.loss not in get_args(KDLossName):
            raise ConfigError(f"model.kd.loss: expected one of {get_args(KDLossName)}, got {settings.loss!r}")
        if settings.node_weights not in NODE_WEIGHTS:
            raise ConfigError(f"model.kd.node_weights: expected one of {NODE_WEIGHTS}, got {settings.node_weights!r}")
        if not 0.0 <= settings.alpha <= 1.0:
            raise ConfigError(f"model.kd_alpha: expected a value in [0, 1], got {settings.alpha}")
        if settings.temperature <= 0:
            raise ConfigError(f"model.kd_temperature: expected a positive value, got {settings.temperature}")
        if settings.node_weights == "occupancy":
            raise ConfigError("model.kd.node_weights=occupancy needs a store with node/occupancy (not yet written "
                              "by this kdstore version); use uniform")
        return settings
