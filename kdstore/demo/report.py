"""The demo's report: a table people read (report.md) and a picture they look at (report.png)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TEACHER, HEADLINE, TWIN = "teacher", "student (KD)", "student (no KD)"


@dataclass(frozen=True)
class ModelRow:
    name: str
    wer: float
    cer: float
    params: int
    train_seconds: float | None
    steps: int | None
    curve_csv: Path | None
    rtf: float | None = None  # NeMo greedy decoding: seconds of compute per second of audio


def retention(student_wer: float, teacher_wer: float) -> float:
    """Share of the teacher's word accuracy the student keeps: (1 - WER_student) / (1 - WER_teacher)."""
    return (1.0 - student_wer) / max(1.0 - teacher_wer, 1e-9)


def headline(rows: list[ModelRow], sherpa_int8: dict[str, Any] | None) -> str:
    """The report's first paragraph: the headline student against the teacher (retention, parameters,
    decoding speed, the sherpa-onnx int8 WER) and against its no-KD twin."""
    by_name = {r.name: r for r in rows}
    teacher, student, twin = by_name[TEACHER], by_name[HEADLINE], by_name.get(TWIN)
    text = (f"**The headline student keeps {100 * retention(student.wer, teacher.wer):.1f}% of the teacher's word "
            f"accuracy** (WER {100 * student.wer:.2f}% vs {100 * teacher.wer:.2f}%) with "
            f"{100 * student.params / teacher.params:.0f}% of its parameters ({student.params / 1e6:.2f}M vs "
            f"{teacher.params / 1e6:.2f}M)")
    if student.rtf and teacher.rtf:
        text += (f", and decodes {teacher.rtf / student.rtf:.1f}x as fast (NeMo greedy on this CPU, RTF "
                 f"{student.rtf:.4f} vs {teacher.rtf:.4f})")
    text += "."
    if sherpa_int8:
        text += (f" Through sherpa-onnx at int8, what an on-device user ships, it scores {100 * sherpa_int8['wer']:.2f}% "
                 f"WER (RTF {sherpa_int8['rtf']:.4f}).")
    if twin is not None:
        better = student.wer < twin.wer
        verdict = "KD helps" if better else "KD did not help here"
        text += (f" Its no-KD twin (same teacher initialisation, data, steps and seed) scores {100 * twin.wer:.2f}% "
                 f"({verdict}: {100 * abs(twin.wer - student.wer):.2f} WER points {'lower' if better else 'higher'} "
                 "with KD).")
    return text


def format_table(rows: list[ModelRow], store_bytes: int | None) -> str:
    teacher = next((r for r in rows if r.name == TEACHER), None)
    lines = ["| model | WER % | CER % | retention | params | RTF | train time | steps |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        train = f"{r.train_seconds / 60:.1f} min" if r.train_seconds else "-"
        kept = f"{100 * retention(r.wer, teacher.wer):.1f}%" if teacher is not None and r is not teacher else "-"
        lines.append(f"| {r.name} | {100 * r.wer:.2f} | {100 * r.cer:.2f} | {kept} | {r.params / 1e6:.2f}M | "
                     f"{r.rtf if r.rtf is not None else '-'} | {train} | {r.steps if r.steps is not None else '-'} |")
    if store_bytes is not None:
        lines.append("")
        lines.append(f"Teacher store on disk: {store_bytes / 1e6:.2f} MB")
    return "\n".join(lines)


def _read_curve(path: Path) -> dict[str, list[float]]:
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            if value not in ("", None):
                columns.setdefault(key, []).append(float(value))
    return columns


def _smooth(values: list[float], window: int = 25) -> list[float]:
    """Trailing moving average, so the trend shows through batch-to-batch noise."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_report(rows: list[ModelRow], out_png: Path) -> Path:
    """Left: WER/CER bars per model. Right: training loss (RNN-T part) per step for each trained model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, curves) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = [r.name for r in rows]
    x = range(len(rows))
    for offset, metric, hatch in ((-0.2, "wer", None), (0.2, "cer", "//")):
        values = [100 * getattr(r, metric) for r in rows]
        drawn = bars.bar([i + offset for i in x], values, width=0.4, label=metric.upper(), hatch=hatch,
                         color="#bbbbbb" if hatch else "#555555")
        bars.bar_label(drawn, fmt="%.1f", fontsize=8)
    bars.set_xticks(list(x), names, rotation=10)
    bars.set_ylabel("% on the test split (unseen voices)")
    bars.set_title("Accuracy")
    bars.legend()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(rows):
        if r.curve_csv and Path(r.curve_csv).is_file():
            data = _read_curve(Path(r.curve_csv))
            color = colors[i % len(colors)]
            for column, style, what in (("train_rnnt_loss", "-", "RNN-T loss"), ("train_kd_loss", "--", "KD term (KL)")):
                if column in data and "step" in data:
                    curves.plot(data["step"], data[column], color=color, linewidth=0.5, alpha=0.25)
                    curves.plot(data["step"], _smooth(data[column]), color=color, linewidth=1.4, linestyle=style,
                                label=f"{r.name}: {what}")
    curves.set_yscale("log")
    curves.set_xlabel("step")
    curves.set_title("Training curves (faint: per step; bold: moving average of 25)")
    curves.legend(fontsize=8)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def write_report(work: Path, plan_line: str, corpus: Any, scores: dict[str, dict[str, Any]],
                 curves: dict[str, str], trained: dict[str, tuple[float | None, int | None]],
                 onnx_info: dict[str, Any], store_bytes: int, committed_teacher: bool,
                 labelled: dict[str, Any] | None = None) -> Path:
    """``work``/report.md (headline, scores table, plot, ONNX transcripts) and report.png; returns report.md."""
    rows = [ModelRow(name, s["wer"], s["cer"], s["params"], *trained.get(name, (None, None)),
                     Path(curves[name]) if name in curves else None, s.get("rtf")) for name, s in scores.items()]
    table = format_table(rows, store_bytes)
    int8 = onnx_info.get("sherpa_int8")
    shipped = [ModelRow("student (KD):\nsherpa-onnx int8", int8["wer"], int8["cer"], rows[1].params, None, None, None)] \
        if int8 and len(rows) > 1 else []
    plot_report(rows + shipped, work / "report.png")
    samples = "\n".join(f"- `{Path(s['audio']).name}`: ref \"{s['reference']}\" -> sherpa-onnx int8 \"{s['onnx']}\""
                        for s in onnx_info["samples"])
    teacher_note = ("The teacher is the committed demo teacher (kdstore/assets/demo_teacher/README.md: how it was "
                    "trained, its scores)." if committed_teacher else
                    "The teacher here was trained from scratch on this CPU within the demo budget and is weak; KD can "
                    "only pass on what the teacher knows.")
    untranscribed = ""
    if labelled:
        hours = labelled["counts"]["hours"]
        learned = labelled.get("learned_from", True)
        untranscribed = (
            f"## Untranscribed audio\n\nThe teacher labelled {hours:.2f} h of untranscribed audio "
            f"({labelled['teacher_labelled']} utterances in voices of no other split, the training voices at unheard "
            "pitch shifts; text withheld) while dumping it (`dump-teacher` over a manifest without text). "
            + ("Both students learn from it beside the transcribed audio. " if learned else
               "The students do not learn from it: in the 3-seed study it did not help them at this budget "
               "(docs/results.md, section 0c). ")
            + f"Its labels, scored against the withheld text (`kdstore label-quality`, {labelled['report']}):"
            f"\n\n{labelled['table']}\n\n")
    report = work / "report.md"
    report.write_text(
        "# kdstore demo report\n\n"
        f"{headline(rows, onnx_info.get('sherpa_int8'))}\n\n"
        f"{table}\n\n![WER and training curves](report.png)\n\n{untranscribed}"
        f"Corpus: synthetic voice commands, {dict(corpus.utterances)} utterances ({dict(corpus.hours)} h); test "
        f"voices unseen in training. {teacher_note} Retention = (1 - WER_student) / (1 - WER_teacher); RTF = "
        "decoding seconds per audio second (NeMo greedy, model loading excluded).\n"
        f"{plan_line}\n\n"
        f"ONNX export: `{onnx_info['onnx_dir']}` (sherpa-onnx layout, int8 copies); first transcripts:\n\n{samples}\n"
    )
    return report


STREAMING_KD, STREAMING_TWIN = "streaming student (KD)", "streaming student (no KD)"


def write_streaming_report(work: Path, plan: Any, offline: dict[str, dict[str, Any]],
                           streaming: dict[str, dict[str, Any]], trained: dict[str, Any],
                           onnx: dict[str, Any], quick: bool = False) -> Path:
    """``work/streaming-report.md`` and ``work/streaming.png``: the streaming students (NeMo cache-aware decode,
    WER and word latency) beside the offline teacher and student (offline decode), and the sherpa-onnx
    ``OnlineRecognizer`` scores of the KD one (agreement with NeMo's streaming transcripts, int8 vs fp32).

    ``offline``/``streaming``: eval summaries by row name; ``trained``: the students step's result; ``onnx``:
    the export step's result. Returns the Markdown path.
    """
    teacher = offline[TEACHER]
    kd, twin = streaming[STREAMING_KD], streaming[STREAMING_TWIN]
    info = kd["streaming"]
    lines = ["# kdstore demo: a streaming student from the offline teacher", "",
             *(["**`--quick`: a smoke run (0.1 h of audio, 150 steps); its numbers mean nothing.**", ""] if quick else []),
             (f"**The streaming student keeps {100 * retention(kd['wer'], teacher['wer']):.1f}% of the offline teacher's "
              f"word accuracy** (WER {100 * kd['wer']:.2f}% streamed in {info['chunk_ms']:.0f} ms chunks, "
              f"{info['lookahead_ms']:.0f} ms look-ahead, vs {100 * teacher['wer']:.2f}% offline); its no-KD twin "
              f"{100 * twin['wer']:.2f}% ({100 * (kd['wer'] - twin['wer']):+.2f} points with KD, teacher targets "
              f"delayed {plan.delay_frames} frames = {80 * plan.delay_frames} ms)."), "",
             "| model | decode | params | test WER % | CER % | retention | word latency median / p90 ms |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, row in offline.items():
        lines.append(f"| {name} | offline | {row['params'] / 1e6:.2f}M | {100 * row['wer']:.2f} | "
                     f"{100 * row['cer']:.2f} | {100 * retention(row['wer'], teacher['wer']):.1f}% | - |")
    for name, row in streaming.items():
        s = row["streaming"]
        latency = "-" if s.get("latency_median_ms") is None else \
            f"{s['latency_median_ms']:.0f} / {s['latency_p90_ms']:.0f} ({s['latency_words']} of {s['ref_words']} words)"
        lines.append(f"| {name} | NeMo cache-aware, {s['chunk_ms']:.0f} ms chunks | {row['params'] / 1e6:.2f}M | "
                     f"{100 * row['wer']:.2f} | {100 * row['cer']:.2f} | "
                     f"{100 * retention(row['wer'], teacher['wer']):.1f}% | {latency} |")
    for variant in ("fp32", "int8"):
        r = onnx[f"sherpa_online_{variant}"]
        lines.append(f"| {STREAMING_KD} | sherpa-onnx OnlineRecognizer {variant} | - | {100 * r['wer']:.2f} | "
                     f"{100 * r['cer']:.2f} | {100 * retention(r['wer'], teacher['wer']):.1f}% | - |")
    fp32, int8 = onnx["sherpa_online_fp32"], onnx["sherpa_online_int8"]
    raw = onnx.get("sherpa_online_fp32_raw")
    lines += ["", (f"sherpa-onnx's OnlineRecognizer (fed 0.1 s at a time on NeMo's chunk grid, `kdstore transcribe "
                   f"--streaming`) gives NeMo's own streaming transcript of the same stream (the utterance and the "
                   f"silence that fills its last chunk: `kdstore eval --streaming --complete-last-chunk`; the NeMo rows "
                   f"above end with a shorter last chunk) on "
                   f"{fp32['same_as_nemo_streaming']} of {fp32['utterances']} test utterances in fp32 and "
                   f"{int8['same_as_nemo_streaming']} in int8 ({fp32['non_empty']} of sherpa-onnx's fp32 transcripts non-empty); int8 WER "
                   f"{100 * int8['wer']:.2f}% vs fp32 {100 * fp32['wer']:.2f}%; RTF int8 {int8['rtf']:.4f}"
                   + (f". Fed the raw audio, as an app that does not send the 160 ms of silence first (the stream's first "
                      f"160 ms are then masked): {raw['same_as_nemo_streaming']} "
                      f"of {raw['utterances']} equal, WER {100 * raw['wer']:.2f}%" if raw else "")
                   + f". Export: {onnx['onnx_dir']}."), "",
              ("Latency: for each word both the streamed transcript and the offline teacher got right, the time its "
               "last token was emitted (the end of the audio its chunk needed) minus the word's end in the offline "
               "teacher's timestamps (`kdstore eval --streaming --latency-reference`)."), "",
              "![streaming](streaming.png)"]
    path = work / "streaming-report.md"
    path.write_text("\n".join(lines) + "\n")
    _streaming_plot(work / "streaming.png", offline, streaming, onnx)
    return path


def _streaming_plot(path: Path, offline: dict[str, dict[str, Any]], streaming: dict[str, dict[str, Any]],
                    onnx: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [*offline, *streaming, "sherpa online int8"]
    wers = [100 * r["wer"] for r in (*offline.values(), *streaming.values())] + [100 * onnx["sherpa_online_int8"]["wer"]]
    colours = ["#8c8c8c"] * len(offline) + ["#4c72b0", "#c44e52"][: len(streaming)] + ["#55a868"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    left.bar(range(len(names)), wers, color=colours)
    left.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    left.set_ylabel("test WER % (unseen voices)")
    left.set_title("offline (grey) vs streaming")
    medians = [(n, r["streaming"].get("latency_median_ms"), r["streaming"].get("latency_p90_ms"))
               for n, r in streaming.items()]
    shown = [(n, m, p) for n, m, p in medians if m is not None]
    right.bar([i - 0.2 for i in range(len(shown))], [m for _, m, _ in shown], width=0.4, label="median")
    right.bar([i + 0.2 for i in range(len(shown))], [p for _, _, p in shown], width=0.4, label="p90")
    right.set_xticks(range(len(shown)), [n for n, _, _ in shown], fontsize=8)
    right.set_ylabel("word latency, ms")
    right.legend()
    right.set_title("emission after the word's end")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_tdt_report(work: Path, plan: Any, scores: dict[str, dict[str, Any]], trained: dict[str, Any],
                     onnx: dict[str, Any], quick: bool = False) -> Path:
    """``work/tdt-report.md`` and ``work/tdt.png``: the TDT teacher, the TDT student with KD on tokens and durations,
    its no-KD twin and the RNN-T student with token KD (NeMo's decoding, test split), and sherpa-onnx's
    transcripts of the exported TDT student (agreement with NeMo's, int8 vs fp32).

    ``scores``: eval summaries by row name (:mod:`kdstore.demo.tdt`: the teacher first); ``trained``: the students
    step's result; ``onnx``: the export step's. Returns the Markdown path.
    """
    from kdstore.demo.pipeline import _train_seconds

    names = list(scores)
    teacher_name, kd_name, twin_name = names[0], names[1], names[2]
    teacher, kd, twin = scores[teacher_name], scores[kd_name], scores[twin_name]
    lines = ["# kdstore demo: distilling a TDT teacher", "",
             *(["**`--quick`: a smoke run (0.1 h of audio, 150 steps); its numbers mean nothing.**", ""] if quick else []),
             (f"**The TDT student keeps {100 * retention(kd['wer'], teacher['wer']):.1f}% of the TDT teacher's word "
              f"accuracy** (WER {100 * kd['wer']:.2f}% vs {100 * teacher['wer']:.2f}%); its no-KD twin "
              f"{100 * twin['wer']:.2f}% ({100 * (kd['wer'] - twin['wer']):+.2f} points with KD on tokens and durations, "
              f"duration weight {plan.duration_weight})."), "",
             "| model | params | test WER % | CER % | retention | train s |", "|---|---:|---:|---:|---:|---:|"]
    for name, row in scores.items():
        curve = trained.get(name, {}).get("curve_csv") if isinstance(trained.get(name), dict) else None
        seconds = _train_seconds(curve)[0] if curve else None
        lines.append(f"| {name} | {row['params'] / 1e6:.2f}M | {100 * row['wer']:.2f} | {100 * row['cer']:.2f} | "
                     f"{100 * retention(row['wer'], teacher['wer']):.1f}% | {'-' if seconds is None else f'{seconds:.0f}'} |")
    for variant in ("fp32", "int8"):
        r = onnx[f"sherpa_{variant}"]
        lines.append(f"| {kd_name}, sherpa-onnx {variant} | - | {100 * r['wer']:.2f} | {100 * r['cer']:.2f} | "
                     f"{100 * retention(r['wer'], teacher['wer']):.1f}% | - |")
    fp32, int8 = onnx["sherpa_fp32"], onnx["sherpa_int8"]
    lines += ["", (f"sherpa-onnx's offline recognizer on the exported TDT student gives NeMo's transcript on "
                   f"{fp32['same_as_nemo']} of {fp32['utterances']} test utterances in fp32 and {int8['same_as_nemo']} "
                   f"in int8 ({fp32['non_empty']} non-empty); int8 WER {100 * int8['wer']:.2f}% vs fp32 "
                   f"{100 * fp32['wer']:.2f}% (frame-aligned input and the model's mel range, as `kdstore transcribe "
                   f"--runtime sherpa-onnx` runs it; README, export-onnx). Export: {onnx['onnx_dir']}."), "",
              ("The RNN-T student learns the TDT teacher's token distributions only: the durations (where the "
               "teacher jumps over frames) have no place in an RNN-T joint (docs/training.md, \"TDT students\")."), "",
              "![TDT](tdt.png)"]
    path = work / "tdt-report.md"
    path.write_text("\n".join(lines) + "\n")
    _bar_plot(work / "tdt.png", {n: 100 * r["wer"] for n, r in scores.items()}
              | {"TDT KD, sherpa-onnx int8": 100 * int8["wer"]}, "test WER % (unseen voices)", "TDT teacher and students")
    return path


def _bar_plot(path: Path, values: dict[str, float], ylabel: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(range(len(values)), list(values.values()), color=["#8c8c8c", "#4c72b0", "#c44e52", "#dd8452", "#55a868"])
    ax.set_xticks(range(len(values)), list(values), rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
