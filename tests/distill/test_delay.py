"""Delay-aware KD for streaming students: the teacher's rows moved d frames later onto the student's frames.

The first tests check :func:`kdstore.distill.delay.align_rows` against a hand-written lattice and the frame
rule of a causal subsampling stack against NeMo's own encoder; the last one dumps a real offline teacher
into a real store and trains a real cache-aware student from it with a delay.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from kdstore.distill.data import KDRows
from kdstore.distill.delay import align_rows


def _rows(frames: int, labels: int, k: int = 2) -> KDRows:
    """One utterance, T=frames, U=labels: node (t, u) holds logp [-(10t + u), -(10t + u) - 0.5] at ids [u, 9]."""
    t = torch.arange(frames)[:, None, None].float()
    u = torch.arange(labels + 1)[None, :, None].float()
    logp = torch.cat([-(10 * t + u), -(10 * t + u) - 0.5], dim=-1)[None]  # (1, T, U+1, 2)
    ids = torch.stack([torch.arange(labels + 1)[None, :].expand(frames, -1),
                       torch.full((frames, labels + 1), 9)], dim=-1)[None]
    return KDRows(logp=logp[..., :k], ids=ids[..., :k].long(), blank_label=logp.clone(),
                  frames=torch.tensor([frames]), labels=torch.tensor([labels]),
                  occupancy=torch.arange(frames * (labels + 1)).float().reshape(1, frames, labels + 1),
                  ctc_logp=-torch.arange(frames).float()[None, :, None].expand(1, frames, 2).clone(),
                  ctc_ids=torch.zeros(1, frames, 2, dtype=torch.long))


def test_a_delay_of_two_frames_by_hand():
    """Teacher T=3, U=1; student T=4 (a causal stack's extra frame), d=2: student frames 2 and 3 learn teacher
    frames 0 and 1; frames 0 and 1 learn nothing; teacher frame 2 falls off the student's end."""
    rows = _rows(frames=3, labels=1)
    out = align_rows(rows, torch.tensor([4]), frames_out=4, delay=2)
    assert out.logp.shape == (1, 4, 2, 2) and out.frames.tolist() == [4]
    expected_stored = [[False, False], [False, False], [True, True], [True, True]]
    assert out.stored[0].tolist() == expected_stored
    # node (t=2, u=1) holds the teacher's (0, 1): logp [-1, -1.5], ids [1, 9]; (3, 0) holds (1, 0): [-10, -10.5]
    assert out.logp[0, 2, 1].tolist() == [-1.0, -1.5] and out.ids[0, 2, 1].tolist() == [1, 9]
    assert out.logp[0, 3, 0].tolist() == [-10.0, -10.5]
    assert out.occupancy[0, 3].tolist() == [2.0, 3.0] and out.occupancy[0, :2].abs().sum() == 0
    assert out.blank_label[0, 2, 0].tolist() == [0.0, -0.5]
    assert out.ctc_logp[0, :, 0].tolist() == [0.0, 0.0, 0.0, -1.0]
    assert out.ctc_valid[0].tolist() == [False, False, True, True]
    assert out.labels.tolist() == [1]


def test_no_delay_and_equal_frames_keeps_the_rows_and_one_more_student_frame_is_padded():
    rows = _rows(frames=3, labels=2)
    assert align_rows(rows, torch.tensor([3]), frames_out=3, delay=0) is rows
    padded = align_rows(rows, torch.tensor([4]), frames_out=4, delay=0)
    assert padded.stored[0, :, 0].tolist() == [True, True, True, False]  # the causal stack's extra frame: no KD
    assert torch.equal(padded.logp[:, :3], rows.logp)
    cropped = align_rows(rows, torch.tensor([2]), frames_out=2, delay=0)  # causal teacher, symmetric student
    assert cropped.stored[0].all() and torch.equal(cropped.logp, rows.logp[:, :2])
    with pytest.raises(ValueError, match="delay_frames: expected 0 or more"):
        align_rows(rows, torch.tensor([3]), frames_out=3, delay=-1)


def test_a_band_store_keeps_its_band_after_the_shift_and_padding_between_utterances_is_masked():
    a, b = _rows(frames=4, labels=1), _rows(frames=2, labels=1)
    stored_a = torch.tensor([[True, False], [True, True], [False, True], [False, True]])
    batch = KDRows(logp=torch.cat([a.logp, torch.nn.functional.pad(b.logp, (0, 0, 0, 0, 0, 2))]),
                   ids=torch.cat([a.ids, torch.nn.functional.pad(b.ids, (0, 0, 0, 0, 0, 2))]),
                   blank_label=torch.cat([a.blank_label, torch.nn.functional.pad(b.blank_label, (0, 0, 0, 0, 0, 2))]),
                   frames=torch.tensor([4, 2]), labels=torch.tensor([1, 1]),
                   stored=torch.stack([stored_a, torch.tensor([[True, True]] * 2 + [[False, False]] * 2)]))
    out = align_rows(batch, torch.tensor([5, 3]), frames_out=5, delay=1)
    assert out.stored[0].tolist() == [[False, False], *stored_a.tolist()]
    assert out.stored[1].tolist() == [[False, False], [True, True], [True, True], [False, False], [False, False]]


def test_the_kd_term_is_zero_when_the_student_is_the_teacher_delayed():
    """Teacher rows = the student's own full rows d frames earlier: with delay d the KD term vanishes; without
    it, it does not."""
    from kdstore.distill.config import KDSettings
    from kdstore.distill.kd_term import kd_node_loss

    torch.manual_seed(0)
    d, frames, labels, classes = 2, 7, 3, 6
    student = torch.randn(1, frames, labels + 1, classes).log_softmax(-1)
    teacher_logp, teacher_ids = student[:, d:].sort(-1, descending=True)
    rows = KDRows(logp=teacher_logp, ids=teacher_ids, blank_label=teacher_logp[..., :2].clone(),
                  frames=torch.tensor([frames - d]), labels=torch.tensor([labels]))
    settings = KDSettings(enabled=True, alpha=0.5, temperature=1.0, store="s", loss="topk_rest")
    tokens = torch.tensor([[1, 2, 3]])
    delayed = kd_node_loss(student, align_rows(rows, torch.tensor([frames]), frames, delay=d), tokens, 5, settings)
    undelayed = kd_node_loss(student, align_rows(rows, torch.tensor([frames]), frames, delay=0), tokens, 5, settings)
    assert abs(float(delayed)) < 1e-5 and float(undelayed) > 0.05


# -- the causal subsampling stack ------------------------------------------------------------------
def test_a_causal_stack_has_the_symmetric_t_or_one_frame_more():
    from kdstore.frames import causal_extra_frames, subsampled_frames

    extra = {causal_extra_frames(mel, 8) for mel in range(360_001)}  # every mel count up to an hour
    assert extra == {0, 1}
    assert [subsampled_frames(m, 8, causal=True) for m in (100, 104, 105, 106, 800)] == [14, 14, 14, 15, 101]


def test_the_causal_frame_count_is_nemos():
    from nemo.collections.asr.modules import ConformerEncoder

    from kdstore.frames import subsampled_frames

    torch.manual_seed(0)
    encoder = ConformerEncoder(feat_in=16, n_layers=1, d_model=32, subsampling="dw_striding", subsampling_factor=8,
                               subsampling_conv_channels=16, causal_downsampling=True, att_context_size=[70, 6],
                               att_context_style="chunked_limited", conv_context_size="causal", n_heads=2).eval()
    mels = list(range(1, 70)) + [799, 800, 801]
    with torch.no_grad():
        got = [int(encoder(audio_signal=torch.randn(1, 16, m), length=torch.tensor([m]))[1]) for m in mels]
    assert got == [subsampled_frames(m, 8, causal=True) for m in mels]


def test_a_causal_student_may_learn_from_a_symmetric_teachers_store_but_not_another_hop():
    from kdstore.distill.checks import store_front_end_problem
    from kdstore.store.meta_v1 import FrontEnd

    teacher = FrontEnd(sample_rate=16000, window_size=0.025, window_stride=0.01, features=80,
                       normalize="per_feature", subsampling_factor=8, n_fft=512)
    student = dataclasses.replace(teacher, normalize="NA", causal_downsampling=True)
    assert store_front_end_problem("t.zarr", teacher, student) is None
    assert "window_stride" in store_front_end_problem("t.zarr", teacher,
                                                      dataclasses.replace(student, window_stride=0.02))


# -- real teacher, real store, real streaming student --------------------------------------------------
def test_a_streaming_student_trains_from_an_offline_teachers_store_with_a_delay(demo_corpus, tmp_path):
    import soundfile

    from kdstore.distill.config import load_train_config
    from kdstore.distill.train import train_student
    from kdstore.dump.run import DumpSettings, dump_teacher
    from kdstore.frames import causal_extra_frames, mel_frames
    from kdstore.store import StoreReader
    from tests.models import build_model

    torch.set_num_threads(1)
    lines = Path(demo_corpus.train_manifest).read_text().splitlines()[:6]
    manifest = tmp_path / "six.json"
    manifest.write_text("\n".join(lines) + "\n")
    import json

    extras = [causal_extra_frames(mel_frames(soundfile.info(json.loads(line)["audio_filepath"]).frames, 160, 512), 8)
              for line in lines]
    assert 1 in extras  # at least one utterance where the streaming student has one frame more than the store
    teacher = tmp_path / "teacher.nemo"
    build_model("tiny-teacher", demo_corpus.tokenizer_dir, seed=1, **{
        "model.encoder.n_layers": 1, "model.model_defaults.enc_hidden": 64,
        "model.encoder.subsampling_conv_channels": 64}).save_to(str(teacher))
    store = tmp_path / "t.zarr"
    meta = dump_teacher(teacher, manifest, store, DumpSettings(top_k=4, batch_size=3, band=6, ctc=True))
    assert meta.front_end.causal_downsampling is False
    assert StoreReader(store).metadata.front_end.causal_downsampling is False
    cfg = load_train_config("tiny-streaming", [
        f"model.train_ds.manifest_filepath={manifest}", f"run.output={tmp_path / 's.nemo'}", "trainer.max_steps=2",
        "model.train_ds.batch_size=6", "trainer.accelerator=cpu", "model.encoder.n_layers=1",
        "model.kd.delay_frames=2"], store=str(store))
    result = train_student(cfg)
    losses = result.final_losses
    assert result.steps == 2 and np.isfinite(losses["train_kd_loss"]) and losses["train_kd_loss"] > 0, losses
    assert np.isfinite(losses["train_ctc_kd_loss"]) and losses["train_ctc_kd_loss"] > 0, losses
    assert (tmp_path / "s.nemo").is_file()
