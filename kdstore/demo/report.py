"""The demo's report: a table people read (report.md) and a picture they look at (report.png)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelRow:
    name: str
    wer: float
    cer: float
    params: int
    train_seconds: float | None
    steps: int | None
    curve_csv: Path | None


def format_table(rows: list[ModelRow], store_bytes: int | None) -> str:
    lines = ["| model | WER % | CER % | params | train time | steps |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        train = f"{r.train_seconds / 60:.1f} min" if r.train_seconds else "-"
        lines.append(f"| {r.name} | {100 * r.wer:.2f} | {100 * r.cer:.2f} | {r.params / 1e6:.2f}M | {train} | "
                     f"{r.steps if r.steps is not None else '-'} |")
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
