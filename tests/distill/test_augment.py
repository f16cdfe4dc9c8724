"""kdstore.distill.augment: NeMo's AudioAugmentor on kdstore's training audio."""

from __future__ import annotations

import random

import numpy as np
import pytest

from kdstore.distill.augment import length_changing, nemo_augment
from kdstore.errors import ConfigError
from kdstore.inputs.batches import TranscribedAudioDataset


def test_no_augmentor_is_none():
    assert nemo_augment(None, 16000) is None
    assert nemo_augment({}, 16000) is None


def test_shift_moves_samples_and_keeps_length():
    random.seed(0)  # NeMo's perturbations draw from Python's random module
    augment = nemo_augment({"shift": {"prob": 1.0, "min_shift_ms": 5.0, "max_shift_ms": 5.0}}, 16000)
    wave = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    out = augment(wave)
    assert out.shape == wave.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out[:-80], wave[80:])  # 5 ms at 16 kHz = 80 samples earlier
    assert not out[-80:].any()
    assert np.array_equal(wave, np.random.default_rng(0).standard_normal(16000).astype(np.float32))  # input untouched


def test_length_changing_names_and_bad_config():
    assert length_changing({"speed": {}, "gain": {}, "time_stretch": {}}) == ["speed", "time_stretch"]
    assert length_changing(None) == []
    with pytest.raises(ConfigError, match="augmentor"):
        nemo_augment({"no_such_perturbation": {"prob": 1.0}}, 16000)


def test_dataset_applies_augment(demo_corpus):
    from kdstore.inputs.manifest import read_manifest

    entries = read_manifest(demo_corpus.train_manifest)[:2]
    plain = TranscribedAudioDataset(entries, lambda text: [1, 2], 16000)
    louder = TranscribedAudioDataset(entries, lambda text: [1, 2], 16000, augment=lambda x: 2 * x)
    np.testing.assert_allclose(louder[0]["audio"].numpy(), 2 * plain[0]["audio"].numpy())
