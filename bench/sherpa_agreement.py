"""sherpa-onnx vs NeMo: identical greedy transcripts and WER, sherpa-onnx as it comes vs kdstore's front-end fixes.

For each ``--model`` (.nemo, RNN-T, hybrid or TDT): export the sherpa layout (``kdstore.export.run.export_onnx``),
transcribe ``--manifest`` with NeMo (``model.transcribe``, greedy) and with sherpa-onnx three times via
``kdstore transcribe --runtime sherpa-onnx``: as it comes (raw files, its default mel range up to Nyquist - 400 Hz),
frame-aligned input (``kdstore.runtime.sherpa.align_for_sherpa``) with that default mel range (what the C, Kotlin
and Swift APIs can get), and frame-aligned with the model's mel range (kdstore's default: the Python API's
``FeatureExtractorConfig.high_freq``). A subprocess each, because sherpa-onnx exits the process on a bad model
instead of raising. Prints a table; ``--out`` writes it as a section of docs/benchmarks.md.

    python bench/sherpa_agreement.py --model kdstore/assets/demo_teacher/teacher.nemo --model demo-run/student-kd.nemo \\
        --manifest demo-run/corpus/test.json [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from _report import machine, write_section  # bench/ is sys.path[0] when run as a script

HEADING = "## sherpa-onnx agreement"


# mode -> (frame-aligned input, mel range)
MODES = {"raw": (False, "sherpa-default"), "align": (True, "sherpa-default"), "align_mel": (True, "model")}


def sherpa_transcripts(onnx_dir: Path, paths: list[str], mode: str) -> list[str]:
    """``kdstore transcribe --runtime sherpa-onnx`` (sherpa-onnx's OfflineRecognizer) in a subprocess."""
    aligned, mel_range = MODES[mode]
    proc = subprocess.run([sys.executable, "-m", "kdstore.cli.main", "transcribe", "--onnx", str(onnx_dir),
                           "--runtime", "sherpa-onnx", "--sherpa-align" if aligned else "--no-sherpa-align",
                           "--sherpa-mel-range", mel_range, "--json", *paths],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"sherpa-onnx failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return [t["text"] for t in json.loads(proc.stdout)["transcripts"]]


def nemo_transcripts(model_path: Path, paths: list[str]) -> list[str]:
    import torch

    from kdstore.nemo.checkpoint import restore_model

    torch.set_num_threads(1)
    model = restore_model(model_path)  # the one restore path: what eval and dump-teacher see
    return [h.text for h in model.transcribe(paths, batch_size=8, verbose=False)]


def measure(model_path: Path, manifest: Path, work: Path) -> dict:
    import jiwer

    from kdstore.export.run import export_onnx

    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    paths, refs = [r["audio_filepath"] for r in rows], [r["text"] for r in rows]
    onnx_dir = export_onnx(model_path, work / model_path.stem).out_dir
    nemo = nemo_transcripts(model_path, paths)
    result = {"model": str(model_path), "utterances": len(rows), "wer_nemo": jiwer.wer(refs, nemo)}
    for mode in MODES:
        texts = sherpa_transcripts(onnx_dir, paths, mode)
        result[f"agree_{mode}"] = sum(a == b for a, b in zip(texts, nemo, strict=True))
        result[f"wer_{mode}"] = jiwer.wer(refs, [t or "-" for t in texts])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, action="append", required=True, help=".nemo (repeatable)")
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None, help="Markdown file whose section to (re)write")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(m, args.manifest, Path(tmp)) for m in args.model]
    lines = [("| model | utterances | identical: as it comes | aligned | aligned + model's mel range | WER NeMo | "
              "WER sherpa: as it comes / aligned / + mel range |"), "|---|---:|---:|---:|---:|---:|---|"]
    for r in results:
        lines.append(f"| `{r['model']}` | {r['utterances']} | {r['agree_raw']} | {r['agree_align']} | "
                     f"**{r['agree_align_mel']}** | {100 * r['wer_nemo']:.2f}% | {100 * r['wer_raw']:.2f}% / "
                     f"{100 * r['wer_align']:.2f}% / {100 * r['wer_align_mel']:.2f}% |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        command = "python bench/sherpa_agreement.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        text = "\n".join([
            f"- Command: `{command}`",
            f"- Machine: {machine()}",
            f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
            (f"- Versions: sherpa-onnx {version('sherpa-onnx')}, onnxruntime {version('onnxruntime')}, "
            f"nemo_toolkit {version('nemo_toolkit')}"),
            ("- Greedy search everywhere; `identical` = sherpa-onnx's transcript equals NeMo's "
             "`model.transcribe`; as it comes = raw files, sherpa-onnx's default mel range (high_freq -400); "
             "aligned = `kdstore.runtime.sherpa.align_for_sherpa`; model's mel range = high_freq at the "
             "model's upper mel edge (`kdstore transcribe --runtime sherpa-onnx` does both by default)."),
            "", table, ""])
        write_section(args.out, HEADING, text)


if __name__ == "__main__":
    main()
