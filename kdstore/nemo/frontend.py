"""The NeMo model's front end, read in one place: what decides T, what the export reproduces.

* :func:`front_end_from_config` reads the settings that decide the number of encoder frames T (the
  store's ``front_end``) from a model config: dump-teacher, train-student and its store check use it;
* :func:`sample_rate_of` is the rate a restored model's preprocessor expects (eval, transcribe);
* :func:`frontend_config_from_nemo` reads every setting of the featurizer (its attributes, then its
  config, then defaults) for the numpy front end of an export;
* :func:`restore_rounded_buffers` puts exact window and filterbank values back into a model saved in fp16;
* :func:`check_frontend` runs NeMo's preprocessor and the numpy front end on synthetic audio.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from kdstore.errors import ConfigError, ExportError
from kdstore.runtime.frontend import WINDOW_FUNCTIONS, FrontEndConfig, LogMelFrontEnd, mel_filterbank, resolve_log_guard
from kdstore.store.meta_v1 import FrontEnd

FRONTEND_TOLERANCE = 1e-3  # max |ours - NeMo| on normalised log-mel features, checked at export
MEL_PREPROCESSOR = "AudioToMelSpectrogramPreprocessor"


def front_end_from_config(model_cfg: Any) -> FrontEnd:
    """The settings that decide T for a NeMo transducer config (``model.cfg``, or a student's
    ``cfg.model`` before the model exists): the preprocessor is built from ``model_cfg.preprocessor``,
    so unset keys take NeMo's defaults exactly as the model does (window and hop in samples, ``n_fft``,
    ``exact_pad``); ``subsampling_factor`` is the encoder config's, else its class's default, else 1.
    Frame counts from it: :func:`kdstore.frames.encoder_frames`.

    Raises:
        ConfigError: the preprocessor is not NeMo's log-mel ``AudioToMelSpectrogramPreprocessor``.
    """
    from nemo.core.classes.common import Serialization

    preprocessor = Serialization.from_config_dict(model_cfg.preprocessor)
    if type(preprocessor).__name__ != MEL_PREPROCESSOR:
        raise ConfigError(f"model.preprocessor is {type(preprocessor).__name__}; kdstore needs NeMo's log-mel "
                          f"{MEL_PREPROCESSOR} (set model.preprocessor._target_)")
    fz = preprocessor.featurizer
    rate = int(fz.sample_rate)
    return FrontEnd(
        sample_rate=rate,
        window_size=int(fz.win_length) / rate,
        window_stride=int(fz.hop_length) / rate,
        features=int(fz.nfilt),
        normalize=str(fz.normalize),
        subsampling_factor=_subsampling_factor(model_cfg.encoder),
        n_fft=int(fz.n_fft),
        exact_pad=bool(fz.exact_pad),
        causal_downsampling=bool(model_cfg.encoder.get("causal_downsampling", False)),
    )


def sample_rate_of(model: Any) -> int:
    """Samples per second a restored NeMo ASR model's preprocessor expects (any preprocessor kind)."""
    return int(model.preprocessor._sample_rate)


def _constructor_defaults(cls: type) -> dict[str, Any]:
    """Keyword defaults of ``cls.__init__`` (what NeMo uses for keys a config leaves out)."""
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if k != "self" and p.default is not inspect.Parameter.empty}


def _subsampling_factor(encoder_cfg: Any) -> int:
    """The encoder's time subsampling: its config's, else its class's default; 1 for encoders without one."""
    if "subsampling_factor" in encoder_cfg:
        return int(encoder_cfg.subsampling_factor)
    from hydra.utils import get_class

    return int(_constructor_defaults(get_class(encoder_cfg._target_)).get("subsampling_factor") or 1)


def frontend_config_from_nemo(preprocessor: Any) -> FrontEndConfig:
    """The front-end settings NeMo actually uses: the featurizer's attributes and tensors first, then
    the module's config (``_cfg``, present on restored models), then the constructor's defaults."""
    fz = preprocessor.featurizer
    if getattr(fz, "frame_splicing", 1) != 1:
        raise ExportError(f"preprocessor.frame_splicing={fz.frame_splicing} is not supported (use 1)")
    if fz.pad_to == "max":
        raise ExportError("preprocessor.pad_to='max' is not supported; use an integer (0 or 16)")
    cfg = {**_constructor_defaults(type(preprocessor)), **dict(getattr(preprocessor, "_cfg", None) or {})}
    config = FrontEndConfig(
        sample_rate=int(fz.sample_rate),
        n_window_size=int(fz.win_length),
        n_window_stride=int(fz.hop_length),
        n_fft=int(fz.n_fft),
        features=int(fz.nfilt),
        window=_window_name(fz.window),
        preemph=None if fz.preemph is None else float(fz.preemph),
        lowfreq=float(cfg["lowfreq"] or 0.0),
        highfreq=None if cfg["highfreq"] is None else float(cfg["highfreq"]),
        mag_power=float(fz.mag_power),
        mel_norm=cfg["mel_norm"],
        log=bool(fz.log),
        log_zero_guard_type=str(fz.log_zero_guard_type),
        log_zero_guard_value=resolve_log_guard(fz.log_zero_guard_value),
        normalize=str(fz.normalize or ""),
        exact_pad=bool(fz.exact_pad),
        pad_to=int(fz.pad_to),
        pad_value=float(fz.pad_value),
    )
    ours = mel_filterbank(config.sample_rate, config.n_fft, config.features, config.lowfreq, config.highfreq,
                          config.mel_norm)
    theirs = fz.fb.detach().cpu().numpy().reshape(ours.shape)
    # rtol 1e-3: a model saved with fp16 weights (e.g. the demo teacher) holds fp16-rounded buffers.
    if not np.allclose(ours, theirs, rtol=1e-3, atol=1e-7):
        raise ExportError("cannot reproduce the preprocessor's mel filterbank (lowfreq, highfreq, mel_norm); "
                          "this preprocessor configuration is not supported")
    return config


def _window_name(window: Any) -> str:
    """Which of NeMo's (symmetric) windows the featurizer holds."""
    if window is None:
        return "none"
    values = window.detach().cpu().numpy().astype(np.float64)
    for name, fn in WINDOW_FUNCTIONS.items():
        # atol 1e-3 accepts fp16-rounded windows (|error| <= 2.5e-4); NeMo's windows differ by >= 0.08.
        if fn is not None and np.allclose(fn(len(values)), values, atol=1e-3):
            return name
    raise ExportError("the preprocessor's STFT window is none of hann, hamming, blackman, bartlett; not supported")


def restore_rounded_buffers(preprocessor: Any, frontend: FrontEndConfig) -> bool:
    """Put exact float32 values back into a featurizer whose window and filterbank were saved in fp16.

    A model saved after ``model.half()`` (the committed demo teacher, any fp16 checkpoint) restores with
    fp16-rounded preprocessor buffers. It was trained with the exact ones, and the rounding, amplified by
    per-feature normalisation of near-silent mel bins, moves features by up to ~0.3: the export (ONNX
    front end, ``preprocessor.ts``) must reproduce the training-time features, so the exact values win.
    Returns whether anything was replaced.
    """
    import torch

    fz = preprocessor.featurizer
    exact_fb = mel_filterbank(frontend.sample_rate, frontend.n_fft, frontend.features, frontend.lowfreq,
                              frontend.highfreq, frontend.mel_norm)
    replaced = False
    if fz.fb is not None and not np.array_equal(fz.fb.detach().cpu().numpy().reshape(exact_fb.shape),
                                                exact_fb.astype(np.float32)):
        fz.fb.data.copy_(torch.from_numpy(exact_fb.astype(np.float32)).reshape(fz.fb.shape))
        replaced = True
    window_fn = WINDOW_FUNCTIONS.get(frontend.window)
    if fz.window is not None and window_fn is not None:
        exact_window = window_fn(fz.window.numel()).astype(np.float32)
        if not np.allclose(fz.window.detach().cpu().numpy(), exact_window, rtol=0, atol=1e-6):
            fz.window.data.copy_(torch.from_numpy(exact_window))
            replaced = True
    return replaced


def check_frontend(preprocessor: Any, frontend: FrontEndConfig, seconds: float = 1.37) -> float:
    """Run NeMo's preprocessor and ours on the same synthetic audio; refuse a mismatch."""
    import torch

    rng = np.random.default_rng(0)
    n = int(seconds * frontend.sample_rate)
    t = np.arange(n) / frontend.sample_rate
    audio = 0.3 * np.sin(2 * np.pi * (200 + 900 * t) * t) * np.hanning(n) + 0.02 * rng.standard_normal(n)
    audio = audio.astype(np.float32)
    ours, length = LogMelFrontEnd(frontend)(audio)
    was_training = preprocessor.training
    preprocessor.eval()
    try:
        with torch.no_grad():
            ref, ref_len = preprocessor(input_signal=torch.from_numpy(audio)[None], length=torch.tensor([n]))
    finally:
        preprocessor.train(was_training)
    ref = ref[0].numpy()
    if ref.shape != ours.shape or int(ref_len[0]) != length:
        raise ExportError(
            f"kdstore's front end gives {ours.shape} features ({length} valid), NeMo's {ref.shape} "
            f"({int(ref_len[0])}): this preprocessor configuration is not supported"
        )
    diff = float(np.abs(ref - ours).max())
    if not diff < FRONTEND_TOLERANCE:
        raise ExportError(
            f"kdstore's front end differs from NeMo's preprocessor by {diff:.2e} (> {FRONTEND_TOLERANCE}): "
            "this preprocessor configuration is not supported"
        )
    return diff
