"""Which models each command serves (issue 14, fault 3): a character-vocabulary RNN-T model is scored by
``eval`` and refused in one line by the commands that need token pieces; the help says which classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
from click.testing import CliRunner

from kdstore.cli.main import cli


@pytest.fixture(scope="module")
def char_model(tmp_path_factory) -> Path:
    """A tiny EncDecRNNTModel with a character ``labels`` list (no SentencePiece), random weights."""
    import torch
    from nemo.collections.asr.models import EncDecRNNTModel
    from omegaconf import OmegaConf

    from kdstore.distill.config import load_train_config

    model_cfg = OmegaConf.to_container(load_train_config("tiny").model, resolve=True)
    for key in ("tokenizer", "kd", "kd_alpha", "enable_kd", "init_from_teacher", "aux_ctc", "train_ds",
                "validation_ds", "rnnt_reduction"):
        model_cfg.pop(key, None)
    labels = list(" abcdefghijklmnopqrstuvwxyz'")
    model_cfg.update(labels=labels, target="nemo.collections.asr.models.rnnt_models.EncDecRNNTModel")
    model_cfg["decoder"]["vocab_size"] = model_cfg["joint"]["num_classes"] = len(labels)
    model_cfg["joint"]["vocabulary"] = labels
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("char") / "char.nemo"
    EncDecRNNTModel(cfg=OmegaConf.create(model_cfg)).save_to(str(path))
    return path


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("char_audio")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(2):
        path = folder / f"{i}.wav"
        soundfile.write(path, (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
        lines.append(json.dumps({"audio_filepath": str(path), "duration": 1.0, "text": "turn on the light"}))
    out = folder / "m.json"
    out.write_text("\n".join(lines) + "\n")
    return out


def test_eval_scores_a_character_model(char_model, manifest, tmp_path):
    result = CliRunner().invoke(cli, ["eval", "--model", str(char_model), "--manifest", str(manifest),
                                      "--out", str(tmp_path / "eval"), "--json", "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    model = summary["model"] if "model" in summary and isinstance(summary["model"], dict) else summary
    assert model["utterances"] == 2 and model["ref_words"] == 8 and model["wer"] >= 0


@pytest.mark.parametrize("command", ["dump-teacher", "export-onnx"])
def test_commands_that_need_token_pieces_refuse_a_character_model_in_one_line(char_model, manifest, command, tmp_path):
    args = {"dump-teacher": ["--teacher", str(char_model), "--manifest", str(manifest), "--out", str(tmp_path / "s.zarr")],
            "export-onnx": ["--model", str(char_model), "--out", str(tmp_path / "onnx")]}[command]
    result = CliRunner().invoke(cli, [command, *args, "--no-progress"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"Error: {char_model}: EncDecRNNTModel has a character vocabulary (labels, no SentencePiece tokenizer); "
        f"kdstore {command} needs token pieces, so a BPE model (EncDecRNNTBPEModel or EncDecHybridRNNTCTCBPEModel); "
        "kdstore eval scores character models")
    assert not (tmp_path / "s.zarr").exists() and not (tmp_path / "onnx").exists()


@pytest.mark.parametrize(("command", "says"), [("dump-teacher", "TDT teachers write kdstore/3 stores"),
                                               ("export-onnx", "character-vocabulary models are refused, TDT models need durations 0..D-1"),
                                               ("eval", "SentencePiece or character vocabulary")])
def test_help_says_which_model_classes_are_served(command, says):
    text = " ".join(CliRunner().invoke(cli, [command, "--help"]).output.split()).replace("- ", "-")  # wrapped at hyphens
    assert says in text and ("EncDecRNNTBPEModel" in text or command == "eval")
