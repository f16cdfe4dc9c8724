"""NeMo's own two-file ONNX layout, as ``model.export("model.onnx")`` writes it, made loadable by onnx-asr.

Files (what onnx-asr 0.12's ``NemoConformerRnnt`` opens, by name):

* ``encoder-model.onnx``: inputs ``audio_signal`` (B, C, T) log-mel features and ``length`` (B,);
  outputs ``outputs`` (B, D, T') and ``encoded_lengths``. kdstore's metadata (front end, blank id,
  provenance) is added to it, as in the sherpa layout;
* ``decoder_joint-model.onnx``: inputs ``encoder_outputs`` (B, D, 1), ``targets`` (B, 1),
  ``target_length``, ``input_states_1/2`` (layers, B, hidden: layers and hidden static, onnx-asr
  reads them from the input shapes); outputs ``outputs`` (raw joint logits, V + 1 wide, blank last),
  ``prednet_lengths``, ``output_states_1/2`` (a TDT joint: V + 1 + D wide, the D duration logits last);
* ``vocab.txt``: ``piece id`` lines with ``<blk> V`` last (onnx-asr finds blank by that name);
* ``config.json``: ``model_type`` ("nemo-conformer-rnnt", or "nemo-conformer-tdt": onnx-asr 0.12's
  ``NemoConformerTdt`` splits the joint output after the vocabulary and skips as many frames as the index of
  the largest duration logit), ``features_size``, ``subsampling_factor``, ``max_tokens_per_step`` (NeMo's
  greedy ``max_symbols``).

onnx-asr computes features itself with NeMo's *default* front end (16 kHz, n_fft 512, 25/10 ms hann,
pre-emphasis 0.97, slaney mel, per_feature normalisation, 80 or 128 bins); a model with other
settings still exports, with a note saying onnx-asr will not match it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from kdstore.errors import ExportError
from kdstore.export.metadata import joint_width, write_tokens
from kdstore.export.onnx_edit import add_metadata, check_io_names, check_output_width
from kdstore.files import write_atomic
from kdstore.runtime.frontend import FrontEndConfig
from kdstore.runtime.layout import NEMO, TDT_DURATIONS_KEY

ONNX_ASR_MODEL_TYPE = "nemo-conformer-rnnt"
ONNX_ASR_TDT_MODEL_TYPE = "nemo-conformer-tdt"
ENCODER_IO = (("audio_signal", "length"), ("outputs", "encoded_lengths"))
DECODER_JOINT_IO = (("encoder_outputs", "targets", "target_length", "input_states_1", "input_states_2"),
                    ("outputs", "prednet_lengths", "output_states_1", "output_states_2"))


def write_nemo_layout(model: Any, out_dir: Path, metadata: Mapping[str, str], provenance: Mapping[str, str],
                      frontend: FrontEndConfig) -> tuple[dict[str, Path], tuple[str, ...]]:
    """Write the four files of ``model`` (a restored, checked NeMo transducer) into ``out_dir``.

    ``metadata`` goes on the encoder, ``provenance`` on the decoder_joint graph; ``frontend`` is the
    model's preprocessor, compared with onnx-asr's fixed one. Returns the paths by role (``encoder``,
    ``decoder``, ``tokens``, ``config``) and notes for the user. Raises ExportError when NeMo's export
    does not have the names or shapes onnx-asr looks up.
    """
    vocab_size = int(metadata["vocab_size"])
    encoder, decoder_joint = out_dir / NEMO.encoder, out_dir / NEMO.decoder
    model.export(str(out_dir / "model.onnx"))  # NeMo names the parts encoder-model.onnx, decoder_joint-model.onnx
    for path in (encoder, decoder_joint):
        if not path.is_file():
            raise ExportError(f"NeMo's model.export did not write {path.name}; is this a transducer model?")
    check_io_names(encoder, *ENCODER_IO)
    check_io_names(decoder_joint, *DECODER_JOINT_IO)
    check_output_width(decoder_joint, joint_width(metadata))
    _check_static_states(decoder_joint)
    add_metadata(encoder, metadata)
    add_metadata(decoder_joint, provenance)
    vocab = write_tokens(model, out_dir / NEMO.tokens, vocab_size)
    config = {
        "model_type": ONNX_ASR_TDT_MODEL_TYPE if TDT_DURATIONS_KEY in metadata else ONNX_ASR_MODEL_TYPE,
        "features_size": frontend.features,
        "subsampling_factor": int(metadata["subsampling_factor"]),
        "max_tokens_per_step": int(metadata["max_symbols"]),
    }
    write_atomic(out_dir / NEMO.config, json.dumps(config, indent=2) + "\n")
    notes = ()
    if replace(frontend, features=80) != FrontEndConfig() or frontend.features not in (80, 128):
        notes = (("this model's preprocessor is not NeMo's default 16 kHz/80-or-128-mel front end that onnx-asr "
                  "computes; onnx-asr transcripts will not match (kdstore transcribe uses the model's own)"),)
    return {"encoder": encoder, "decoder": decoder_joint, "tokens": vocab, "config": out_dir / NEMO.config}, notes


def _check_static_states(path: Path) -> None:
    import onnx

    for vi in onnx.load(str(path), load_external_data=False).graph.input:
        if vi.name.startswith("input_states_"):
            dims = vi.type.tensor_type.shape.dim
            if len(dims) != 3 or not dims[0].dim_value or not dims[2].dim_value:
                raise ExportError(f"{path}: {vi.name} needs static (layers, *, hidden) dims for onnx-asr")
