"""sherpa-onnx's three-graph layout: ``encoder.onnx``, ``decoder.onnx``, ``joiner.onnx`` and ``tokens.txt``.

NeMo's per-module exporters write the graphs (``model.encoder.export`` etc.; field notes,
"sherpa-onnx contract"); on top:

* the decoder's inputs/outputs get readable names and a dynamic batch axis on both LSTM states (NeMo's
  trace fixes the second one to batch 1): :func:`kdstore.export.onnx_edit.fix_decoder_io`;
* the joiner's last output dim must be the static V + 1 (sherpa-onnx reads the vocabulary size from it), or
  V + 1 + D for a TDT joint (D duration logits after the token logits: sherpa-onnx takes the width minus
  ``vocab_size + 1`` as D when the encoder's ``url`` says "tdt", and exits when an RNN-T's width is not V + 1);
* the encoder carries the full metadata, decoder and joiner the provenance keys;
* ``tokens.txt``: one ``piece id`` line per vocabulary entry, then ``<blk> V``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdstore.export.metadata import joint_width, write_tokens
from kdstore.export.onnx_edit import add_metadata, check_output_width, fix_decoder_io
from kdstore.runtime.layout import SHERPA


def write_sherpa_layout(model: Any, out_dir: Path, metadata: Mapping[str, str],
                        provenance: Mapping[str, str]) -> dict[str, Path]:
    """Write the four files of ``model`` (a restored, checked NeMo transducer) into ``out_dir``.

    ``metadata`` goes on the encoder, ``provenance`` on decoder and joiner. Returns the paths by role
    (``encoder``, ``decoder``, ``joiner``, ``tokens``). Raises ExportError when a graph does not have
    the shape sherpa-onnx needs.
    """
    paths = {"encoder": out_dir / SHERPA.encoder, "decoder": out_dir / SHERPA.decoder,
             "joiner": out_dir / SHERPA.joiner}
    vocab_size = int(metadata["vocab_size"])
    model.encoder.export(str(paths["encoder"]))
    model.decoder.export(str(paths["decoder"]))
    model.joint.export(str(paths["joiner"]))
    fix_decoder_io(paths["decoder"])
    check_output_width(paths["joiner"], joint_width(metadata))
    add_metadata(paths["encoder"], metadata)
    add_metadata(paths["decoder"], provenance)
    add_metadata(paths["joiner"], provenance)
    paths["tokens"] = write_tokens(model, out_dir / SHERPA.tokens, vocab_size)
    return paths
