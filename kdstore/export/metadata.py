"""What an export writes about the model: the encoder's metadata and the token file.

* :func:`export_metadata` builds the encoder's ``metadata_props``: sherpa-onnx's keys (``vocab_size``
  without blank, ``normalize_type``, ``pred_rnn_layers``, ``pred_hidden``, ``subsampling_factor``,
  ``model_type``, ``feat_dim``; field notes, "sherpa-onnx contract") and kdstore's (version, sha256 of
  the source .nemo, blank id, greedy ``max_symbols`` and every front-end setting, see
  :class:`kdstore.runtime.frontend.FrontEndConfig`), which :mod:`kdstore.runtime` reads back;
* for a TDT model also ``url`` holding "tdt" (sherpa-onnx's only TDT test: ``url.find("tdt")`` in
  ``OfflineTransducerNeMoModel::Impl::InitEncoder``, offline-transducer-nemo-model.cc; it then takes the
  joiner's last dim minus ``vocab_size + 1`` as the number of durations) and kdstore's ``tdt_durations``
  (comma-separated frames, joint order), which :class:`kdstore.runtime.decoder.OnnxTransducer` decodes with;
* :func:`write_tokens` writes ``piece id`` lines (``tokens.txt`` / ``vocab.txt``) with ``<blk>`` last,
  the format :func:`kdstore.runtime.layout.read_tokens` reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdstore import __version__
from kdstore.errors import ExportError
from kdstore.nemo.model_kind import tdt_durations
from kdstore.runtime.frontend import FrontEndConfig
from kdstore.runtime.layout import TDT_DURATIONS_KEY

BLANK_PIECE = "<blk>"  # onnx-asr finds blank by this name; sherpa-onnx by position (last)
SHERPA_MODEL_TYPE = "EncDecRNNTBPEModel"  # what sherpa-onnx expects for any NeMo RNN-T (hybrid too)
PROVENANCE_KEYS = ("kdstore_version", "source_sha256", "vocab_size", "blank_id")  # also on the other graphs
# sherpa-onnx treats a NeMo transducer as TDT when the encoder's ``url`` contains "tdt" (lower case).
TDT_URL = "https://arxiv.org/abs/2304.06795 (a nemo tdt model, exported by kdstore)"


def export_metadata(model: Any, frontend: FrontEndConfig, source_sha256: str) -> dict[str, str]:
    """Encoder ``metadata_props`` (all values strings): sherpa-onnx's keys first, then kdstore's.

    ``model`` is a restored NeMo transducer that passed :func:`kdstore.export.checks.check_exportable`,
    ``frontend`` its preprocessor's settings, ``source_sha256`` the .nemo's hash. A TDT joint (V+1 token
    outputs, then D duration outputs) adds ``url`` (:data:`TDT_URL`) and ``tdt_durations``. Raises
    ExportError when blank is not the last token output.
    """
    durations = tdt_durations(model)
    vocab_size = int(model.joint.num_classes_with_blank) - 1 - len(durations)  # NeMo counts durations as classes
    blank_id = int(model.decoder.blank_idx)
    if blank_id != vocab_size:
        raise ExportError(f"blank id {blank_id} is not the last token output ({vocab_size}); cannot export")
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
    if durations:
        meta["url"] = TDT_URL
        meta[TDT_DURATIONS_KEY] = ",".join(str(d) for d in durations)
    meta.update(frontend.to_metadata())
    return meta


def joint_width(metadata: Mapping[str, str]) -> int:
    """The joint's output width the encoder ``metadata`` implies: V + 1 tokens, plus D TDT durations."""
    durations = metadata.get(TDT_DURATIONS_KEY, "")
    return int(metadata["vocab_size"]) + 1 + (len(durations.split(",")) if durations else 0)


def write_tokens(model: Any, path: Path, vocab_size: int) -> Path:
    """Write ``path``: ``piece id`` per line for ids 0..V-1, then ``<blk> V``; returns ``path``.

    Raises ExportError when the tokenizer's size differs from ``vocab_size`` or a piece is empty or
    holds whitespace (the format cannot carry it).
    """
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
