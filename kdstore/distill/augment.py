"""NeMo's waveform augmentations (``model.train_ds.augmentor``) applied in kdstore's training loader.

Why this exists: kdstore trains from its own dataset (store rows must line up with the audio), so
NeMo's ``AudioToBPEDataset`` never sees ``train_ds.augmentor`` and the setting would be silently
ignored. This module builds NeMo's own ``AudioAugmentor`` from the same config
(``process_augmentations``: gain, white_noise, shift, noise, impulse, ...) and applies it to each
training utterance. With a store, perturbations that change the number of samples (speed,
time_stretch, silence, random_segment) are refused before training starts: they change the encoder's
T, and the teacher's lattice rows no longer fit (``kdstore.distill.train`` checks the config).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from kdstore.errors import ConfigError

Augment = Callable[[np.ndarray], np.ndarray]
LENGTH_CHANGING = ("speed", "time_stretch", "silence", "random_segment")


def length_changing(augmentor_cfg: Mapping[str, Any] | None) -> list[str]:
    """The perturbations in an augmentor config that change the number of samples (so T)."""
    return [name for name in (augmentor_cfg or {}) if name in LENGTH_CHANGING]


def nemo_augment(augmentor_cfg: Mapping[str, Any] | None, sample_rate: int) -> Augment | None:
    """A function samples -> augmented samples running NeMo's ``AudioAugmentor``, or None if none is set."""
    if not augmentor_cfg:
        return None
    from nemo.collections.asr.parts.preprocessing.perturb import process_augmentations
    from omegaconf import DictConfig, OmegaConf

    cfg = OmegaConf.to_container(augmentor_cfg, resolve=True) if isinstance(augmentor_cfg, DictConfig) \
        else dict(augmentor_cfg)
    try:
        augmentor = process_augmentations(cfg)
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"model.train_ds.augmentor: NeMo cannot build it ({err})") from None
    if augmentor is None:
        return None

    def augment(samples: np.ndarray) -> np.ndarray:
        from nemo.collections.asr.parts.preprocessing.segment import AudioSegment

        segment = AudioSegment(samples.astype(np.float32, copy=True), sample_rate)
        augmentor.perturb(segment)
        return np.ascontiguousarray(segment.samples, dtype=np.float32)

    return augment
