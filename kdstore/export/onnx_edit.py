"""Small edits and checks on ONNX files: metadata, decoder I/O names, static widths, int8 copies.

Needs the ``onnx`` package (and onnxruntime's quantiser for :func:`quantize_int8`), never torch.
Reading metadata back is :func:`kdstore.runtime.layout.read_metadata` (the runtimes need it too).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from kdstore.errors import ExportError
from kdstore.runtime.layout import int8_name

DECODER_INPUTS = ("targets", "target_length", "input_states_1", "input_states_2")
DECODER_OUTPUTS = ("outputs", "prednet_lengths", "output_states_1", "output_states_2")


def add_metadata(path: Path, metadata: Mapping[str, str]) -> None:
    """Set (replace) ``metadata_props`` entries of an ONNX file in place."""
    import onnx

    model = onnx.load(str(path))
    keep = [p for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(model, str(path))


def fix_decoder_io(path: Path) -> None:
    """Readable decoder I/O names and a dynamic batch axis on both LSTM states (sherpa layout), in place.

    Raises ExportError unless the graph has the 4 inputs and 4 outputs of an LSTM prediction net.
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    if len(graph.input) != 4 or len(graph.output) != 4:
        raise ExportError(f"{path}: expected a decoder with 4 inputs and 4 outputs (LSTM states), got "
                          f"{len(graph.input)} and {len(graph.output)}")
    renames = {vi.name: new for vi, new in zip(graph.input, DECODER_INPUTS)}
    renames.update({vi.name: new for vi, new in zip(graph.output, DECODER_OUTPUTS)})
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renames.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = renames.get(name, name)
    for vi in [*graph.input, *graph.output]:
        vi.name = renames.get(vi.name, vi.name)
    for vi in [*graph.input[2:], *graph.output[2:]]:  # (layers, batch, hidden)
        dim = vi.type.tensor_type.shape.dim[1]
        dim.Clear()
        dim.dim_param = "batch"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def check_output_width(path: Path, width: int) -> None:
    """The first output's last dim must be the static ``width`` (sherpa-onnx reads the vocabulary from it).

    Raises ExportError naming the dim found.
    """
    import onnx

    dims = onnx.load(str(path)).graph.output[0].type.tensor_type.shape.dim
    if not dims or dims[-1].dim_value != width:
        got = dims[-1].dim_value or dims[-1].dim_param if dims else "no shape"
        raise ExportError(f"{path}: output's last dim should be the static {width}, got {got!r}")


def check_io_names(path: Path, inputs: Sequence[str], outputs: Sequence[str]) -> None:
    """Refuse a graph whose input/output names are not the ones a runtime looks up by name."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    have_in, have_out = [i.name for i in graph.input], [o.name for o in graph.output]
    missing = [n for n in inputs if n not in have_in] + [n for n in outputs if n not in have_out]
    if missing:
        raise ExportError(f"{path}: expected inputs {list(inputs)} and outputs {list(outputs)}, got {have_in} and "
                          f"{have_out}; this NeMo version exports other names")


def quantize_int8(path: Path, metadata: Mapping[str, str]) -> Path:
    """Dynamic int8 weights for the MatMul/Gemm layers, one scale per output channel; writes
    ``<name>.int8.onnx`` beside ``path`` with ``metadata`` plus ``quantization: dynamic-int8``, and returns
    its path.

    Per channel, not per tensor: on a distilled streaming student (kd-d4-s0 of ``bench/streaming.py``,
    40 test utterances through sherpa-onnx) per-tensor weights moved WER 63.6% -> 67.6% and kept 30/40
    transcripts; per-channel gave 62.6% and 34/40 (docs/decisions.md, "int8 weights")."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = path.with_name(int8_name(path.name))
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a "consider pre-processing" warning on the root logger
    try:
        quantize_dynamic(str(path), str(out), op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8,
                         per_channel=True)
    finally:
        root.setLevel(level)
    add_metadata(out, {**metadata, "quantization": "dynamic-int8"})
    return out
