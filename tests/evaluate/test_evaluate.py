"""Scoring (against jiwer and NIST sclite), text normalisers, the paired bootstrap and `kdstore eval`."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from kdstore.errors import ConfigError
from kdstore.evaluate.normalize import APOSTROPHES, get_normalizer, normalize_basic, normalize_none, normalize_whisper
from kdstore.evaluate.scoring import Errors, bootstrap_interval, paired_bootstrap, score, word_errors, write_trn

# A fixed set with every error type, an empty hypothesis, case and punctuation to normalise away.
REFS = [
    "the cat sat on the mat",
    "turn on the lights in the bathroom",
    "Hello, world!",
    "set a timer for twenty six seconds",
    "a b c d",
    "unlock the back door",
    "what is the weather in paris tonight",
    "skip to track eight",
]
HYPS = [
    "the cat sat on mat",
    "turn the volume down in the hallway",
    "",
    "set a timer for twenty six second please",
    "a x c d e",
    "unlock the back door",
    "what's the weather in paris",
    "skip to to track ten",
]


# --- normalisers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "basic", "whisper"),
    [
        ("Hello, World!  It's fine.", "hello world it's fine", "hello world its fine"),
        ("Mr. Smith won't pay 1,000 dollars (laughs) um", "mr smith won't pay 1000 dollars laughs um",
         "mister smith will not pay 1000 dollars"),
        ("set a timer for twenty six seconds", "set a timer for twenty six seconds", "set a timer for 26 seconds"),
        ("enter pin four two eight five", "enter pin four two eight five", "enter pin 4 2 8 5"),
        ("One hundred and five, fifty percent", "one hundred and five fifty percent", "105 50%"),
        ("The colour of the Theatre is grey", "the colour of the theatre is grey", "the color of the theater is gray"),
        ("Café naïve 3.5 kg", "café naïve 3.5 kg", "cafe naive 3.5 kg"),
        ("I'm gonna go [noise]", "i'm gonna go noise", "i am going to go"),
    ],
)
def test_normalizers(text, basic, whisper):
    assert normalize_basic(text) == basic
    assert normalize_whisper(text) == whisper
    assert normalize_none(f"  {text} ") == text.strip().replace("  ", " ")


@pytest.mark.parametrize("mark", list(APOSTROPHES) + ["\uff07"])  # and the full-width one NFKC maps
def test_every_apostrophe_mark_scores_as_the_ascii_one(mark):
    """Issue 14 fault 4: ``o’clock`` (U+2019) against ``o'clock`` scored 28.6% WER under ``basic``."""
    ref, hyp = f"wake me up at two o{mark}clock don{mark}t you", "wake me up at two o'clock don't you"
    assert normalize_basic(ref) == normalize_basic(hyp) == "wake me up at two o'clock don't you"
    assert normalize_whisper(ref) == normalize_whisper(hyp)
    assert score([ref], [hyp], "basic").wer == 0.0
    assert score([ref], [hyp], "whisper").wer == 0.0
    assert normalize_basic(f"{mark}quoted{mark} words") == "quoted words"  # as quotation marks they go


def test_unknown_normalizer_is_a_config_error():
    assert get_normalizer("basic") is normalize_basic
    with pytest.raises(ConfigError, match="basic, whisper, none"):
        get_normalizer("english")


# --- scores ---------------------------------------------------------------------------------------


def test_score_matches_jiwer():
    import jiwer

    result = score(REFS, HYPS, "basic")
    refs, hyps = [normalize_basic(r) for r in REFS], [normalize_basic(h) for h in HYPS]
    out = jiwer.process_words(refs, hyps)
    assert result.wer == pytest.approx(jiwer.wer(refs, hyps), abs=1e-12)
    assert result.cer == pytest.approx(jiwer.cer(refs, hyps), abs=1e-12)
    t = result.total
    assert (t.hits, t.substitutions, t.deletions, t.insertions) == (out.hits, out.substitutions, out.deletions,
                                                                    out.insertions)
    per_utt = [jiwer.wer(r, h) for r, h in zip(refs, hyps)]
    assert [u.wer for u in result.utterances] == pytest.approx(per_utt)
    assert result.references[2] == "hello world" and result.hypotheses[2] == ""


def test_normalizer_changes_the_score():
    assert score(["Hello, World"], ["hello world"], "none").wer == 1.0
    assert score(["Hello, World"], ["hello world"], "basic").wer == 0.0
    assert score(["twenty six"], ["26"], "basic").wer == 1.0
    assert score(["twenty six"], ["26"], "whisper").wer == 0.0


def test_errors_arithmetic_and_empty_reference():
    assert word_errors(["", "a"], ["x y", ""]) == [Errors(insertions=2), Errors(deletions=1)]
    assert Errors(insertions=2).wer == 1.0 and Errors().wer == 0.0
    total = Errors(hits=2, substitutions=1) + Errors(deletions=1, insertions=3)
    assert (total.ref_words, total.errors, total.wer) == (4, 5, 1.25)


def _sclite_binary() -> list[str] | None:
    if shutil.which("sclite"):
        return ["sclite"]
    if shutil.which("sctk"):
        return ["sctk", "sclite"]
    return None


def test_score_matches_nist_sclite(tmp_path):
    binary = _sclite_binary()
    if binary is None:
        pytest.skip("NIST sclite not installed (Debian package sctk: apt-get install -y sctk)")
    result = score(REFS, HYPS, "basic")
    keys = [f"u{i}" for i in range(len(REFS))]
    write_trn(tmp_path / "ref.trn", keys, result.references)
    write_trn(tmp_path / "hyp.trn", keys, result.hypotheses)
    proc = subprocess.run([*binary, "-r", str(tmp_path / "ref.trn"), "trn", "-h", str(tmp_path / "hyp.trn"), "trn",
                           "-i", "spu_id", "-o", "sum", "pralign", "stdout"],
                          capture_output=True, text=True, check=True, timeout=60)
    counts = [tuple(map(int, m)) for m in re.findall(r"Scores: \(#C #S #D #I\) (\d+) (\d+) (\d+) (\d+)", proc.stdout)]
    assert len(counts) == len(REFS), proc.stdout[-2000:]
    # Same errors per utterance (so the same WER); the S/D/I split may differ where alignments tie in
    # edit count: sclite weighs sub 4, ins/del 3 and prefers an extra matched word, e.g. "turn on the
    # lights" vs "turn the volume down": jiwer 4 S, sclite 2 S + 1 D + 1 I. Both are minimal edits.
    assert [s + d + i for _, s, d, i in counts] == [u.errors for u in result.utterances]
    assert [c + s + d for c, s, d, _ in counts] == [u.ref_words for u in result.utterances]
    t = result.total
    summary = re.search(r"Sum/Avg\s*\|\s*(\d+)\s+(\d+)\s*\|\s*([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)",
                        proc.stdout)
    assert summary, proc.stdout[-2000:]
    words, err_pct = int(summary.group(2)), float(summary.group(7))
    assert words == t.ref_words
    assert err_pct == pytest.approx(100 * result.wer, abs=0.05)  # sclite prints one decimal


# --- bootstrap ------------------------------------------------------------------------------------


def _reference_paired_bootstrap(a, b, n, samples, seed):
    """The definition, one resample at a time (same random draws as the vectorised version)."""
    rng = np.random.default_rng(seed)
    a, b, n = map(np.asarray, (a, b, n))
    diffs = []
    for _ in range(samples):
        idx = rng.integers(0, len(n), size=len(n))
        diffs.append((a[idx].sum() - b[idx].sum()) / n[idx].sum())
    return np.quantile(diffs, [0.025, 0.975])


def test_paired_bootstrap_is_seeded_and_matches_its_definition():
    rng = np.random.default_rng(1)
    n = rng.integers(3, 12, size=60)
    a, b = rng.binomial(n, 0.30), rng.binomial(n, 0.20)
    boot = paired_bootstrap(a, b, n, samples=700, seed=7)  # 700: crosses the 500-resample chunk boundary
    assert boot == paired_bootstrap(a, b, n, samples=700, seed=7)
    assert boot != paired_bootstrap(a, b, n, samples=700, seed=8)
    low, high = _reference_paired_bootstrap(a, b, n, 700, 7)
    assert (boot.low, boot.high) == pytest.approx((low, high), abs=1e-12)
    assert boot.difference == pytest.approx((a.sum() - b.sum()) / n.sum())
    assert boot.low < boot.difference < boot.high


def test_paired_bootstrap_edge_cases():
    n = np.full(40, 5)
    same = paired_bootstrap(n // 5, n // 5, n, samples=200)
    assert (same.difference, same.low, same.high, same.p_a_better) == (0.0, 0.0, 0.0, 0.0)
    worse = paired_bootstrap(np.full(40, 3), np.full(40, 1), n, samples=200)
    assert worse.low == worse.high == worse.difference == pytest.approx(0.4) and worse.p_a_better == 0.0
    better = paired_bootstrap(np.r_[np.zeros(30), np.ones(10)], np.ones(40), n, samples=500)
    assert better.high < 0 and better.p_a_better == 1.0
    with pytest.raises(ConfigError):
        paired_bootstrap([], [], [])


def test_bootstrap_agrees_with_kaldialign():
    kaldialign = pytest.importorskip("kaldialign")
    rng = np.random.default_rng(3)
    words = ["alpha", "beta", "gamma", "delta", "echo", "foxtrot"]
    refs, hyp_a, hyp_b = [], [], []
    for _ in range(150):
        ref = list(rng.choice(words, size=int(rng.integers(4, 10))))
        refs.append(ref)
        hyp_a.append([w if rng.random() > 0.15 else "zulu" for w in ref])
        hyp_b.append([w if rng.random() > 0.25 else "zulu" for w in ref])
    ref_text = [" ".join(r) for r in refs]
    errs_a = [e.errors for e in word_errors(ref_text, [" ".join(h) for h in hyp_a])]
    errs_b = [e.errors for e in word_errors(ref_text, [" ".join(h) for h in hyp_b])]
    n = [len(r) for r in refs]
    theirs = kaldialign.bootstrap_wer_ci(refs, hyp_b, hyp_a, replications=4000, seed=0)
    low, high = bootstrap_interval(errs_a, n, samples=4000)
    assert low == pytest.approx(theirs["system2"]["ci95min"], abs=0.006)
    assert high == pytest.approx(theirs["system2"]["ci95max"], abs=0.006)
    boot = paired_bootstrap(errs_a, errs_b, n, samples=4000)
    assert boot.p_a_better == pytest.approx(theirs["p_s2_improv_over_s1"], abs=0.02)
    assert boot.high < 0  # a is clearly better


# --- kdstore eval ---------------------------------------------------------------------------------


def _result(hypotheses: list[str], model: str):
    from kdstore.evaluate.transcribe import EvalResult

    scored = score(REFS, hypotheses, "basic")
    return EvalResult(model=model, manifest="m.json", utterances=len(REFS), normalizer="basic", wer=scored.wer,
                      cer=scored.cer, substitutions=scored.total.substitutions, deletions=scored.total.deletions,
                      insertions=scored.total.insertions, ref_words=scored.total.ref_words, params=1000,
                      audio_seconds=10.0, decode_seconds=1.0, rtf=0.1, seconds=2.0, hypotheses=list(hypotheses),
                      references=list(REFS), keys=[f"u{i}" for i in range(len(REFS))], scored=scored)


def test_report_renders_markdown_and_the_terminal_from_one_source(tmp_path):
    from kdstore.evaluate.compare import compare
    from kdstore.evaluate.report import comparison_lines, console_summary, write_report

    results = {"model": _result(HYPS, "student.nemo"), "teacher": _result(REFS, "teacher.nemo")}
    comparison = compare(results["model"], results["teacher"], samples=200)
    assert comparison.accuracy_retention == pytest.approx(1 - results["model"].wer)
    markdown = comparison_lines(comparison)
    assert "**" in markdown[0] and "**" in markdown[1]
    terminal = console_summary(results, comparison)
    assert "**" not in terminal and "Accuracy retention" in terminal and "`student.nemo`" in terminal
    assert [line.replace("**", "") for line in markdown] == terminal.splitlines()[-len(markdown):]
    report = write_report(results, comparison, tmp_path).read_text()
    assert all(line in report for line in markdown)
    with pytest.raises(ConfigError, match="different utterances"):
        compare(results["model"], dataclasses.replace(results["teacher"], keys=["other"] * len(REFS)))



def test_eval_help():
    from click.testing import CliRunner

    from kdstore.cli.main import cli

    result = CliRunner().invoke(cli, ["eval", "--help"])
    assert result.exit_code == 0 and "kdstore eval --model" in result.output and "--normalizer" in result.output


def test_cli_eval_with_teacher_writes_report(emitting_model, emitting_manifest, tmp_path):
    from click.testing import CliRunner

    from kdstore.cli.main import cli

    out = tmp_path / "eval"
    args = ["eval", "--model", str(emitting_model), "--teacher", str(emitting_model), "--manifest",
            str(emitting_manifest), "--out", str(out), "--json", "--bootstrap-samples", "200"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"model", "teacher"}
    student, teacher, comparison = data["model"], data["teacher"], data["model"]["vs_teacher"]
    assert student["utterances"] == 10 and student["normalizer"] == "basic" and student["params"] > 0
    assert student["rtf"] > 0 and student["audio_seconds"] > 0
    errors = student["substitutions"] + student["deletions"] + student["insertions"]
    assert student["wer"] == pytest.approx(errors / student["ref_words"])
    assert comparison["bootstrap"]["difference"] == 0.0 and comparison["accuracy_retention"] == 1.0
    assert teacher["wer"] == student["wer"]
    for name in ("report.md", "eval.png", "model.jsonl", "teacher.jsonl", "ref.trn", "model.trn"):
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "model.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and set(rows[0]["errors"]) == {"hits", "substitutions", "deletions", "insertions",
                                                          "ref_words"}
    report = (out / "report.md").read_text()
    assert "Accuracy retention" in report and "95% CI" in report and "| sub | del | ins |" in report
