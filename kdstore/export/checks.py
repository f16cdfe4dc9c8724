"""What a .nemo transducer must satisfy before export.

:func:`check_exportable` refuses, in one sentence each, models the runtimes cannot serve (CTC-only,
character vocabularies, stateless prediction nets, non-log-mel front ends; TDT joints in a streaming
export, and TDT joints whose durations are not 0..D-1). Whether the numpy front end reproduces the
model's preprocessor is checked by :func:`kdstore.nemo.frontend.check_frontend`.

TDT (token-and-duration) joints export offline: sherpa-onnx (``offline-transducer-greedy-search-nemo-decoder.cc``,
``DecodeOneTDT``) and onnx-asr (``NemoConformerTdt._decode``) both take the *index* of the largest
duration logit as the number of frames to skip, so they decode NeMo's greedy search only when the
durations are exactly ``[0, 1, ..., D-1]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdstore.errors import ExportError
from kdstore.nemo.frontend import MEL_PREPROCESSOR
from kdstore.nemo.model_kind import check_model_for, is_tdt, tdt_durations


def check_exportable(model: Any, path: str | Path = "model", *, streaming: bool = False) -> None:
    """Refuse, in one sentence each, the models sherpa-onnx's NeMo transducer path cannot run.

    ``model`` is a restored NeMo ASR model (from ``path``); ``streaming`` is true for ``export-onnx
    --streaming`` (sherpa-onnx's online recognizer has no TDT search, so TDT joints are refused there).
    Raises ExportError naming what the model lacks (:func:`kdstore.nemo.model_kind.check_model_for`, then
    the TDT durations, the prediction net and the front end).
    """
    name = type(model).__name__
    if streaming and is_tdt(model):
        raise ExportError(f"{path}: {name} is a TDT model (token-and-duration joint); export-onnx --streaming serves "
                          "RNN-T joints only (sherpa-onnx's online recognizer has no TDT search): export it without "
                          "--streaming")
    check_model_for("export-onnx", model, path, subword=True, tdt=True, error=ExportError)
    if is_tdt(model):
        check_tdt_durations(tdt_durations(model), path)
    decoder = model.decoder
    if not hasattr(decoder, "pred_rnn_layers") or not hasattr(decoder, "pred_hidden"):
        raise ExportError(f"{name}'s prediction net ({type(decoder).__name__}) is not an LSTM RNNTDecoder")
    if not getattr(decoder, "blank_as_pad", False):
        raise ExportError(f"{name} was built with decoder.blank_as_pad=false; export needs blank_as_pad=true")
    if type(model.preprocessor).__name__ != MEL_PREPROCESSOR:
        raise ExportError(f"{name} uses {type(model.preprocessor).__name__}; only log-mel preprocessors are supported")


def check_tdt_durations(durations: tuple[int, ...], path: str | Path = "model") -> None:
    """Refuse TDT durations other than ``0, 1, ..., D-1``: sherpa-onnx and onnx-asr skip as many frames as the
    index of the winning duration logit. Raises ExportError naming the durations."""
    if tuple(durations) != tuple(range(len(durations))):
        raise ExportError(f"{path}: TDT durations {list(durations)} are not 0..{len(durations) - 1}; sherpa-onnx and "
                          "onnx-asr skip as many frames as the index of the winning duration, so they cannot run it "
                          f"(train with model_defaults.tdt_durations={list(range(len(durations)))})")
