"""``kdstore eval`` of TDT models: NeMo's TDT greedy decoding of a hybrid TDT-CTC model (its TDT head), scored."""

from __future__ import annotations

import json

import pytest


def test_eval_scores_a_hybrid_tdt_model_with_nemos_tdt_decoding(emitting_tdt_model, tmp_path):
    import torch
    from click.testing import CliRunner

    from kdstore.cli.main import cli
    from kdstore.nemo.checkpoint import restore_model

    manifest = emitting_tdt_model.with_name("train.json")
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = restore_model(emitting_tdt_model)
        assert type(model).__name__ == "EncDecHybridRNNTCTCBPEModel" and model.joint.num_extra_outputs == 5
        nemo = [h.text for h in model.transcribe([r["audio_filepath"] for r in rows], batch_size=4, verbose=False)]
    finally:
        torch.set_num_threads(threads)

    out = tmp_path / "eval"
    args = ["eval", "--model", str(emitting_tdt_model), "--teacher", str(emitting_tdt_model), "--manifest",
            str(manifest), "--out", str(out), "--json", "--bootstrap-samples", "200", "--batch-size", "4"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    student = data["model"]
    hypotheses = [json.loads(line)["hypothesis"] for line in (out / "model.jsonl").read_text().splitlines()]
    assert hypotheses == nemo  # the TDT head decoded by NeMo's TDT greedy search, not the CTC head
    assert sum(h == r["text"] for h, r in zip(hypotheses, rows)) >= 8  # memorised
    errors = student["substitutions"] + student["deletions"] + student["insertions"]
    assert student["utterances"] == 10 and student["wer"] == pytest.approx(errors / student["ref_words"])
    assert student["wer"] < 0.1 and data["teacher"]["wer"] == student["wer"]
