"""ONNX files -> text, with numpy + onnxruntime (or sherpa-onnx); never NeMo, no torch at import.

:mod:`layout` (every export file name), :mod:`frontend` (log-mel in numpy), :mod:`decoder` (greedy
transducer), :mod:`tdt` (NeMo's greedy TDT search), :mod:`sherpa` (sherpa-onnx recogniser and frame alignment),
:mod:`transcribe` (files -> text).
"""
