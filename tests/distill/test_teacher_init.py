"""Starting a student from other weights: kdstore's teacher initialisation (tensor by tensor, layers
renumbered) and NeMo's own ``init_from_nemo_model`` with include/exclude, on real NeMo models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.models import build_model

TEXTS = ["turn on the light", "turn off the radio", "open the door", "close the window please", "call mom"]
SMALL = {"model.model_defaults.enc_hidden": 32, "model.model_defaults.pred_hidden": 48,
         "model.model_defaults.joint_hidden": 48, "model.encoder.subsampling_conv_channels": 16,
         "model.encoder.n_heads": 2}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    from kdstore.corpus.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(TEXTS * 5, out, 24)
    return out


@pytest.fixture(scope="module")
def teacher_path(tokenizer_dir, tmp_path_factory) -> Path:
    """A 5-layer hybrid teacher with random weights, saved as .nemo (weights perturbed away from init)."""
    teacher = build_model("tiny-teacher", tokenizer_dir, seed=1, **SMALL, **{"model.encoder.n_layers": 5})
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.01 * torch.randn_like(p))  # nothing equals a fresh init by chance
        for name, buf in teacher.named_buffers():
            if "running_mean" in name:
                buf.add_(torch.rand_like(buf))
    path = tmp_path_factory.mktemp("teacher") / "teacher.nemo"
    teacher.save_to(str(path))
    return path


def _teacher_state(path: Path) -> dict[str, torch.Tensor]:
    from kdstore.nemo.checkpoint import restore_model

    return {k: v.detach().clone() for k, v in restore_model(path).state_dict().items()}


def test_layer_rules():
    from kdstore.distill.teacher_init import choose_layers
    from kdstore.errors import ConfigError

    assert choose_layers("even", 4, 2) == [0, 3]
    assert choose_layers("even", 17, 8) == [0, 2, 5, 7, 9, 11, 14, 16]
    assert choose_layers("even", 16, 8) == [0, 2, 4, 6, 9, 11, 13, 15]
    assert choose_layers("first", 5, 2) == [0, 1] and choose_layers("last", 5, 2) == [3, 4]
    assert choose_layers([4, 1], 5, 2) == [4, 1]
    with pytest.raises(ConfigError, match="has 3 entries but the student has 2"):
        choose_layers([0, 1, 2], 5, 2)
    with pytest.raises(ConfigError, match=r"\[7\] out of range"):
        choose_layers([0, 7], 5, 2)
    with pytest.raises(ConfigError, match="give an explicit list"):
        choose_layers("even", 2, 3)


@pytest.mark.parametrize("layers", ["even", [4, 1]])
def test_copies_exactly_what_it_reports(tokenizer_dir, teacher_path, layers):
    """Same widths, 2 of 5 layers: every student tensor comes from the teacher (layers renumbered);
    each copied tensor equals the teacher's, and the report names the source of each."""
    from kdstore.distill.teacher_init import init_from_teacher

    student = build_model("tiny-teacher", tokenizer_dir, seed=2, **SMALL, **{"model.encoder.n_layers": 2})
    report = init_from_teacher(student, teacher_path, layers)
    expected_map = [0, 4] if layers == "even" else [4, 1]
    assert report.layer_map == expected_map
    teacher = _teacher_state(teacher_path)
    state = student.state_dict()
    assert set(report.copied) | set(report.kept) == set(state)
    assert not report.kept  # same widths: nothing stays random
    for key, source in report.copied.items():
        if key.startswith("encoder.layers."):
            index = int(key.split(".")[2])
            assert source == key.replace(f"encoder.layers.{index}.", f"encoder.layers.{expected_map[index]}.", 1)
        else:
            assert source == key
        assert torch.equal(state[key], teacher[source].to(state[key].dtype)), key
    groups = {row.student: row.teacher for row in report.rows if row.copied}
    assert groups["encoder.layers.1"] == f"encoder.layers.{expected_map[1]}"
    assert {"decoder.prediction", "joint.pred", "ctc_decoder.decoder_layers", "encoder.pre_encode"} <= set(groups)
    assert report.copied_values == sum(v.numel() for v in state.values())
    assert "| encoder.layers.0 | encoder.layers." in report.table()


def test_a_narrower_student_keeps_its_own_encoder(tokenizer_dir, teacher_path, tmp_path):
    """Narrower encoder, same prediction net and joint width: the encoder (and the joint's encoder
    projection, the CTC decoder) stay exactly as initialised, the prediction net and the rest of the
    joint come from the teacher; the table says why."""
    from kdstore.distill.teacher_init import init_from_teacher

    narrow = {**SMALL, "model.model_defaults.enc_hidden": 24, "model.encoder.n_layers": 2}
    student = build_model("tiny-teacher", tokenizer_dir, seed=3, **narrow)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    report = init_from_teacher(student, teacher_path, "even")
    teacher = _teacher_state(teacher_path)
    after = student.state_dict()
    for key, reason in report.kept.items():
        assert torch.equal(after[key], before[key]), key
        assert reason.startswith("shape") or reason == "not in the teacher"
    assert all(k in report.kept for k in after if k.startswith("encoder.layers.") and after[k].dim() > 0
               and "weight" in k)
    assert "joint.enc.weight" in report.kept and "ctc_decoder.decoder_layers.0.weight" in report.kept
    for key in ("decoder.prediction.embed.weight", "joint.pred.weight", "joint.joint_net.2.weight"):
        assert report.copied[key] == key and torch.equal(after[key], teacher[key])
    md = report.write(tmp_path)
    assert "different shapes (narrower or wider)" in md.read_text()
    assert (tmp_path / "init_from_teacher.json").is_file()


def test_nemo_init_from_nemo_model_with_include_and_exclude(tokenizer_dir, teacher_path):
    """NeMo's own keys, applied by NeMo: include [encoder] and exclude [layers.1] copies the encoder
    except layer 1; everything else stays as initialised."""
    from omegaconf import OmegaConf

    from kdstore.distill.teacher_init import apply_nemo_init, nemo_init_config
    from kdstore.errors import ConfigError

    student = build_model("tiny-teacher", tokenizer_dir, seed=4, **SMALL, **{"model.encoder.n_layers": 5})
    before = {k: v.clone() for k, v in student.state_dict().items()}
    cfg = OmegaConf.create({"init_from_nemo_model": {"enc": {"path": str(teacher_path), "include": ["encoder"],
                                                             "exclude": ["layers.1."]}},
                            "init_from_pretrained_model": None, "init_from_ptl_ckpt": None})
    summary = apply_nemo_init(student, cfg)
    assert summary.startswith("init_from_nemo_model: ") and "tensors initialised by NeMo from" in summary
    teacher = _teacher_state(teacher_path)
    after = student.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    for key in after:
        from_teacher = key.startswith("encoder.") and "layers.1." not in key
        if from_teacher:
            assert torch.equal(after[key], teacher[key]), key
        elif key not in ("preprocessor.featurizer.window", "preprocessor.featurizer.fb"):
            assert torch.equal(after[key], before[key]), key
    assert any(k.startswith("encoder.layers.0.") for k in changed) and not any("layers.1." in k for k in changed)
    typo = OmegaConf.create({"init_from_nemo_model": {"enc": {"path": str(teacher_path), "include": ["encoderz"]}}})
    with pytest.raises(ConfigError, match="copied no tensor"):
        apply_nemo_init(build_model("tiny-teacher", tokenizer_dir, seed=4, **SMALL, **{"model.encoder.n_layers": 5}),
                        typo)
    with pytest.raises(ConfigError, match="at most one"):
        nemo_init_config(OmegaConf.create({"init_from_nemo_model": "a.nemo", "init_from_ptl_ckpt": "b.ckpt"}))
    missing = OmegaConf.create({"init_from_nemo_model": str(teacher_path.with_name("missing.nemo"))})
    with pytest.raises(ConfigError, match="init_from_nemo_model: NeMo could not initialise"):
        apply_nemo_init(student, missing)


def test_a_streaming_student_keeps_the_teachers_projection_on_the_shared_frequency_bins(tokenizer_dir, teacher_path):
    """Causal downsampling keeps 11 of 80/8 frequency bins where the offline teacher keeps 10: the pre-encoder's
    output projection copies the 10 shared bins of every channel and zeroes the extra one; the rest of the
    encoder copies as for an offline student."""
    from kdstore.distill.teacher_init import PRE_ENCODE_OUT, init_from_teacher

    student = build_model("tiny-teacher-2l-streaming", tokenizer_dir, seed=3, **SMALL)
    report = init_from_teacher(student, teacher_path, "even")
    teacher = _teacher_state(teacher_path)[PRE_ENCODE_OUT]  # (D, C x 10)
    after = student.state_dict()[PRE_ENCODE_OUT]  # (D, C x 11)
    channels = SMALL["model.encoder.subsampling_conv_channels"]
    assert teacher.shape[1] == channels * 10 and after.shape[1] == channels * 11
    ours = after.view(after.shape[0], channels, 11)
    assert torch.equal(ours[:, :, :10], teacher.view(teacher.shape[0], channels, 10))
    assert ours[:, :, 10].abs().sum() == 0
    assert report.copied[PRE_ENCODE_OUT] == f"{PRE_ENCODE_OUT} (frequency bins 0..9 of 11; {channels} channels)"
    assert PRE_ENCODE_OUT not in report.kept
    assert "encoder.layers.1.self_attn.linear_q.weight" in report.copied


@pytest.mark.parametrize(("student_config", "teacher_is_tdt"), [("tiny-teacher-tdt", False), ("tiny-teacher", True)])
def test_tdt_and_rnnt_joints_share_their_token_rows(tokenizer_dir, teacher_path, tmp_path, student_config,
                                                    teacher_is_tdt):
    """A TDT joint emits V+1 token logits, then D duration logits. A TDT student of an RNN-T teacher copies
    the teacher's V+1 output rows and keeps its own D duration rows; an RNN-T student of a TDT teacher copies
    the token rows and leaves the durations behind. Everything else copies as between two RNN-T models."""
    from kdstore.distill.teacher_init import init_from_teacher

    key = "joint.joint_net.2.weight"
    if teacher_is_tdt:
        teacher = build_model("tiny-teacher-tdt", tokenizer_dir, seed=5, **SMALL, **{"model.encoder.n_layers": 5})
        source = tmp_path / "tdt-teacher.nemo"
        teacher.save_to(str(source))
    else:
        source = teacher_path
    student = build_model(student_config, tokenizer_dir, seed=3, **SMALL, **{"model.encoder.n_layers": 5})
    before = student.state_dict()[key].clone()
    report = init_from_teacher(student, source, "even")
    theirs, ours = _teacher_state(source)[key], student.state_dict()[key]
    tokens = student.state_dict()["decoder.prediction.embed.weight"].shape[0]  # V+1
    assert {ours.shape[0], theirs.shape[0]} == {tokens, tokens + 5}
    assert torch.equal(ours[:tokens], theirs[:tokens].to(ours.dtype))
    assert torch.equal(ours[tokens:], before[tokens:])  # the student's own duration rows, if any
    assert report.copied[key].endswith(f"(output rows 0..{tokens - 1} (tokens and blank; no duration rows))")
    assert "encoder.layers.4.self_attn.linear_q.weight" in report.copied and not report.kept


def test_a_joint_with_another_vocabulary_is_not_copied_row_by_row(tokenizer_dir, teacher_path, tmp_path):
    """Token rows are copied only when both prediction nets embed the same V+1 tokens."""
    from kdstore.corpus.tokenizer import train_tokenizer
    from kdstore.distill.teacher_init import init_from_teacher

    other = tmp_path / "tok"
    train_tokenizer(TEXTS * 5, other, 20)
    student = build_model("tiny-teacher-tdt", other, seed=3, **SMALL, **{"model.encoder.n_layers": 5})
    report = init_from_teacher(student, teacher_path, "even")
    assert "joint.joint_net.2.weight" in report.kept and "joint.joint_net.2.weight" not in report.copied
