"""``kdstore export-onnx``: a ``.nemo`` -> the sherpa-onnx or NeMo ONNX layout. Imports runtime/, never
the reverse (the runtime must not need the exporter)."""
