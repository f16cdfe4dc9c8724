"""What a .nemo transducer must satisfy before export.

:func:`check_exportable` refuses, in one sentence each, models the runtimes cannot serve (TDT,
CTC-only, character vocabularies, stateless prediction nets, non-log-mel front ends). Whether the
numpy front end reproduces the model's preprocessor is checked by
:func:`kdstore.nemo.frontend.check_frontend`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdstore.errors import ExportError
from kdstore.nemo.frontend import MEL_PREPROCESSOR
from kdstore.nemo.model_kind import check_model_for


def check_exportable(model: Any, path: str | Path = "model") -> None:
    """Refuse, in one sentence each, the models sherpa-onnx's NeMo transducer path cannot run.

    ``model`` is a restored NeMo ASR model (from ``path``). Raises ExportError naming what the model lacks
    (:func:`kdstore.nemo.model_kind.check_model_for`, then the prediction net and front end).
    """
    name = type(model).__name__
    check_model_for("export-onnx", model, path, subword=True, error=ExportError)
    decoder = model.decoder
    if not hasattr(decoder, "pred_rnn_layers") or not hasattr(decoder, "pred_hidden"):
        raise ExportError(f"{name}'s prediction net ({type(decoder).__name__}) is not an LSTM RNNTDecoder")
    if not getattr(decoder, "blank_as_pad", False):
        raise ExportError(f"{name} was built with decoder.blank_as_pad=false; export needs blank_as_pad=true")
    if type(model.preprocessor).__name__ != MEL_PREPROCESSOR:
        raise ExportError(f"{name} uses {type(model.preprocessor).__name__}; only log-mel preprocessors are supported")
