"""What a .nemo transducer must satisfy before export.

:func:`check_exportable` refuses, in one sentence each, models the runtimes cannot serve (TDT,
CTC-only, character vocabularies, stateless prediction nets, non-log-mel front ends). Whether the
numpy front end reproduces the model's preprocessor is checked by
:func:`kdstore.nemo.frontend.check_frontend`.
"""

from __future__ import annotations

from typing import Any

from kdstore.errors import ExportError
from kdstore.nemo.frontend import MEL_PREPROCESSOR


def check_exportable(model: Any) -> None:
    """Refuse, in one sentence each, the models sherpa-onnx's NeMo transducer path cannot run.

    ``model`` is a restored NeMo ASR model. Raises ExportError naming what the model lacks.
    """
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
    if type(model.preprocessor).__name__ != MEL_PREPROCESSOR:
        raise ExportError(f"{name} uses {type(model.preprocessor).__name__}; only log-mel preprocessors are supported")
