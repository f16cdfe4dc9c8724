"""Tiny NeMo models built on the spot from kdstore's named configs (shared by several test folders)."""

from __future__ import annotations

from pathlib import Path

import torch


def build_model(config_name: str, tokenizer_dir: Path, seed: int, **overrides):
    """A student built from config ``config_name`` with ``key=value`` overrides, seeded, in eval mode."""
    from omegaconf import OmegaConf

    from kdstore.distill.config import load_train_config
    from kdstore.distill.train import build_student

    cfg = load_train_config(config_name, [f"{k}={v}" for k, v in overrides.items()])
    model_cfg = cfg.model
    model_cfg.tokenizer.dir = str(tokenizer_dir)
    model_cfg.train_ds.manifest_filepath = None
    torch.manual_seed(seed)
    model = build_student(OmegaConf.create(OmegaConf.to_container(model_cfg, resolve=True)))
    return model.eval()
