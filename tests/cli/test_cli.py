"""CLI surface: every verb listed, every --help works without importing NeMo or torch, errors are one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kdstore.cli.main import COMMANDS, cli

VERBS = ["prepare-demo", "prepare-librispeech", "dump-teacher", "label-quality", "inspect", "convert", "train-student", "eval",
         "export-onnx", "transcribe", "demo"]


def test_top_level_help_lists_every_verb():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for verb in VERBS:
        assert verb in result.output
    assert set(COMMANDS) == set(VERBS)


def test_every_verb_help_works_without_importing_nemo_or_torch():
    code = (
        "import sys, json\n"
        "from click.testing import CliRunner\n"
        "from kdstore.cli.main import cli\n"
        f"verbs = {VERBS!r}\n"
        "codes = {v: CliRunner().invoke(cli, [v, '--help']).exit_code for v in verbs}\n"
        "heavy = sorted(m for m in ('nemo', 'torch', 'lightning') if m in sys.modules)\n"
        "print(json.dumps({'codes': codes, 'heavy': heavy}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(code == 0 for code in info["codes"].values()), info
    assert info["heavy"] == []


def test_each_help_has_an_example():
    runner = CliRunner()
    for verb in VERBS:
        assert "Example" in runner.invoke(cli, [verb, "--help"]).output, verb


def test_user_errors_are_one_line_without_traceback(tmp_path):
    missing = tmp_path / "nope.zarr"
    result = CliRunner().invoke(cli, ["inspect", str(missing)])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert "no kdstore store" in result.output
    result = CliRunner().invoke(cli, ["train-student", "--config", "no-such-config", "run.output=x.nemo"])
    assert result.exit_code != 0 and "known names" in result.output


def test_required_paths_are_options_and_section_7_positionals_still_work(tmp_path):
    """One convention (docs/decisions.md, CLI): --NAME for every required path; inspect S.zarr etc. kept."""
    missing = str(tmp_path / "nope.zarr")
    runner = CliRunner()
    for args in (["inspect", "--store", missing], ["inspect", missing], ["inspect", missing, "--store", missing]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 1 and "no kdstore store" in result.output, (args, result.output)
    result = runner.invoke(cli, ["inspect", missing, "--store", str(tmp_path / "other.zarr")])
    assert result.exit_code == 2 and "given twice" in result.output
    result = runner.invoke(cli, ["inspect"])
    assert result.exit_code == 2 and "Missing option '--store'" in result.output
    result = runner.invoke(cli, ["dump-teacher", "--out", missing])
    assert result.exit_code == 2 and "Missing option '--teacher'" in result.output
    for verb in ("prepare-demo", "convert", "inspect", "dump-teacher", "eval"):
        assert "--out" in runner.invoke(cli, [verb, "--help"]).output or verb == "inspect"


def test_unknown_override_key_fails_loudly():
    result = CliRunner().invoke(cli, ["train-student", "--config", "tiny", "model.encoder.n_layerz=2"])
    assert result.exit_code != 0
    assert "n_layerz" in result.output and "+model.encoder.n_layerz" in result.output


@pytest.mark.slow
def test_dump_inspect_train_eval_through_the_cli(demo_corpus, tmp_path):
    """The verbs chained as a user would type them, on a tiny teacher built on the spot."""
    from tests.models import build_model

    teacher = tmp_path / "teacher.nemo"
    build_model("tiny", demo_corpus.tokenizer_dir, seed=3).save_to(str(teacher))
    manifest = tmp_path / "m.json"
    manifest.write_text("\n".join(Path(demo_corpus.train_manifest).read_text().splitlines()[:4]) + "\n")
    runner = CliRunner()
    store = tmp_path / "t.zarr"
    result = runner.invoke(cli, ["dump-teacher", "--teacher", str(teacher), "--manifest", str(manifest),
                                 "--out", str(store), "--top-k", "4", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "4 utterances" in result.output
    result = runner.invoke(cli, ["inspect", str(store), "--verify", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["utterances"] == 4 and summary["verified"] is True and 0 < summary["mean_topk_mass"] <= 1
    # a second dump to the same path must not silently replace it
    result = runner.invoke(cli, ["dump-teacher", "--teacher", str(teacher), "--manifest", str(manifest),
                                 "--out", str(store), "--no-progress"])
    assert result.exit_code != 0 and "overwrite" in result.output
    student = tmp_path / "student.nemo"
    result = runner.invoke(cli, ["train-student", "--config", "tiny", "--store", str(store), "--no-progress",
                                 f"model.train_ds.manifest_filepath={manifest}", f"run.output={student}",
                                 "trainer.max_steps=2", "model.train_ds.batch_size=2", "trainer.accelerator=cpu"])
    assert result.exit_code == 0, result.output
    assert student.is_file()
    result = runner.invoke(cli, ["eval", "--model", str(student), "--teacher", str(teacher), "--manifest",
                                 str(manifest), "--out", str(tmp_path / "eval"), "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output[result.output.index("{"):])
    assert set(scores) == {"model", "teacher"} and scores["model"]["utterances"] == 4
    lines = (tmp_path / "eval" / "model.jsonl").read_text().splitlines()
    assert len(lines) == 4 and {"key", "reference", "hypothesis", "wer"} <= set(json.loads(lines[0]))
