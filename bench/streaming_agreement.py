"""sherpa-onnx's OnlineRecognizer against NeMo's cache-aware streaming decode on one streaming student (issue [5/6]).

Exports ``--model`` for ``--chunk-ms`` (int8 too), streams ``--manifest`` through NeMo
(``kdstore.evaluate.streaming.evaluate_streaming``) and through sherpa-onnx on NeMo's chunk grid and on the raw audio,
and prints per variant the WER, how many transcripts equal NeMo's and how many are non-empty (JSON, also
``OUT/result.json``). The acceptance bar of issue [5/6]: >= 90% equal, >= half non-empty, int8 within 1 WER point.

    python bench/streaming_agreement.py --model /tmp/streamstudy/students/kd-d4-s0.nemo \
        --manifest corpus/test.json --out /tmp/agreement

Measured 2026-11-30 on /tmp/clamp/kd-d4-s0.nemo (the study's KD delay-4 student retrained with the clamp log floor;
NeMo streaming WER 62.16% as is, 62.54% on the completed stream), 159 demo test utterances, 560 ms: sherpa-onnx equals
NeMo on 158/159 in fp32 (WER 61.97%), 138/159 in int8 (61.78%), 3/159 on raw audio (no lead: its first 160 ms are
masked). Before the export masked the first window's lead (kdstore 0.4.0): 8/159. docs/results.md, section 0d.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--chunk-ms", type=int, default=560)
    args = parser.parse_args()

    import torch

    from kdstore.evaluate.scoring import score
    from kdstore.evaluate.streaming import evaluate_streaming
    from kdstore.export.streaming import export_streaming
    from kdstore.inputs.manifest import read_manifest
    from kdstore.runtime.sherpa_online import SherpaOnlineTransducer

    torch.set_num_threads(1)
    entries = read_manifest(args.manifest)
    nemo = evaluate_streaming(args.model, args.manifest, chunk_ms=args.chunk_ms, complete_last_chunk=True)
    result = {"nemo_streaming_wer_as_is": evaluate_streaming(args.model, args.manifest, chunk_ms=args.chunk_ms).wer}
    export_streaming(args.model, args.out / "onnx", chunk_ms=[args.chunk_ms], int8=True)
    result |= {"nemo_streaming_wer": nemo.wer, "utterances": len(entries),
              "nemo_non_empty": sum(bool(h.strip()) for h in nemo.hypotheses)}
    for name, int8, align in (("fp32", False, True), ("int8", True, True), ("fp32_raw", False, False)):
        start = time.perf_counter()
        texts = SherpaOnlineTransducer(args.out / "onnx", chunk_ms=args.chunk_ms, int8=int8, align=align).transcribe(
            [e.audio_path for e in entries])
        scored = score([e.text for e in entries], texts)
        result[name] = {"wer": scored.wer, "same_as_nemo": sum(a.strip() == b.strip() for a, b in
                                                               zip(texts, nemo.hypotheses, strict=True)),
                        "non_empty": sum(bool(t.strip()) for t in texts),
                        "seconds": round(time.perf_counter() - start, 1)}
    text = json.dumps(result, indent=1)
    print(text)
    (args.out / "result.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
