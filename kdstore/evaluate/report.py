"""What ``kdstore eval`` shows and writes: a summary table, report.md, a PNG and sclite-ready files."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from kdstore.evaluate.compare import Comparison
from kdstore.evaluate.scoring import write_trn
from kdstore.evaluate.transcribe import EvalResult, write_transcripts

NORMALIZER_NOTES = {
    "basic": "lower case, punctuation stripped (apostrophes inside words kept), whitespace collapsed",
    "whisper": "Whisper-style English: lower case, punctuation and fillers removed, contractions expanded, "
               "British spellings made American, spelled-out numbers as digits",
    "none": "none: whitespace collapsed only; case and punctuation count as errors",
}


def summary_table(results: Mapping[str, EvalResult]) -> str:
    """A Markdown table, one row per model."""
    lines = ["| model | WER % | CER % | sub | del | ins | ref words | utts | RTF | params |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for role, r in results.items():
        lines.append(f"| {role} (`{Path(r.model).name}`) | {100 * r.wer:.2f} | {100 * r.cer:.2f} | {r.substitutions} | "
                     f"{r.deletions} | {r.insertions} | {r.ref_words} | {r.utterances} | {r.rtf:.4f} | "
                     f"{r.params / 1e6:.2f}M |")
    return "\n".join(lines)


def comparison_lines(c: Comparison, markdown: bool = True) -> list[str]:
    """Bullet lines: accuracy retention, the WER difference with its CI, kaldialign's cross-check.

    ``markdown`` puts the two headline numbers in bold (report.md); without it the lines are plain
    text for a terminal.
    """
    strong = "**{}**" if markdown else "{}"
    b = c.bootstrap
    pct = round(100 * b.confidence)
    lines = [
        (f"- Accuracy retention (1 - WER_student) / (1 - WER_teacher): {strong.format(_pct(c.accuracy_retention))}; "
         f"WER ratio student / teacher: {'n/a' if c.wer_ratio is None else f'{c.wer_ratio:.3f}'}"),
        (f"- WER difference student - teacher: {strong.format(f'{100 * b.difference:+.2f}')} points, {pct}% CI "
         f"[{100 * b.low:+.2f}, {100 * b.high:+.2f}] (paired bootstrap over utterances, {b.samples} resamples, "
         f"seed {b.seed}); student better in {100 * b.p_a_better:.1f}% of resamples"),
    ]
    if c.kaldialign:
        k = c.kaldialign
        lines.append(
            f"- Cross-check, kaldialign `bootstrap_wer_ci` (mean +- 1.96 sd): student [{100 * k['a']['low']:.2f}, "
            f"{100 * k['a']['high']:.2f}], teacher [{100 * k['b']['low']:.2f}, {100 * k['b']['high']:.2f}], "
            f"P(student better) {k['p_a_better']:.3f}"
        )
    return lines


def console_summary(results: Mapping[str, EvalResult], comparison: Comparison | None) -> str:
    """What ``kdstore eval`` prints: the summary table, then the comparison as plain text."""
    lines = [summary_table(results), *streaming_report_lines(results, markdown=False)]
    if comparison is not None:
        lines += comparison_lines(comparison, markdown=False)
    return "\n".join(lines)


def streaming_report_lines(results: Mapping[str, EvalResult], markdown: bool = True) -> list[str]:
    """How each streamed model (``eval --streaming``) streamed and its word latency; [] if none streamed."""
    from kdstore.evaluate.streaming import StreamingEvalResult, streaming_lines

    lines = []
    for role, result in results.items():
        if isinstance(result, StreamingEvalResult):
            lines += [line.replace("- ", f"- {role}: ", 1) for line in streaming_lines(result, markdown)]
    return lines


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def write_report(results: Mapping[str, EvalResult], comparison: Comparison | None, out_dir: str | Path) -> Path:
    """report.md, eval.png, ``<role>.jsonl`` per model and sclite ``ref.trn`` / ``<role>.trn``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    first = next(iter(results.values()))
    for role, result in results.items():
        write_transcripts(result, out / f"{role}.jsonl")
        write_trn(out / f"{role}.trn", result.keys, result.scored.hypotheses)
        if hasattr(result, "streaming"):  # eval --streaming: token emission times and word latencies
            from kdstore.evaluate.streaming import write_latency_rows

            write_latency_rows(result, out / f"{role}.latency.jsonl")
    write_trn(out / "ref.trn", first.keys, first.scored.references)
    png = plot_eval(results, out / "eval.png")
    lines = [
        "# kdstore eval",
        "",
        (f"Manifest: `{first.manifest}` ({first.utterances} utterances, {first.audio_seconds / 60:.1f} min of "
         f"audio). Greedy decoding on CPU. Text normalisation: `{first.normalizer}` "
         f"({NORMALIZER_NOTES[first.normalizer]})."),
        "",
        summary_table(results),
        "",
        ("WER = (sub + del + ins) / ref words over the whole set. RTF = decoding seconds / audio seconds "
         "(audio loading, features, encoder and greedy search; model loading excluded)."),
    ]
    if any(hasattr(r, "streaming") for r in results.values()):
        lines += ["", "## Streaming", "", *streaming_report_lines(results), "",
                  ("Latency = when the word's last token appeared (the audio that had arrived when its chunk was "
                   "complete) minus the word's end in the latency reference's NeMo word timestamps, over words "
                   "both got right; per utterance in `<model>.latency.jsonl`.")]
    if comparison is not None:
        lines += ["", "## Student vs teacher", "", *comparison_lines(comparison)]
    lines += ["", f"![per-utterance errors]({png.name})", "",
              ("Files: per-utterance JSONL (`<model>.jsonl`: texts, normalised texts, sub/del/ins, WER), "
               "NIST trn files for sclite: `sctk sclite -r ref.trn trn -h model.trn trn -i spu_id -o sum stdout`.")]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


def plot_eval(results: Mapping[str, EvalResult], out_png: Path) -> Path:
    """Error-type bars per model; with a teacher, also a per-utterance WER scatter student vs teacher."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roles = list(results)
    scatter = "teacher" in results and len(results) > 1
    fig, axes = plt.subplots(1, 2 if scatter else 1, figsize=(10 if scatter else 5.5, 4.2), squeeze=False)
    bars = axes[0][0]
    width = 0.8 / len(roles)
    for i, role in enumerate(roles):
        r = results[role]
        values = [100 * n / max(r.ref_words, 1) for n in (r.substitutions, r.deletions, r.insertions)]
        drawn = bars.bar([k + (i - (len(roles) - 1) / 2) * width for k in range(3)], values, width=width, label=role)
        bars.bar_label(drawn, fmt="%.1f", fontsize=8)
    bars.set_xticks(range(3), ["substitutions", "deletions", "insertions"])
    bars.set_ylabel("% of reference words")
    bars.set_title("Error types")
    bars.legend()
    if scatter:
        ax = axes[0][1]
        student = next(role for role in roles if role != "teacher")
        xs = [100 * u.wer for u in results["teacher"].scored.utterances]
        ys = [100 * u.wer for u in results[student].scored.utterances]
        top = max([100.0, *xs, *ys])
        ax.plot([0, top], [0, top], color="#999999", linewidth=0.8, linestyle="--")
        ax.scatter(xs, ys, s=14, alpha=0.6)
        ax.set_xlabel("teacher WER % per utterance")
        ax.set_ylabel(f"{student} WER % per utterance")
        ax.set_title("Per utterance (above the line: student worse)")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
