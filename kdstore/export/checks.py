"""What a .nemo transducer must satisfy before export, and what is read from it.

* :func:`check_exportable` refuses, in one sentence each, models the runtimes cannot serve (TDT,
  CTC-only, character vocabularies, stateless prediction nets, non-log-mel front ends);
* :func:`export_metadata` builds the encoder's ``metadata_props`` (sherpa-onnx's keys and kdstore's);
* :func:`write_tokens` writes ``piece id`` lines (``tokens.txt`` / ``vocab.txt``) with ``<blk>`` last.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kdstore import __version__
from kdstore.errors import ExportError
from kdstore.runtime.frontend import FrontEndConfig

BLANK_PIECE = "<blk>"
SHERPA_MODEL_TYPE = "EncDecRNNTBPEModel"  # what sherpa-onnx expects for any NeMo RNN-T (hybrid too)




def check_exportable(model: Any) -> None:
    """Refuse, in one sentence each, the models sherpa-onnx's NeMo transducer path cannot run."""
    name = type(model).__name__
    if not hasattr(model, "joint") or not hasattr(model, "decoder"):
        raise ExportError(f"{name} has no transducer joint: only RNN-T and hybrid RNN-T/CTC models are supported")
    if getattr(model.joint, "num_extra_outputs", 0):
        raise ExportError(f"{name} is a TDT model (duration outputs): TDT export is out of scope for kdstore/1")
    if getattr(model, "tokenizer", None) is None:
        raise ExportError(f"{name} has no subword tokenizer: only BPE (SentencePiece) models are supported")
    decoder = model.decoder
    if not hasattr(decoder, "pred_rnn_layers") or not hasattr(decoder, "pred_hidden"):
        raise ExportError(f"{name}'s prediction net ({type(decoder).__name__}) is not an LSTM RNNTDecoder")
    if not getattr(decoder, "blank_as_pad", False):
        raise ExportError(f"{name} was built with decoder.blank_as_pad=false; export needs blank_as_pad=true")
    if type(model.preprocessor).__name__ != "AudioToMelSpectrogramPreprocessor":
        raise ExportError(f"{name} uses {type(model.preprocessor).__name__}; only log-mel preprocessors are supported")










def export_metadata(model: Any, frontend: FrontEndConfig, source_sha256: str) -> dict[str, str]:
    """Encoder ``metadata_props``: sherpa-onnx's keys first, then kdstore's."""
    vocab_size = int(model.joint.num_classes_with_blank) - 1
    blank_id = int(model.decoder.blank_idx)
    if blank_id != vocab_size:
        raise ExportError(f"blank id {blank_id} is not the last joint output ({vocab_size}); cannot export")
    decoding = model.cfg.get("decoding", None) or {}
    greedy = decoding.get("greedy", None) or {}
    max_symbols = greedy.get("max_symbols", None) or 10
    meta = {
        "vocab_size": str(vocab_size),
        "normalize_type": frontend.normalize,
        "pred_rnn_layers": str(int(model.decoder.pred_rnn_layers)),
        "pred_hidden": str(int(model.decoder.pred_hidden)),
        "subsampling_factor": str(int(model.encoder.subsampling_factor)),
        "model_type": SHERPA_MODEL_TYPE,
        "feat_dim": str(frontend.features),
        "kdstore_version": __version__,
        "source_sha256": source_sha256,
        "source_class": type(model).__name__,
        "blank_id": str(blank_id),
        "max_symbols": str(int(max_symbols)),
    }
    meta.update(frontend.to_metadata())
    return meta


def write_tokens(model: Any, path: Path, vocab_size: int) -> Path:
    """``piece id`` per line for ids 0..V-1, then ``<blk> V``."""
    pieces = model.tokenizer.ids_to_tokens(list(range(vocab_size)))
    if len(pieces) != vocab_size:
        raise ExportError(f"tokenizer gave {len(pieces)} pieces for a joint with {vocab_size} labels")
    lines = []
    for i, piece in enumerate(pieces):
        if not piece or any(c.isspace() for c in piece):
            raise ExportError(f"token {i} ({piece!r}) is empty or has whitespace; tokens.txt cannot hold it")
        lines.append(f"{piece} {i}")
    lines.append(f"{BLANK_PIECE} {vocab_size}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
