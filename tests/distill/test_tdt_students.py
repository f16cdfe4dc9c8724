"""TDT students (kdstore/configs/_tdt.yaml): trained on CPU with kdstore's vectorised TDT loss, KD on tokens
and durations from a TDT teacher's store, token KD only for an RNN-T student of that store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def test_a_tdt_student_trains_on_cpu_with_kdstores_tdt_loss(demo_corpus, tmp_path):
    """NeMo's TDT loss refuses CPU; train-student uses kdstore's, the saved model is NeMo's TDT model (its
    joint has 5 duration outputs) and NeMo's TDT greedy decoding runs on it."""
    from kdstore.nemo.checkpoint import restore_model
    from kdstore.nemo.model_kind import tdt_durations

    out = tmp_path / "tdt.nemo"
    args = [sys.executable, "-m", "kdstore.cli.main", "train-student", "--config", "tiny-tdt", "--no-progress",
            f"model.train_ds.manifest_filepath={demo_corpus.train_manifest}",
            f"model.tokenizer.dir={demo_corpus.tokenizer_dir}", "model.enable_kd=false", f"run.output={out}",
            "trainer.max_steps=4", "model.train_ds.batch_size=4"]
    result = subprocess.run(args, check=False, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    curve = out.with_suffix(".log.csv").read_text().splitlines()
    header = curve[0].split(",")
    losses = [float(line.split(",")[header.index("train_rnnt_loss")]) for line in curve[1:]]
    assert len(losses) == 4 and all(0 < x < 1e4 for x in losses)
    model = restore_model(out)
    assert tdt_durations(model) == (0, 1, 2, 3, 4) and model.joint.num_extra_outputs == 5
    audio = torch.zeros(1, 16000)
    with torch.no_grad():
        encoded, length = model.forward(input_signal=audio, input_signal_length=torch.tensor([16000]))
        hyps = model.decoding.rnnt_decoder_predictions_tensor(encoder_output=encoded, encoded_lengths=length)
    assert isinstance(hyps[0].text, str)


def test_the_cpu_loss_of_a_tdt_student_is_kdstores_tdt_loss(tokenizer_dir_small):
    from kdstore.lattice.tdt_loss import VectorizedTDTLoss, tdt_loss
    from tests.models import build_model

    model = build_model("tiny-tdt", tokenizer_dir_small, seed=0)
    assert model.tdt_durations == (0, 1, 2, 3, 4)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 4, model.decoder.vocab_size + 1 + 5, generator=generator)
    tokens = torch.randint(0, model.decoder.vocab_size, (2, 3), generator=generator)
    frames, labels = torch.tensor([6, 4]), torch.tensor([3, 2])
    ours = model._transducer_loss(logits, tokens, frames, labels, per_utterance=True)
    assert isinstance(model._cpu_rnnt_loss, VectorizedTDTLoss)
    expected = tdt_loss(logits, tokens, frames, labels, blank=model.decoder.blank_idx, durations=[0, 1, 2, 3, 4],
                        sigma=0.02, omega=0.1, reduction=None)
    torch.testing.assert_close(ours, expected)


@pytest.fixture(scope="module")
def tokenizer_dir_small(tmp_path_factory):
    from kdstore.corpus.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(["turn on the light", "turn off the radio", "open the door", "call mom"] * 5, out, 24)
    return out


def _rows(duration_logp: torch.Tensor, frames: list[int], labels: list[int], stored=None):
    from kdstore.distill.data import KDRows

    batch, t, nodes, _ = duration_logp.shape
    return KDRows(logp=torch.zeros(batch, t, nodes, 1), ids=torch.zeros(batch, t, nodes, 1, dtype=torch.long),
                  blank_label=torch.zeros(batch, t, nodes, 2), frames=torch.tensor(frames), labels=torch.tensor(labels),
                  stored=stored, duration_logp=duration_logp)


def test_duration_kd_by_hand():
    """KL(teacher durations || student durations) per node, mean over each utterance's valid (and stored) nodes,
    then over the batch; zero when the student's durations are the teacher's; temperature softens both."""
    from kdstore.distill.config import KDSettings
    from kdstore.distill.kd_term import duration_kd_loss

    settings = KDSettings(enabled=True, alpha=0.5, temperature=1.0, store="s", loss="topk_rest")
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 3, 2, 5, generator=g).log_softmax(-1)  # (B, T, U+1, D)
    student = torch.randn(2, 3, 2, 5, generator=g).log_softmax(-1)
    rows = _rows(teacher, frames=[3, 2], labels=[1, 0])
    kl = (teacher.exp() * (teacher - student)).sum(-1)  # (B, T, U+1)
    expected = (kl[0].mean() + kl[1, :2, :1].mean()) / 2  # utterance 1: 2 frames, U = 0
    torch.testing.assert_close(duration_kd_loss(student, rows, settings), expected)
    per_utt = duration_kd_loss(student, rows, settings, per_utterance=True)
    torch.testing.assert_close(per_utt, torch.stack([kl[0].mean(), kl[1, :2, :1].mean()]))
    assert float(duration_kd_loss(teacher, rows, settings)) == pytest.approx(0.0, abs=1e-6)
    stored = torch.zeros(2, 3, 2, dtype=torch.bool)
    stored[0, 0, 0] = stored[1, 1, 0] = True  # a band store keeps these nodes only
    torch.testing.assert_close(duration_kd_loss(student, _rows(teacher, [3, 2], [1, 0], stored), settings),
                               (kl[0, 0, 0] + kl[1, 1, 0]) / 2)
    hot = KDSettings(enabled=True, alpha=0.5, temperature=2.0, store="s", loss="topk_rest")
    t2, s2 = (teacher / 2).log_softmax(-1), (student / 2).log_softmax(-1)
    torch.testing.assert_close(duration_kd_loss(student, rows, hot),
                               duration_kd_loss(s2, _rows(t2, [3, 2], [1, 0]), settings))
    with pytest.raises(ValueError, match="4"):
        duration_kd_loss(student[..., :4], rows, settings)


def test_the_delay_moves_the_duration_rows_with_their_nodes():
    from kdstore.distill.delay import align_rows

    teacher = torch.randn(1, 4, 2, 5).log_softmax(-1)
    shifted = align_rows(_rows(teacher, [4], [1]), torch.tensor([4]), 4, 2)
    torch.testing.assert_close(shifted.duration_logp[0, 2:], teacher[0, :2])
    assert not shifted.stored[0, :2].any()


def test_tdt_and_rnnt_students_distil_a_tdt_teachers_store(demo_corpus, tokenizer_dir_small, tmp_path):
    """A tiny TDT teacher's store (kdstore/3, duration log-probs per node) trains a TDT student with the duration
    KD term (logged; model.kd.duration_weight=0 turns it off) and an RNN-T student with token KD only."""
    from kdstore.dump.run import DumpSettings, dump_teacher
    from tests.models import build_model

    teacher = build_model("tiny-tdt", demo_corpus.tokenizer_dir, seed=0)
    teacher_path = tmp_path / "tdt-teacher.nemo"
    teacher.save_to(str(teacher_path))
    manifest = tmp_path / "train.json"
    lines = [line for line in Path(demo_corpus.train_manifest).read_text().splitlines() if line.strip()][:12]
    manifest.write_text("\n".join(lines) + "\n")
    store = tmp_path / "tdt.zarr"
    dump_teacher(teacher_path, manifest, store, DumpSettings(top_k=4, band=4, progress=False))

    def train(config: str, name: str, *extra: str) -> list[str]:
        out = tmp_path / f"{name}.nemo"
        args = [sys.executable, "-m", "kdstore.cli.main", "train-student", "--config", config, "--no-progress",
                "--store", str(store), f"model.train_ds.manifest_filepath={manifest}",
                f"model.tokenizer.dir={demo_corpus.tokenizer_dir}", f"run.output={out}", "trainer.max_steps=2",
                "model.train_ds.batch_size=4", *extra]
        result = subprocess.run(args, check=False, capture_output=True, text=True, timeout=600,
                                env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        return out.with_suffix(".log.csv").read_text().splitlines()[0].split(",")

    assert {"train_kd_loss", "train_duration_kd_loss"} <= set(train("tiny-tdt", "tdt-kd"))
    assert "train_duration_kd_loss" not in train("tiny-tdt", "tdt-kd-off", "model.kd.duration_weight=0")
    columns = train("tiny", "rnnt-kd")
    assert "train_kd_loss" in columns and "train_duration_kd_loss" not in columns


def test_a_tdt_student_with_other_durations_than_its_teacher_is_refused_in_one_line(demo_corpus, tmp_path):
    from kdstore.dump.run import DumpSettings, dump_teacher
    from tests.models import build_model

    teacher_path = tmp_path / "tdt-teacher.nemo"
    build_model("tiny-tdt", demo_corpus.tokenizer_dir, seed=0).save_to(str(teacher_path))
    manifest = tmp_path / "train.json"
    manifest.write_text("\n".join(Path(demo_corpus.train_manifest).read_text().splitlines()[:4]) + "\n")
    store = tmp_path / "tdt.zarr"
    dump_teacher(teacher_path, manifest, store, DumpSettings(top_k=4, band=4, progress=False))
    args = [sys.executable, "-m", "kdstore.cli.main", "train-student", "--config", "tiny-tdt", "--no-progress",
            "--store", str(store), f"model.train_ds.manifest_filepath={manifest}",
            f"model.tokenizer.dir={demo_corpus.tokenizer_dir}", f"run.output={tmp_path / 's.nemo'}",
            "trainer.max_steps=1", "model.train_ds.batch_size=2", "model.model_defaults.tdt_durations=[0,1,2,4,8]"]
    result = subprocess.run(args, check=False, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert result.returncode != 0 and not (tmp_path / "s.nemo").exists()
    message = [line for line in result.stderr.splitlines() if "durations" in line]
    assert message and "[0, 1, 2, 3, 4]" in message[-1] and "[0, 1, 2, 4, 8]" in message[-1], result.stderr[-2000:]
