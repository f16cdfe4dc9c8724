"""sherpa-onnx vs NeMo: identical greedy transcripts and WER, raw files vs frame-aligned input.

For each ``--model`` (.nemo): export the sherpa layout (``kdstore.export.run.export_onnx``), transcribe
``--manifest`` with NeMo (``model.transcribe``, greedy) and with sherpa-onnx twice (the files as they
are, and frame-aligned by ``kdstore.runtime.sherpa``) via ``kdstore transcribe --runtime sherpa-onnx``, in a
subprocess each because sherpa-onnx exits the process on a bad model instead of raising. Prints a table; ``--out`` writes it as a section
of docs/benchmarks.md.

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


def sherpa_transcripts(onnx_dir: Path, paths: list[str], mode: str) -> list[str]:
    """``kdstore transcribe --runtime sherpa-onnx`` (sherpa_onnx.OfflineRecognizer) in a subprocess."""
    align = "--sherpa-align" if mode == "align" else "--no-sherpa-align"
    proc = subprocess.run([sys.executable, "-m", "kdstore.cli.main", "transcribe", "--onnx", str(onnx_dir),
                           "--runtime", "sherpa-onnx", align, "--json", *paths],
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
    for mode in ("raw", "align"):
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
    lines = [("| model | utterances | identical, raw files | identical, `sherpa_input` | WER NeMo | "
             "WER sherpa raw | WER sherpa aligned |"), "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| `{r['model']}` | {r['utterances']} | {r['agree_raw']} | {r['agree_align']} | "
                     f"{100 * r['wer_nemo']:.2f}% | {100 * r['wer_raw']:.2f}% | {100 * r['wer_align']:.2f}% |")
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
            "`model.transcribe`; `sherpa_input` = `kdstore.runtime.sherpa` (frame-aligned input)."),
            "", table, ""])
        write_section(args.out, HEADING, text)


if __name__ == "__main__":
    main()
