"""The demo report's headline: retention, parameters, speed and the sherpa-onnx int8 WER, from the rows."""

from __future__ import annotations

import pytest

from kdstore.demo.report import HEADLINE, TEACHER, TWIN, ModelRow, format_table, headline, retention


def rows(student_wer: float, twin_wer: float) -> list[ModelRow]:
    return [ModelRow(TEACHER, 0.10, 0.05, 4_466_722, None, 4000, None, rtf=0.012),
            ModelRow(HEADLINE, student_wer, 0.08, 2_966_000, 300.0, 1200, None, rtf=0.006),
            ModelRow(TWIN, twin_wer, 0.09, 2_966_000, 290.0, 1200, None, rtf=0.006)]


def test_retention_is_the_share_of_word_accuracy_kept():
    assert retention(0.19, 0.10) == pytest.approx(0.9)
    assert retention(0.10, 0.10) == pytest.approx(1.0)
    assert retention(0.0, 0.10) > 1.0  # a student may beat its teacher


def test_headline_leads_with_retention_params_speed_and_int8():
    text = headline(rows(0.19, 0.25), {"wer": 0.195, "rtf": 0.003})
    assert text.startswith("**The headline student keeps 90.0% of the teacher's word accuracy**")
    assert "66% of its parameters (2.97M vs 4.47M)" in text
    assert "decodes 2.0x as fast" in text
    assert "sherpa-onnx at int8" in text and "19.50% WER" in text
    assert "KD helps: 6.00 WER points lower with KD" in text
    assert "KD did not help here" in headline(rows(0.30, 0.25), None)


def test_table_has_retention_per_student():
    table = format_table(rows(0.19, 0.28), store_bytes=2_000_000)
    student_line = next(line for line in table.splitlines() if line.startswith(f"| {HEADLINE} "))
    assert "| 90.0% |" in student_line
    assert "| 80.0% |" in next(line for line in table.splitlines() if line.startswith(f"| {TWIN} "))
    assert "2.00 MB" in table


@pytest.mark.parametrize("learned", [True, False])
def test_report_says_what_the_teacher_labelled_and_whether_the_students_learn_from_it(tmp_path, learned):
    from types import SimpleNamespace

    from kdstore.demo.report import write_report

    scores = {r.name: {"wer": r.wer, "cer": r.cer, "params": r.params, "rtf": r.rtf} for r in rows(0.19, 0.25)}
    corpus = SimpleNamespace(utterances={"train": 10}, hours={"train": 0.01})
    labelled = {"counts": {"hours": 0.25}, "teacher_labelled": 418, "table": "| bucket table |",
                "report": "label-quality.md", "learned_from": learned}
    onnx = {"onnx_dir": "onnx", "samples": [], "sherpa_int8": {"wer": 0.2, "cer": 0.1, "rtf": 0.01}}
    text = write_report(tmp_path, "plan", corpus, scores, {}, {}, onnx, 1000, True, labelled=labelled).read_text()
    assert "## Untranscribed audio" in text and "0.25 h" in text and "418 utterances" in text and "| bucket table |" in text
    assert ("Both students learn from it" in text) == learned
    assert ("The students do not learn from it" in text) == (not learned)


def test_tdt_report_compares_kd_with_its_twin_and_says_how_sherpa_onnx_ran(tmp_path):
    from types import SimpleNamespace

    from kdstore.demo.report import write_tdt_report
    from kdstore.demo.tdt import RNNT_KD, TDT_KD, TDT_TEACHER, TDT_TWIN

    def summary(wer: float) -> dict:
        return {"wer": wer, "cer": wer / 2, "params": 2_966_000}

    scores = {TDT_TEACHER: summary(0.08), TDT_KD: summary(0.15), TDT_TWIN: summary(0.17), RNNT_KD: summary(0.18)}
    sherpa = {"wer": 0.151, "cer": 0.07, "utterances": 159, "same_as_nemo": 149, "non_empty": 159, "rtf": 0.01}
    onnx = {"onnx_dir": "onnx-tdt", "sherpa_fp32": sherpa, "sherpa_int8": {**sherpa, "same_as_nemo": 140}}
    text = write_tdt_report(tmp_path, SimpleNamespace(duration_weight=0.5), scores, {}, onnx).read_text()
    assert "**The TDT student keeps 92.4% of the TDT teacher's word accuracy**" in text
    assert "its no-KD twin 17.00% (-2.00 points with KD on tokens and durations, duration weight 0.5)" in text
    assert "NeMo's transcript on 149 of 159 test utterances in fp32 and 140 in int8" in text
    assert "the model's mel range" in text and (tmp_path / "tdt.png").is_file()
    assert all(f"| {name} |" in text for name in scores)
