"""The alignment rule: a student may learn from a store when it counts the same frames T (and tokens U).

Sample rate, hop, padding rules and subsampling decide T and must match; mel features and
normalisation need not (a Parakeet-style 128-mel teacher distils into an 80-mel student). The first
tests are pure (the frame-count comparison); the last ones dump a real tiny 128-mel NeMo teacher into
a real store and train real students from it.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from kdstore.errors import IncompatibleStoreError, StoreError
from kdstore.store.meta_v1 import FrontEnd
from tests.models import build_model

PARAKEET = FrontEnd(sample_rate=16000, window_size=0.025, window_stride=0.01, features=128, normalize="per_feature",
                    subsampling_factor=8, n_fft=512, exact_pad=False)


# -- the rule itself (fast: no model) ----------------------------------------------------------------
@pytest.mark.parametrize("change", [
    {"features": 80}, {"normalize": "NA"}, {"normalize": "all_features"}, {"features": 64, "normalize": "NA"},
    {"window_size": 0.02}, {"n_fft": 400},  # n_fft decides T only with exact_pad
])
def test_settings_that_leave_t_alone_are_accepted(change):
    from kdstore.distill.checks import store_front_end_problem

    assert store_front_end_problem("t.zarr", PARAKEET, dataclasses.replace(PARAKEET, **change)) is None


@pytest.mark.parametrize(("change", "message"), [
    ({"window_stride": 0.02}, ("window_stride=0.01 but the student has 0.02: the frame count T differs "
                              r"\(160 samples: T=1 in the store, 0 for the student\); set model.preprocessor.window_stride=0.01")),
    ({"subsampling_factor": 4}, ("subsampling_factor=8 but the student has 4: the frame count T differs "
                                r"\(800 samples: T=1 in the store, 2 for the student\); set model.encoder.subsampling_factor=8")),
    ({"exact_pad": True}, "exact_pad=False but the student has True: .*set model.preprocessor.exact_pad=False"),
    ({"sample_rate": 8000}, r"sample_rate=16000 but the student has 8000: .*set model.sample_rate \(model.preprocessor"),
    ({"subsampling_factor": 6}, "subsampling_factor=8 but the student has 6: .*set model.encoder.subsampling_factor=8"),
    # a hop that differs by a rounding of window_stride (161 vs 160 samples), with 128 vs 80 mels beside it
    ({"window_stride": 0.0100625, "features": 80}, "window_stride=0.01 but the student has 0.0100625"),
])
def test_settings_that_change_t_are_refused_naming_the_setting(change, message):
    from kdstore.distill.checks import store_front_end_problem

    problem = store_front_end_problem("t.zarr", PARAKEET, dataclasses.replace(PARAKEET, **change))
    assert problem is not None and "\n" not in problem
    assert problem.startswith("store t.zarr was dumped with ")
    assert re.search(message, problem), problem


def test_exact_pad_makes_n_fft_count():
    from kdstore.frames import encoder_frames, frame_count_difference

    a = dataclasses.replace(PARAKEET, exact_pad=True)
    b = dataclasses.replace(a, n_fft=400)
    # exact_pad pads (n_fft - hop) // 2: 176 vs 120 samples each side, the same mel count for even n_fft
    assert frame_count_difference(a, b) is None
    odd = dataclasses.replace(a, n_fft=513)
    diff = frame_count_difference(a, odd)
    assert diff is not None and diff.setting == "n_fft"
    assert encoder_frames(diff.samples, a) != encoder_frames(diff.samples, odd)
    # an older store (n_fft not recorded) still compares where T is computable
    assert frame_count_difference(dataclasses.replace(PARAKEET, n_fft=None), PARAKEET) is None


# -- real teacher, real store, real training ----------------------------------------------------------
@pytest.fixture(scope="module")
def six_manifest(demo_corpus, tmp_path_factory) -> Path:
    lines = Path(demo_corpus.train_manifest).read_text().splitlines()[:6]
    path = tmp_path_factory.mktemp("manifest") / "six.json"
    path.write_text("\n".join(lines) + "\n")
    return path


def _teacher(demo_corpus, out: Path, features: int, normalize: str = "per_feature") -> Path:
    """A tiny random hybrid teacher with ``features`` mel bins (Parakeet: 128), saved as .nemo."""
    torch.set_num_threads(1)
    build_model("tiny-teacher", demo_corpus.tokenizer_dir, seed=1,
                **{"model.encoder.n_layers": 1, "model.model_defaults.enc_hidden": 64,
                   "model.encoder.subsampling_conv_channels": 64, "model.preprocessor.features": features,
                   "model.preprocessor.normalize": normalize}).save_to(str(out))
    return out


@pytest.fixture(scope="module")
def mel128_store(demo_corpus, six_manifest, tmp_path_factory) -> Path:
    """A band store dumped by a 128-mel, per_feature teacher."""
    from kdstore.dump.run import DumpSettings, dump_teacher

    folder = tmp_path_factory.mktemp("mel128")
    teacher = _teacher(demo_corpus, folder / "teacher128.nemo", 128)
    out = folder / "mel128.zarr"
    meta = dump_teacher(teacher, six_manifest, out, DumpSettings(top_k=4, batch_size=3, band=6))
    assert (meta.front_end.features, meta.front_end.normalize) == (128, "per_feature")
    return out


def _train(store: Path, manifest: Path, out: Path, *overrides: str):
    from kdstore.distill.config import load_train_config
    from kdstore.distill.train import train_student

    cfg = load_train_config("tiny", [f"model.train_ds.manifest_filepath={manifest}", f"run.output={out}",
                                     "trainer.max_steps=2", "model.train_ds.batch_size=3", "trainer.accelerator=cpu",
                                     "model.encoder.n_layers=1", *overrides], store=str(store))
    return train_student(cfg)


@pytest.mark.parametrize("normalize", ["per_feature", "NA"])
def test_a_128_mel_store_trains_an_80_mel_student(mel128_store, six_manifest, tmp_path, normalize):
    from nemo.collections.asr.models import ASRModel

    result = _train(mel128_store, six_manifest, tmp_path / "s.nemo", f"model.preprocessor.normalize={normalize}")
    assert result.steps == 2
    kd = result.final_losses["train_kd_loss"]
    assert np.isfinite(kd) and kd > 0, result.final_losses
    student = ASRModel.restore_from(str(result.model_path), map_location="cpu")
    assert (student.cfg.preprocessor.features, student.cfg.preprocessor.normalize) == (80, normalize)
    assert student.encoder.pre_encode.out.in_features == 112 * 10  # tiny's 112 channels x 80 mels / 8


def test_an_80_mel_student_initialised_from_a_128_mel_teacher(mel128_store, six_manifest, tmp_path):
    """init_from_teacher copies what fits: the encoder layers; not the 128-mel filterbank or projection."""
    import json

    teacher = mel128_store.parent / "teacher128.nemo"
    result = _train(mel128_store, six_manifest, tmp_path / "s.nemo", "model.model_defaults.enc_hidden=64",
                    "model.encoder.subsampling_conv_channels=64", "model.model_defaults.pred_hidden=320",
                    "model.model_defaults.joint_hidden=320", f"model.init_from_teacher.path={teacher}")
    assert result.steps == 2 and np.isfinite(result.final_losses["train_kd_loss"])
    rows = json.loads((result.init_report.parent / "init_from_teacher.json").read_text())["rows"]
    kept = {(row["student"], row["values"]) for row in rows if not row["copied"]}
    # what depends on the mel count stays as initialised: the 80-mel filterbank (80 x 257) and the
    # pre-encoder's projection (64 channels x 80/8 mels -> 64); everything else is the teacher's
    assert kept == {("preprocessor.featurizer", 80 * 257), ("encoder.pre_encode", 64 * 10 * 64)}, rows
    assert {row["student"] for row in rows if row["copied"]} >= {"encoder.layers.0", "decoder.prediction",
                                                                 "encoder.pre_encode", "joint.joint_net"}


@pytest.mark.parametrize(("override", "setting", "fix"), [
    ("model.preprocessor.window_stride=0.02", "window_stride=0.01 but the student has 0.02",
     "set model.preprocessor.window_stride=0.01"),
    ("model.encoder.subsampling_factor=4", "subsampling_factor=8 but the student has 4",
     "set model.encoder.subsampling_factor=8"),
    ("+model.preprocessor.exact_pad=true", "exact_pad=False but the student has True",
     "set model.preprocessor.exact_pad=False"),
])
def test_a_student_that_counts_other_frames_is_refused(mel128_store, six_manifest, tmp_path, override, setting, fix):
    with pytest.raises(IncompatibleStoreError) as caught:
        _train(mel128_store, six_manifest, tmp_path / "s.nemo", override)
    message = str(caught.value)
    assert setting in message and fix in message and "the frame count T differs" in message
    assert "\n" not in message and str(mel128_store) in message
    assert not (tmp_path / "s.nemo").exists()


def test_stores_from_128_and_80_mel_teachers_train_together(demo_corpus, mel128_store, six_manifest, tmp_path):
    """Several stores must agree on T, not on n_mels; a store whose hop differs is still refused."""
    from kdstore.dump.run import DumpSettings, dump_teacher
    from kdstore.store import StoreSet

    lines = Path(demo_corpus.train_manifest).read_text().splitlines()[6:9]
    more = tmp_path / "more.json"
    more.write_text("\n".join(lines) + "\n")
    store80 = tmp_path / "mel80.zarr"
    dump_teacher(_teacher(demo_corpus, tmp_path / "t80.nemo", 80, "NA"), more, store80,
                 DumpSettings(top_k=4, batch_size=3, band=6))
    both = StoreSet([mel128_store, store80])
    assert len(both) == 9
    manifests = f"{six_manifest},{more}"
    result = _train(Path(f"{mel128_store},{store80}"), Path(manifests), tmp_path / "s.nemo")
    assert result.steps == 2 and np.isfinite(result.final_losses["train_kd_loss"])

    from kdstore.store import StoreReader
    from kdstore.store.store_set import _check_same_student_view  # the rule between stores

    a, b = StoreReader(mel128_store), StoreReader(store80)
    hop = dataclasses.replace(b.metadata, front_end=dataclasses.replace(b.metadata.front_end, window_stride=0.02))
    with pytest.raises(StoreError, match=r"different front ends \(window_stride: 0.01 vs 0.02\)"):
        _check_same_student_view(a, _WithMetadata(b, hop))


class _WithMetadata:
    """A reader seen with other metadata (the front end of a store dumped at another hop)."""

    def __init__(self, reader, metadata):
        self.path, self.metadata = reader.path, metadata
