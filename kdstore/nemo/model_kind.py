"""Which NeMo ASR models each command serves, checked right after restore with one sentence each.

kdstore works on transducers. ``eval`` needs only NeMo's own decoding, so it scores any RNN-T
(or hybrid) model, BPE or character vocabulary. ``dump-teacher``, online KD and ``export-onnx`` need
token pieces: the store records the teacher's SentencePiece model and the student trains on it, and
the export writes ``tokens.txt`` from it; character-vocabulary models (``EncDecRNNTModel`` with
``labels``) are refused there. TDT joints (token + duration outputs) are served by ``dump-teacher``
(``kdstore/3`` stores, :mod:`kdstore.nemo.tdt`), ``train-student`` (``-tdt`` configs), the offline
``export-onnx`` and ``eval``; commands that call :func:`check_model_for` without ``tdt=True`` (the streaming
export, online KD) refuse them in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdstore.errors import KdstoreError

SUBWORD_CLASSES = "EncDecRNNTBPEModel or EncDecHybridRNNTCTCBPEModel"
CHARACTER_CLASSES = "EncDecRNNTModel or EncDecHybridRNNTCTCModel with labels"


def is_transducer(model: Any) -> bool:
    """The model has an RNN-T prediction net and joint (RNN-T, hybrid RNN-T/CTC or TDT)."""
    return hasattr(model, "joint") and hasattr(model, "decoder") and hasattr(model, "decoding")


def is_tdt(model: Any) -> bool:
    """The joint emits duration logits after the V+1 token logits (Token-and-Duration Transducer)."""
    return bool(getattr(getattr(model, "joint", None), "num_extra_outputs", 0))


def tdt_durations(model: Any) -> tuple[int, ...]:
    """The durations (in encoder frames) of a TDT model's duration outputs, in joint order; () for RNN-T.

    Read where NeMo 3.0 reads them: the loss's ``tdt_kwargs.durations`` (the loss is built from it and
    ``__init__`` copies it into ``decoding.durations``), else ``decoding.durations``, else
    ``model_defaults.tdt_durations``. Raises :class:`KdstoreError` when a TDT joint
    (``joint.num_extra_outputs`` = D > 0) has no durations list of length D.
    """
    extra = int(getattr(getattr(model, "joint", None), "num_extra_outputs", 0) or 0)
    if not extra:
        return ()
    cfg = getattr(model, "cfg", None)
    durations = config_tdt_durations(cfg) if cfg is not None else ()
    if len(durations) != extra:
        raise KdstoreError(f"{type(model).__name__}: a TDT joint with {extra} duration outputs, but its config lists "
                           f"durations {list(durations)}; set model_defaults.tdt_durations to {extra} durations")
    return durations


def config_tdt_durations(cfg: Any) -> tuple[int, ...]:
    """The TDT durations a NeMo model config (``model:`` section) declares, in the order :func:`tdt_durations`
    reads them; () when it declares none (an RNN-T config)."""
    loss = cfg.get("loss", None)
    kwargs = loss.get("tdt_kwargs", None) if loss is not None else None
    candidates = [(kwargs, "durations"), (cfg.get("decoding", None), "durations"),
                  (cfg.get("model_defaults", None), "tdt_durations")]
    found = next((part.get(key) for part, key in candidates if part is not None and part.get(key, None) is not None),
                 None)
    return tuple(int(d) for d in found) if found is not None else ()


def has_subword_tokenizer(model: Any) -> bool:
    """The model carries a SentencePiece tokenizer (BPE classes), not a character ``labels`` list."""
    return getattr(model, "tokenizer", None) is not None


def check_model_for(command: str, model: Any, path: str | Path, *, subword: bool, tdt: bool = False,
                    error: type[KdstoreError] = KdstoreError) -> None:
    """Raise ``error`` in one sentence when ``model`` (restored from ``path``) is not one ``command`` serves:
    not a transducer; a TDT joint unless ``tdt``; a character vocabulary when ``subword`` is needed."""
    name = type(model).__name__
    if not is_transducer(model):
        raise error(f"{path}: {name} is not a transducer (no RNN-T joint); kdstore {command} serves NeMo RNN-T and "
                    f"hybrid RNN-T/CTC models ({SUBWORD_CLASSES}" + (f"; or {CHARACTER_CLASSES})" if not subword else ")"))
    if is_tdt(model) and not tdt:
        raise error(f"{path}: {name} is a TDT model (token-and-duration joint); kdstore {command} serves RNN-T "
                    f"joints only ({SUBWORD_CLASSES})")
    if subword and not has_subword_tokenizer(model):
        raise error(f"{path}: {name} has a character vocabulary (labels, no SentencePiece tokenizer); kdstore "
                    f"{command} needs token pieces, so a BPE model ({SUBWORD_CLASSES}); kdstore eval scores "
                    "character models")
