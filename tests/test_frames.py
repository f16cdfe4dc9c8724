"""kdstore.frames: the one frame-count formula (NeMo's get_seq_len, then the striding stack).

Agreement with NeMo itself (``exact_pad`` included) is in tests/test_nemo_frontend.py.
"""

from __future__ import annotations

import pytest

from kdstore.frames import encoder_frames, mel_frames, subsampled_frames
from kdstore.runtime.frontend import FrontEndConfig, LogMelFrontEnd
from kdstore.store.meta_v1 import FrontEnd, parse_front_end


def test_mel_frames_default_and_exact_pad():
    assert [mel_frames(n, 160, 512) for n in (0, 159, 160, 16000)] == [0, 0, 1, 100]
    assert [mel_frames(n, 160, 512, exact_pad=True) for n in (0, 159, 160, 16000)] == [0, 0, 0, 99]
    assert mel_frames(16000, 160) == 100  # n_fft not recorded (older stores): n // hop
    with pytest.raises(ValueError, match="n_fft"):
        mel_frames(16000, 160, exact_pad=True)


def test_subsampled_frames_is_the_striding_stack():
    # kernel 3, stride 2, padding 1 per stage: L -> (L - 1) // 2 + 1
    assert [subsampled_frames(m, 8) for m in (0, 1, 8, 9, 100)] == [0, 1, 1, 2, 13]
    assert subsampled_frames(100, 1) == 100
    assert subsampled_frames(100, 6) is None  # not a power of 2: kdstore does not predict T


def test_the_numpy_front_end_counts_with_the_same_formula():
    for exact_pad in (False, True):
        front = LogMelFrontEnd(FrontEndConfig(exact_pad=exact_pad))
        for n in (1, 159, 160, 161, 1599, 16000, 23457):
            assert front.num_frames(n) == mel_frames(n, 160, 512, exact_pad)
            assert front(_silence(n))[1] == front.num_frames(n)


def test_store_front_end_keeps_exact_pad_and_old_stores_parse():
    old = {"sample_rate": 16000, "window_size": 0.025, "window_stride": 0.01, "features": 80,
           "normalize": "per_feature", "subsampling_factor": 8}
    parsed = parse_front_end(old)  # written before n_fft/exact_pad were recorded
    assert (parsed.n_fft, parsed.exact_pad) == (None, False)
    exact = FrontEnd(**old, n_fft=512, exact_pad=True)
    assert parse_front_end({**old, "n_fft": 512, "exact_pad": True}) == exact
    # 1440..1599 samples: 9 mel frames by default, 8 with exact_pad, so 2 vs 1 after 8x subsampling
    assert (encoder_frames(1500, parsed), encoder_frames(1500, exact)) == (2, 1)


def _silence(n: int):
    import numpy as np

    return np.zeros(n, dtype=np.float32)
