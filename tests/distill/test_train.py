"""Training configs (schema, package data, errors) and training ergonomics with real NeMo/Lightning:
validation + checkpoints, DDP on CPU, model sizes."""

from __future__ import annotations

import os
import random
import string
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[2]
CONFIG_NAMES = ["large", "large-8l", "large-tdt", "medium", "medium-8l", "medium-streaming", "medium-tdt", "small", "small-streaming",
                "small-tdt", "tiny", "tiny-streaming", "tiny-tdt", "tiny-teacher", "tiny-teacher-2l",
                "tiny-teacher-2l-streaming", "tiny-teacher-2l-tdt", "tiny-teacher-tdt"]


# -- configs (fast: no model is built) -------------------------------------------------------------
def test_named_configs_come_from_package_data(tmp_path, monkeypatch):
    from importlib.resources import files

    from kdstore.distill.config import config_names, load_train_config, read_train_config, resolve_config_path

    monkeypatch.chdir(tmp_path)  # names never depend on the working folder or the repository layout
    assert config_names() == CONFIG_NAMES
    assert Path(str(resolve_config_path("tiny"))) == Path(str(files("kdstore") / "configs" / "tiny.yaml"))
    for name in CONFIG_NAMES:
        settings = read_train_config(load_train_config(name))
        assert settings.name == name and settings.model.encoder["subsampling_factor"] == 8
    large, small = (read_train_config(load_train_config(n)).model for n in ("large", "small"))
    assert (large.encoder["n_heads"], small.encoder["n_heads"]) == (8, 4)  # _base.yaml's 4, overridden once
    # Hybrid RNNT-CTC by default (docs/decisions.md): every named config has the CTC head, weight 0.5,
    # and a plain RNN-T is one override away.
    for name in CONFIG_NAMES:
        assert read_train_config(load_train_config(name)).model.aux_ctc["ctc_loss_weight"] == 0.5, name
    assert read_train_config(load_train_config("tiny", ["model.aux_ctc=null"])).model.aux_ctc is None
    for name in (n for n in CONFIG_NAMES if n.endswith("-streaming")):  # _streaming.yaml over the offline twin
        model = read_train_config(load_train_config(name)).model
        twin = read_train_config(load_train_config(name.removesuffix("-streaming"))).model
        assert (model.encoder["att_context_style"], model.encoder["causal_downsampling"],
                model.preprocessor["normalize"]) == ("chunked_limited", True, "NA"), name
        assert (model.encoder["n_layers"], model.encoder["d_model"]) == (twin.encoder["n_layers"], twin.encoder["d_model"])
    for name in (n for n in CONFIG_NAMES if n.endswith("-tdt")):  # _tdt.yaml over the RNN-T twin
        model = read_train_config(load_train_config(name)).model
        twin = read_train_config(load_train_config(name.removesuffix("-tdt"))).model
        assert (model.joint["num_extra_outputs"], model.loss["loss_name"], model.decoding["model_type"]) == (5, "tdt", "tdt")
        assert model.loss["tdt_kwargs"]["durations"] == model.decoding["durations"] == [0, 1, 2, 3, 4], name
        assert (model.encoder["n_layers"], model.encoder["d_model"]) == (twin.encoder["n_layers"], twin.encoder["d_model"])
    pruned = read_train_config(load_train_config("large-8l")).model
    assert (pruned.encoder["n_layers"], pruned.encoder["d_model"], pruned.init_from_teacher.encoder_layers) == \
        (8, 512, "even")


def test_a_config_file_extends_a_named_config(tmp_path):
    from kdstore.distill.config import load_train_config, read_train_config
    from kdstore.errors import ConfigError

    mine = tmp_path / "mine.yaml"
    mine.write_text("defaults: [tiny]\nmodel:\n  kd:\n    top_k: 4\n")
    settings = read_train_config(load_train_config(str(mine), ["run.seed=3"], store="t.zarr"))
    assert (settings.model.kd.top_k, settings.run.seed, settings.model.kd.store) == (4, 3, "t.zarr")
    assert settings.model.encoder["n_layers"] == 3  # from tiny
    (tmp_path / "a.yaml").write_text("defaults: [b]\n")
    (tmp_path / "b.yaml").write_text("defaults: [a]\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_train_config(str(tmp_path / "a.yaml"))
    with pytest.raises(ConfigError, match="known names: " + ", ".join(CONFIG_NAMES[:6]) + ", "):
        load_train_config("tiny-studnet")


@pytest.mark.parametrize(("yaml", "override", "named"), [
    ("model:\n  kd:\n    los: collapsed\n", "model.kd.los=collapsed", "model.kd.los is not a config key; did you mean model.kd.loss"),
    ("trainr:\n  max_steps: 4\n", "trainr.max_steps=4", "trainr is not a config key; did you mean trainer"),
    ("model:\n  train_ds:\n    min_duraton: 0.1\n", "model.train_ds.min_duraton=0.1",
     "model.train_ds.min_duraton is not a config key; did you mean model.train_ds.min_duration"),
])
def test_a_misspelt_key_fails_naming_its_path(tmp_path, yaml, override, named):
    from kdstore.distill.config import load_train_config
    from kdstore.errors import ConfigError

    config = tmp_path / "typo.yaml"
    config.write_text("defaults: [tiny]\n" + yaml)
    with pytest.raises(ConfigError, match=f"typo.yaml: {named}"):
        load_train_config(str(config))
    for item in (override, "+" + override):  # + adds keys to NeMo's sections only, never to kdstore's
        with pytest.raises(ConfigError, match=named):
            load_train_config("tiny", [item])


def test_a_misspelt_key_in_a_nemo_section_says_how_to_add_one():
    from kdstore.distill.config import load_train_config
    from kdstore.errors import ConfigError

    with pytest.raises(ConfigError, match=r"model.encoder.n_layerz .*\+model.encoder.n_layerz=\.\.\."):
        load_train_config("tiny", ["model.encoder.n_layerz=2"])
    cfg = load_train_config("tiny", ["+model.train_ds.augmentor.white_noise.prob=0.5"])
    assert cfg.model.train_ds.augmentor.white_noise.prob == 0.5


@pytest.mark.parametrize(("item", "named"), [
    ("model.kd.top_k=many", r"model.kd.top_k: Value 'many' of type 'str' could not be converted to Integer"),
    ("run.seed=zero", "run.seed: Value 'zero'"),
    ("model.train_ds.batch_size=1.5", "model.train_ds.batch_size: Value '1.5'"),
    ("model.enable_kd=maybe", "model.enable_kd: Value 'maybe'"),
    ("model.kd.loss=kl", "model.kd.loss: expected one of topk_rest, topk_renorm, collapsed, got 'kl'"),
    ("model.kd_alpha=1.5", r"model.kd_alpha: expected a value in \[0, 1\], got 1.5"),
    ("run.rnnt_loss=warp", "run.rnnt_loss: expected one of auto, nemo, kdstore"),
])
def test_a_wrong_value_fails_naming_the_key(item, named):
    from kdstore.distill.config import load_train_config
    from kdstore.errors import ConfigError

    with pytest.raises(ConfigError, match=named):
        load_train_config("tiny", [item])


def test_wrong_type_in_a_file_and_in_the_model_config_name_the_key(tmp_path):
    from omegaconf import OmegaConf

    from kdstore.distill.config import TrainDataSection, load_train_config, step_keys, typed
    from kdstore.errors import ConfigError

    config = tmp_path / "bad.yaml"
    config.write_text("defaults: [tiny]\nrun:\n  num_threads: all\n")
    with pytest.raises(ConfigError, match="bad.yaml: run.num_threads: Value 'all'"):
        load_train_config(str(config))
    # the student reads NeMo's copy of the model config through the same schema
    with pytest.raises(ConfigError, match="model.train_ds.max_duration: Value 'long'"):
        typed(TrainDataSection, {"manifest_filepath": "x.json", "max_duration": "long"}, "model.train_ds")
    keys = step_keys(OmegaConf.create({"kd_alpha": 0.25, "kd": {"loss": "collapsed"}, "target": "nemo...Model"}))
    assert (keys.kd_alpha, keys.kd.loss, keys.enable_kd) == (0.25, "collapsed", True)


def test_trainer_section_is_lightnings_and_kdstore_sets_its_own_keys():
    from kdstore.distill.train import trainer_arguments
    from kdstore.errors import ConfigError

    args = trainer_arguments({"max_steps": 5, "limit_val_batches": 2}, progress=False)
    assert args["max_steps"] == 5 and args["logger"] is False and args["use_distributed_sampler"] is False
    with pytest.raises(ConfigError, match="trainer.max_step is not an argument of Lightning's Trainer"):
        trainer_arguments({"max_step": 5}, progress=False)
    with pytest.raises(ConfigError, match="trainer.logger is set by kdstore"):
        trainer_arguments({"logger": True}, progress=False)


def test_required_values_say_how_to_set_them(tmp_path):
    from kdstore.distill.config import load_train_config
    from kdstore.distill.train import train_student
    from kdstore.errors import ConfigError

    with pytest.raises(ConfigError, match="run.output is required: set run.output=PATH.nemo"):
        train_student(load_train_config("tiny"))
    cfg = load_train_config("tiny", [f"run.output={tmp_path / 's.nemo'}", "model.train_ds.manifest_filepath=x.json"])
    with pytest.raises(ConfigError, match="model.tokenizer.dir is required"):
        train_student(cfg)


# -- training (slow) ---------------------------------------------------------------------------------
@pytest.mark.slow
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
    # the resolved config is saved beside the model and, as NeMo's cfg, inside it
    assert OmegaConf.load(out.with_suffix(".files") / "train_config.yaml").model.kd_alpha == 0.5
    with tarfile.open(out) as nemo:
        member = next(m for m in nemo.getmembers() if m.name.endswith("model_config.yaml"))
        saved = OmegaConf.create(nemo.extractfile(member).read().decode())
    assert saved.enable_kd is False and saved.train_ds.batch_size == 4 and saved.kd.loss == "topk_rest"


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize(("name", "millions"), [("small", 14), ("medium", 32), ("large", 120), ("large-8l", 60),
                                                ("medium-8l", 18)])
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
