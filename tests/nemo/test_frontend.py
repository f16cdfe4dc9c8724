"""kdstore.nemo.frontend: one reader of a NeMo model's front end, one set of features per model.

* T: the encoder frame count kdstore predicts (:mod:`kdstore.frames`, from
  :func:`front_end_from_config`; screening, the student's store check and the numpy front end use
  it) is the T NeMo's preprocessor + encoder give, with ``exact_pad`` too.
* fp16 (issue 11, acceptance 3): a .nemo saved after ``model.half()`` (as the committed demo teacher
  was) restores with fp16-rounded window and filterbank; ``eval``, ``dump-teacher`` and
  ``export-onnx`` must all compute the features of the exact buffers, the ones it was trained with.

The models are tiny, randomly initialised FastConformer transducers (features and T do not depend on
the weights) with a 24-piece tokenizer trained here: no TTS engine, no training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kdstore.frames import encoder_frames, mel_frames
from kdstore.nemo.frontend import FRONTEND_TOLERANCE, front_end_from_config, frontend_config_from_nemo
from kdstore.runtime.frontend import LogMelFrontEnd
from kdstore.store.meta_v1 import parse_front_end

SAMPLE_RATE = 16000
TEXTS = ["turn on the light", "turn off the radio", "open the door", "close the window please"]
# around every boundary that matters: one hop, 9 mel frames (1440..1599, where exact_pad changes T
# after 8x subsampling), one second; plus odd lengths
LENGTHS = [1, 159, 160, 161, 319, 320, 1439, 1440, 1500, 1599, 1600, 2399, 2400, 16000, 16159, 16160, 23457]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    from kdstore.corpus.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(TEXTS * 5, out, 24)
    return out


def tiny_transducer(tokenizer_dir: Path, exact_pad: bool = False):
    """A ~30k-parameter EncDecRNNTBPEModel in eval mode: FastConformer, 8x dw_striding, 80 mels."""
    from nemo.collections.asr.models import EncDecRNNTBPEModel
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({
        "sample_rate": SAMPLE_RATE,
        "tokenizer": {"dir": str(tokenizer_dir), "type": "bpe"},
        "preprocessor": {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
                         "sample_rate": SAMPLE_RATE, "features": 80, "window_size": 0.025, "window_stride": 0.01,
                         "n_fft": 512, "dither": 1e-5, "pad_to": 0, "exact_pad": exact_pad},
        "encoder": {"_target_": "nemo.collections.asr.modules.ConformerEncoder", "feat_in": 80, "n_layers": 1,
                    "d_model": 16, "n_heads": 2, "subsampling": "dw_striding", "subsampling_factor": 8,
                    "subsampling_conv_channels": 8, "ff_expansion_factor": 2, "conv_kernel_size": 3},
        "model_defaults": {"enc_hidden": 16, "pred_hidden": 16, "joint_hidden": 16},
        "decoder": {"_target_": "nemo.collections.asr.modules.RNNTDecoder", "blank_as_pad": True,
                    "prednet": {"pred_hidden": 16, "pred_rnn_layers": 1}},
        "joint": {"_target_": "nemo.collections.asr.modules.RNNTJoint",
                  "jointnet": {"joint_hidden": 16, "activation": "relu"}},
        "decoding": {"strategy": "greedy_batch", "greedy": {"max_symbols": 10}},
    })
    torch.manual_seed(0)
    return EncDecRNNTBPEModel(cfg=cfg).eval()


@pytest.mark.parametrize("exact_pad", [False, True], ids=["center", "exact_pad"])
def test_predicted_frames_are_nemos(tokenizer_dir, exact_pad):
    model = tiny_transducer(tokenizer_dir, exact_pad)
    front_end = front_end_from_config(model.cfg)
    assert (front_end.n_fft, front_end.exact_pad, front_end.subsampling_factor) == (512, exact_pad, 8)
    stored = parse_front_end(json.loads(json.dumps(dataclasses.asdict(front_end))))  # as a store keeps it
    audio = torch.zeros(len(LENGTHS), max(LENGTHS))
    for i, n in enumerate(LENGTHS):
        audio[i, :n] = 0.1 * torch.randn(n)
    lengths = torch.tensor(LENGTHS)
    with torch.no_grad():
        _, mel_len = model.preprocessor(input_signal=audio, length=lengths)
        _, encoded_len = model.forward(input_signal=audio, input_signal_length=lengths)
    numpy_front = LogMelFrontEnd(frontend_config_from_nemo(model.preprocessor))

    nemo_mel = [max(0, n) for n in mel_len.tolist()]  # NeMo says -1 for less than a hop under exact_pad
    assert [numpy_front.num_frames(n) for n in LENGTHS] == nemo_mel
    assert [encoder_frames(n, front_end) for n in LENGTHS] == encoded_len.tolist()
    assert [encoder_frames(n, stored) for n in LENGTHS] == encoded_len.tolist()
    if exact_pad:  # the old formula (samples // hop) was wrong here
        assert [mel_frames(n, 160) for n in LENGTHS] != nemo_mel


def test_student_config_and_teacher_model_read_the_same_front_end(tokenizer_dir):
    """train-student compares its config (no model yet) with the store the teacher's model wrote."""
    from omegaconf import OmegaConf

    model = tiny_transducer(tokenizer_dir, exact_pad=True)
    cfg = OmegaConf.create(OmegaConf.to_container(model.cfg, resolve=True))
    cfg.preprocessor.pop("n_fft")  # left to NeMo's default (the next power of 2 of the window: 512)
    assert front_end_from_config(cfg) == front_end_from_config(model.cfg)


# ---------------------------------------------------------------------------------------------
# fp16-saved models
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fp16_nemo(tokenizer_dir, tmp_path_factory) -> Path:
    """A tiny transducer saved like the demo teacher: ``model.half()`` then ``save_to``."""
    path = tmp_path_factory.mktemp("fp16") / "half.nemo"
    tiny_transducer(tokenizer_dir).half().save_to(str(path))
    return path


def _test_audio() -> dict[str, np.ndarray]:
    """Two signals whose features fp16-rounded buffers move a lot (quiet mel bins, per-feature norm)."""
    rng = np.random.default_rng(0)
    t = np.arange(int(1.3 * SAMPLE_RATE)) / SAMPLE_RATE
    chirp = 0.3 * np.sin(2 * np.pi * (200 + 900 * t) * t) * np.hanning(len(t)) + 0.02 * rng.standard_normal(len(t))
    t = np.arange(int(1.7 * SAMPLE_RATE)) / SAMPLE_RATE
    tones = 0.3 * np.sin(2 * np.pi * 300 * t) + 0.3 * np.sin(2 * np.pi * 700 * t) + 1e-4 * rng.standard_normal(len(t))
    return {"chirp": chirp.astype(np.float32), "tones": tones.astype(np.float32)}


def _nemo_features(model, audio: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        features, length = model.preprocessor(input_signal=torch.from_numpy(audio)[None],
                                              length=torch.tensor([len(audio)]))
    return features[0, :, : int(length[0])].numpy()


def test_restore_model_gives_fp16_saved_models_their_exact_features(fp16_nemo):
    from nemo.collections.asr.models import ASRModel

    from kdstore.nemo.checkpoint import restore_model

    exact = restore_model(fp16_nemo)
    raw = ASRModel.restore_from(str(fp16_nemo), map_location="cpu").eval()
    ours = LogMelFrontEnd(frontend_config_from_nemo(exact.preprocessor))
    for name, audio in _test_audio().items():
        reference = ours(audio)[0][:, : ours.num_frames(len(audio))]
        assert np.abs(_nemo_features(exact, audio) - reference).max() < FRONTEND_TOLERANCE, name
        # what eval and dump-teacher computed before they restored through restore_model:
        assert np.abs(_nemo_features(raw, audio) - reference).max() > 20 * FRONTEND_TOLERANCE, name


@contextlib.contextmanager
def preprocessor_outputs():
    """Collect the valid features of every AudioToMelSpectrogramPreprocessor call, by frame count."""
    seen: dict[int, list[np.ndarray]] = {}

    def hook(module, inputs, output):
        if type(module).__name__ == "AudioToMelSpectrogramPreprocessor":
            features, lengths = output
            for b, length in enumerate(lengths.tolist()):
                seen.setdefault(length, []).append(features[b, :, :length].detach().float().cpu().numpy())

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


@pytest.mark.slow
def test_eval_dump_and_export_compute_the_same_features_for_an_fp16_model(fp16_nemo, tmp_path):
    import soundfile

    from kdstore.dump.run import DumpSettings, dump_teacher
    from kdstore.evaluate.transcribe import evaluate_model
    from kdstore.export.run import export_onnx
    from kdstore.runtime.decoder import OnnxTransducer

    signals = _test_audio()
    lines = []
    for (name, audio), text in zip(signals.items(), TEXTS):
        path = tmp_path / f"{name}.wav"
        soundfile.write(path, audio, SAMPLE_RATE, subtype="FLOAT")
        lines.append(json.dumps({"audio_filepath": str(path), "duration": len(audio) / SAMPLE_RATE, "text": text}))
    manifest = tmp_path / "manifest.json"
    manifest.write_text("\n".join(lines) + "\n")

    export_onnx(fp16_nemo, tmp_path / "onnx")
    exported = LogMelFrontEnd(OnnxTransducer(tmp_path / "onnx", frontend="numpy").frontend_config)
    with preprocessor_outputs() as in_eval:
        evaluate_model(fp16_nemo, manifest, batch_size=1)
    with preprocessor_outputs() as in_dump:
        dump_teacher(fp16_nemo, manifest, tmp_path / "store.zarr", DumpSettings(top_k=4, batch_size=1, band=None))

    for name, audio in signals.items():
        features, length = exported(audio)
        reference = features[:, :length]
        for stage, seen in (("eval", in_eval), ("dump-teacher", in_dump)):
            assert length in seen, f"{stage} did not run the preprocessor on {name}"
            for got in seen[length]:
                diff = float(np.abs(got - reference).max())
                assert diff < FRONTEND_TOLERANCE, f"{stage} features of {name} differ from the export's by {diff:.3g}"
