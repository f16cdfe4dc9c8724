"""TDT students (kdstore/configs/_tdt.yaml): trained on CPU with kdstore's vectorised TDT loss, KD on tokens
and durations from a TDT teacher's store, token KD only for an RNN-T student of that store."""

from __future__ import annotations

import os
import subprocess
import sys

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
