"""Training ergonomics with real NeMo/Lightning: validation + checkpoints, DDP on CPU, model sizes."""

from __future__ import annotations

import os
import random
import string
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def test_validation_checkpoints_and_tensorboard(demo_corpus, tmp_path):
    from kdstore.distill.config import load_train_config
    from kdstore.distill.train import train_student

    out = tmp_path / "student.nemo"
    cfg = load_train_config("tiny", [
        f"model.train_ds.manifest_filepath={demo_corpus.train_manifest}",
        f"model.validation_ds.manifest_filepath={demo_corpus.train_manifest}",  # the tiny tokenizer covers train
        f"model.tokenizer.dir={demo_corpus.tokenizer_dir}", "model.enable_kd=false",
        f"run.output={out}", "trainer.max_steps=4", "trainer.val_check_interval=2",
        "trainer.accelerator=cpu", "model.train_ds.batch_size=4",
    ])
    result = train_student(cfg)
    assert out.is_file() and result.steps == 4
    assert result.log_dir is not None and any(result.log_dir.rglob("events.out.tfevents*"))
    assert result.best_model is not None and result.best_model.is_file()


def test_two_process_ddp_on_cpu(demo_corpus, tmp_path):
    out = tmp_path / "ddp.nemo"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "kdstore.cli.main", "train-student", "--config", "tiny", "--no-progress",
            f"model.train_ds.manifest_filepath={demo_corpus.train_manifest}",
            f"model.tokenizer.dir={demo_corpus.tokenizer_dir}", "model.enable_kd=false", f"run.output={out}",
            "trainer.max_steps=3", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
            "model.train_ds.batch_size=4"]
    result = subprocess.run(args, check=False, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert out.is_file()
    assert "3 steps" in result.stdout


@pytest.fixture(scope="module")
def tokenizer_1024(tmp_path_factory) -> Path:
    import sentencepiece as spm

    out = tmp_path_factory.mktemp("tok1024")
    rng = random.Random(0)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(3000)]
    text = out / "text.txt"
    text.write_text("\n".join(" ".join(rng.choices(words, k=10)) for _ in range(20000)))
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(out / "tokenizer"), vocab_size=1024,
                                   model_type="bpe", character_coverage=1.0, num_threads=1, minloglevel=2)
    pieces = [line.split("\t")[0] for line in (out / "tokenizer.vocab").read_text().splitlines()]
    (out / "vocab.txt").write_text("\n".join(pieces) + "\n")
    return out


@pytest.mark.parametrize(("name", "millions"), [("small", 14), ("medium", 32), ("large", 120)])
def test_model_sizes_match_the_fastconformer_table(name, millions, tokenizer_1024):
    from omegaconf import OmegaConf

    from kdstore.distill.config import load_train_config
    from kdstore.distill.train import build_student

    cfg = load_train_config(name, [f"model.tokenizer.dir={tokenizer_1024}"])
    cfg.model.train_ds.manifest_filepath = None
    model = build_student(OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True)))
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert model.tokenizer.vocab_size == 1024
    assert abs(params - millions) / millions <= 0.10, f"{name}: {params:.1f}M vs ~{millions}M"
