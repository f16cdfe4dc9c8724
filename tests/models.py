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


TDT_DURATIONS = (0, 1, 2, 3, 4)  # Parakeet-TDT's set (NeMo's fastconformer_tdt_bpe.yaml)


def build_tdt_model(tokenizer_dir: Path, seed: int, *, hybrid: bool = False, config_name: str = "tiny",
                    durations: tuple[int, ...] = TDT_DURATIONS, sigma: float = 0.02, omega: float = 0.1):
    """A tiny NeMo TDT teacher with random weights, in eval mode: ``config_name``'s encoder, prediction net
    and joint, made a Token-and-Duration Transducer the way NeMo's TDT recipe does it (the joint's
    ``num_extra_outputs`` = D, ``loss_name: tdt`` with ``tdt_kwargs`` durations/sigma/omega, TDT decoding);
    the plain ``EncDecRNNTBPEModel``, or ``EncDecHybridRNNTCTCBPEModel`` (a TDT-CTC hybrid) with ``hybrid``.
    Built here, not from kdstore's TDT configs, so the dump tests do not depend on training configs."""
    from nemo.collections.asr.models import EncDecHybridRNNTCTCBPEModel, EncDecRNNTBPEModel
    from omegaconf import OmegaConf

    from kdstore.distill.config import load_train_config

    cfg = OmegaConf.to_container(load_train_config(config_name).model, resolve=True)
    for key in ("enable_kd", "kd_alpha", "kd_temperature", "teacher_model_path", "kd", "optim", "spec_augment",
                "train_ds", "init_from_teacher"):  # kdstore-only keys; no training data
        cfg.pop(key, None)
    if not hybrid:
        cfg.pop("aux_ctc", None)
    cfg["tokenizer"]["dir"] = str(tokenizer_dir)
    cfg["model_defaults"]["tdt_durations"] = list(durations)
    cfg["joint"]["num_extra_outputs"] = len(durations)
    cfg["decoding"].update(model_type="tdt", durations=list(durations))
    cfg["loss"] = {"loss_name": "tdt", "tdt_kwargs": {"fastemit_lambda": 0.0, "clamp": -1.0,
                                                      "durations": list(durations), "sigma": sigma, "omega": omega}}
    torch.manual_seed(seed)
    model = (EncDecHybridRNNTCTCBPEModel if hybrid else EncDecRNNTBPEModel)(cfg=OmegaConf.create(cfg))
    return model.eval()
