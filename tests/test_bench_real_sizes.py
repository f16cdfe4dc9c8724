"""bench/real_sizes.py: its shapes are NeMo's published ones, and its pure helpers (no model is built)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import real_sizes


@pytest.mark.parametrize(("name", "d_model", "layers", "kernel", "xscaling", "mels", "pred_layers", "hybrid"), [
    ("large-rnnt", 512, 17, 9, True, 80, 1, False),
    ("large-hybrid", 512, 17, 9, True, 80, 1, True),
    ("xl-0.6b", 1024, 24, 9, True, 128, 2, False),
    ("xxl-1.1b", 1024, 42, 5, False, 128, 2, False),
    ("xl-0.6b-tdt", 1024, 24, 9, True, 128, 2, False),
])
def test_shapes_are_nemos_size_table(name, d_model, layers, kernel, xscaling, mels, pred_layers, hybrid):
    """NeMo's fast-conformer_transducer_bpe.yaml table: Large 512/8/17/k9, XL 1024/8/24/k9 with 2 LSTM
    layers, XXL 1024/8/42/k5 without xscaling; pred/joint 640, dw_striding 8x with 256 channels."""
    from kdstore.distill.config import load_train_config

    shape = real_sizes.SHAPES[name]
    cfg = load_train_config(shape.base, list(shape.overrides)).model
    enc = cfg.encoder
    assert (enc.d_model, enc.n_layers, enc.n_heads, enc.conv_kernel_size, enc.xscaling) == \
        (d_model, layers, 8, kernel, xscaling)
    assert (enc.subsampling, enc.subsampling_factor, enc.subsampling_conv_channels) == ("dw_striding", 8, 256)
    assert (cfg.preprocessor.features, enc.feat_in) == (mels, mels)
    assert (cfg.decoder.prednet.pred_hidden, cfg.decoder.prednet.pred_rnn_layers, cfg.joint.jointnet.joint_hidden) == \
        (640, pred_layers, 640)
    assert shape.hybrid is hybrid
    tdt = name.endswith("-tdt")  # Parakeet-TDT: NeMo's TDT joint, durations 0-4, sigma 0.02, omega 0.1
    assert cfg.joint.get("num_extra_outputs", 0) == (5 if tdt else 0)
    if tdt:
        assert (cfg.loss.loss_name, list(cfg.loss.tdt_kwargs.durations), cfg.loss.tdt_kwargs.sigma,
                cfg.loss.tdt_kwargs.omega) == ("tdt", [0, 1, 2, 3, 4], 0.02, 0.1)


def test_long_plan_joins_until_the_target_and_cycles():
    assert real_sizes.long_plan([10.0, 12.0, 9.0], target=30.0, gap=0.5) == [0, 1, 2]  # 31.0 s with gaps
    assert real_sizes.long_plan([10.0, 12.0, 8.0], target=30.0, gap=0.0) == [0, 1, 2]  # exactly 30 s
    assert real_sizes.long_plan([4.0, 0.0], target=10.0, gap=0.3) == [0, 0, 0]  # cycles, skips empty ones
    with pytest.raises(ValueError, match="no utterance"):
        real_sizes.long_plan([0.0])


def test_rates_and_sizes():
    assert real_sizes.per_audio_second(20.0, 40.0) == 0.5
    assert real_sizes.per_audio_second(None, 40.0) is None
    assert real_sizes.mb_per_hour(5_000_000, 0.01) == pytest.approx(500.0)


def test_table_shows_each_teachers_numbers_and_failures():
    step = {"ok": True, "seconds": 30.0, "peak_rss_mb": 2048.0, "returncode": 0, "cpu_seconds": 28.0,
            "command": "", "tail": ""}
    result = {"label": "L", "params": 114_000_000, "utterance_seconds": [3.0, 31.0], "audio_seconds": 40.0,
              "long_seconds": 120.0, "mb_per_hour_full": 1234.4, "mb_per_hour_band": 99.0, "student_steps": 3,
              "steps": {"restore": {**step, "seconds": 10.0, "cpu_seconds": 9.0}, "dump_full": step,
                        "dump_band": {**step, "seconds": 50.0}, "dump_long": {**step, "cpu_seconds": 69.0},
                        "verify_full": step, "verify_band": step, "train": {**step, "peak_rss_mb": 5120.0},
                        "export": step, "sherpa": {**step, "ok": False, "returncode": 1}}}
    rows = real_sizes.table_rows([result])
    assert rows[2] == ("| L | 114.0M | 3.0, 31.0 | 10.0 | 0.75 / 1.25 | 120 s: 0.50 / 2.0 | 2.0 / 2.0 / 2.0 / 5.0 "
                       "| 1,234 / 99 | ok | 3 ok | sherpa-onnx failed |")
    assert len(rows[0].split("|")) == len(rows[1].split("|")) == len(rows[2].split("|"))
    result["steps"]["dump_long"]["ok"] = False
    assert "| failed |" in real_sizes.table_rows([result])[2]


def test_long_lines_list_every_long_dump_and_the_encoder_alone():
    ok = {"ok": True, "returncode": 0, "command": "", "tail": ""}
    result = {"label": "L", "long_seconds": 126.0, "long": {"": 126.0, "410": 411.0}, "steps": {
        "restore": {**ok, "seconds": 20.0, "cpu_seconds": 12.0, "peak_rss_mb": 1600.0},
        "dump_long": {**ok, "seconds": 87.0, "cpu_seconds": 60.0, "peak_rss_mb": 2150.4},
        "dump_long410": {**ok, "seconds": 515.0, "cpu_seconds": 498.0, "peak_rss_mb": 7413.0},
        "encoder_long410": {**ok, "seconds": 220.0, "cpu_seconds": 215.0, "peak_rss_mb": 7300.0,
                            "tail": 'noise\n{"restore_peak_mb": 1632.0, "frames": 5139, "encoder_cpu_seconds": 202.0}'}}}
    assert real_sizes.long_lines([result]) == [
        ("- L, one 126 s utterance, full lattice (k = 8, batch 1): 87 s wall, 60 CPU s, 0.38 CPU s per audio s after "
        "the restore, peak RSS 2.1 GB"),
        ("- L, one 411 s utterance, full lattice (k = 8, batch 1): 515 s wall, 498 CPU s, 1.18 CPU s per audio s after "
        "the restore, peak RSS 7.2 GB; the teacher's encoder alone on it (T = 5139): 202 CPU s, peak RSS 7.1 GB")]
    del result["long"]  # results written before several lengths were measured
    assert len(real_sizes.long_lines([result])) == 1


def test_reading_compares_restore_memory_with_the_weights_and_rates_with_length():
    result = {"label": "L", "params": 2**28, "long": {"": 126.0, "410": 411.0}, "steps": {
        "restore": {"ok": True, "peak_rss_mb": 3072.0, "cpu_seconds": 10.0},
        "dump_long": {"ok": True, "cpu_seconds": 73.0, "peak_rss_mb": 2000.0},
        "dump_long410": {"ok": True, "cpu_seconds": 421.0, "peak_rss_mb": 7000.0}}}
    assert real_sizes.reading([result], baseline_mb=1024.0) == [
        ("- L: restoring peaks at 3.0 GB, 1.0 GB of it the imports alone; the rest is 2.0x its fp32 weights (1.0 GB: "
        "NeMo's `restore_from` builds the model, then loads the state dict beside it)."),
        ("- L: 0.50 CPU s per audio s at 126 s, 1.00 at 411 s: a full lattice has T x (U+1) nodes, both growing with "
        "the audio, and every node goes through the joint's V+1 outputs; with band 6 the store shrinks, not that forward.")]
