"""A NeMo TDT teacher's settings and its teacher-forced token and duration log-probs (stage 1).

A Token-and-Duration Transducer (Xu et al. 2023, arXiv 2304.06795) is an ``EncDecRNNTBPEModel`` (or the
hybrid ``EncDecHybridRNNTCTCBPEModel``) whose joint emits V+1 token logits followed by D duration logits
(``joint.num_extra_outputs`` = D). The two parts are separate distributions, so they are normalised
separately here. NeMo's joint must not normalise them: with ``joint.log_softmax`` None (NeMo's default)
``RNNTJoint.joint_after_projection`` log-softmaxes all V+1+D outputs together on CPU (and not on GPU),
which mixes the two distributions. :func:`raw_joint_logits` therefore runs NeMo's own
``model.joint.joint`` with ``log_softmax`` switched off, and :func:`tdt_joint_log_probs` splits and
normalises the raw logits itself.

Where the durations come from (NeMo 3.0). ``EncDecRNNTModel.__init__`` builds its loss from
``cfg.loss.tdt_kwargs`` (``loss_name: tdt``) and then copies ``tdt_kwargs.durations`` into
``cfg.decoding.durations`` (``set_decoding_type_according_to_loss``), which greedy and beam TDT decoding
read. So the loss's list is the one the duration outputs were trained on and decoded with; NeMo's
recipes also keep it in ``model_defaults.tdt_durations``, but only as a source for interpolation, and
NeMo never reads that key itself. :func:`tdt_settings` reads ``loss.tdt_kwargs`` (``decoding.durations``
when a model carries no TDT loss config) and refuses a model whose lists disagree or do not have D entries.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdstore.errors import ConfigError, KdstoreError
from kdstore.lattice.tdt_loss import check_durations
from kdstore.nemo.teacher_forced import EncodedBatch


@dataclass(frozen=True)
class TDTSettings:
    """A TDT model's duration outputs and loss settings.

    ``durations``: frames per duration output, in joint order (output V+1+i is ``durations[i]``).
    ``sigma``, ``omega``: its ``loss.tdt_kwargs`` (logit under-normalisation; weight of the plain RNN-T
    loss), 0.0 when absent (NeMo's defaults).
    """

    durations: tuple[int, ...]
    sigma: float = 0.0
    omega: float = 0.0


def _listed(cfg: Any, section: str, key: str) -> tuple[int, ...] | None:
    part = cfg.get(section, None) if cfg is not None else None
    value = part.get(key, None) if part is not None else None
    return tuple(int(d) for d in value) if value is not None and len(value) else None


def tdt_settings(model: Any, path: str | Path = "") -> TDTSettings:
    """The durations and loss settings of a NeMo TDT model (``joint.num_extra_outputs`` = D > 0).

    Raises:
        KdstoreError: the model lists no durations, lists of ``loss.tdt_kwargs``, ``decoding`` and
            ``model_defaults`` disagree, the list does not have D entries, or it breaks NeMo's rules
            (ascending, with 0 and 1). One line naming ``path``.
    """
    where = f"{path}: " if path else ""
    name = type(model).__name__
    extra = int(getattr(model.joint, "num_extra_outputs", 0) or 0)
    cfg = getattr(model, "cfg", None)
    loss = cfg.get("loss", None) if cfg is not None else None
    kwargs = loss.get("tdt_kwargs", None) if loss is not None else None
    found = {"loss.tdt_kwargs.durations": _listed(loss, "tdt_kwargs", "durations") if loss is not None else None,
             "decoding.durations": _listed(cfg, "decoding", "durations"),
             "model_defaults.tdt_durations": _listed(cfg, "model_defaults", "tdt_durations")}
    lists = {key: value for key, value in found.items() if value is not None}
    if not lists:
        raise KdstoreError(f"{where}{name} has a TDT joint ({extra} duration outputs) but its config lists no durations "
                           "(loss.tdt_kwargs.durations); it is not a NeMo TDT model kdstore can read")
    if len(set(lists.values())) > 1:
        described = ", ".join(f"{key} = {list(value)}" for key, value in lists.items())
        raise KdstoreError(f"{where}{name}: its duration lists disagree ({described}); NeMo trains and decodes with "
                           "loss.tdt_kwargs.durations: make the others equal to it")
    durations = next(iter(lists.values()))
    if len(durations) != extra:
        raise KdstoreError(f"{where}{name}: the joint has {extra} duration outputs but the config lists {len(durations)} "
                           f"durations {list(durations)}; the model is inconsistent")
    try:
        check_durations(durations)
    except ConfigError as err:
        raise KdstoreError(f"{where}{name}: {err}") from None
    sigma = float(kwargs.get("sigma", 0.0) or 0.0) if kwargs is not None else 0.0
    omega = float(kwargs.get("omega", 0.0) or 0.0) if kwargs is not None else 0.0
    return TDTSettings(durations=durations, sigma=sigma, omega=omega)


@contextmanager
def _without_log_softmax(joint: Any) -> Iterator[None]:
    """NeMo's joint with ``log_softmax`` off (raw logits on every device); restored afterwards."""
    before = joint.log_softmax
    joint.log_softmax = False
    try:
        yield
    finally:
        joint.log_softmax = before


def raw_joint_logits(model: Any, encoded: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """NeMo's joint on (B, D_enc, T) encoder and (B, H, U+1) prediction outputs -> raw logits
    (B, T, U+1, V+1+D): no log-softmax and no temperature (``model.joint.joint`` with ``log_softmax``
    switched off)."""
    with _without_log_softmax(model.joint):
        return model.joint.joint(encoded.transpose(1, 2), prediction.transpose(1, 2))


def split_log_probs(logits: torch.Tensor, num_durations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw TDT joint logits (..., V+1+D) -> token log-probs (..., V+1) and duration log-probs (..., D),
    float32, each ``log_softmax``-ed over its own part (nats; blank = V, the last token)."""
    logits = logits.float()
    return logits[..., :-num_durations].log_softmax(-1), logits[..., -num_durations:].log_softmax(-1)


def tdt_joint_log_probs(model: Any, encoded: torch.Tensor, prediction: torch.Tensor,
                        num_durations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, D_enc, T) x (B, H, U+1) -> token log-probs (B, T, U+1, V+1) and duration log-probs
    (B, T, U+1, D) of a TDT teacher, normalised separately (:func:`split_log_probs`)."""
    return split_log_probs(raw_joint_logits(model, encoded, prediction), num_durations)


def tdt_time_sliced_log_probs(model: Any, batch: EncodedBatch, frames_per_slice: int,
                              num_durations: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield (t0, token log-probs[:, t0:t0+n], duration log-probs[:, t0:t0+n]) so callers reduce each slice
    (top-k) before the next: the TDT twin of ``teacher_forced.time_sliced_log_probs``."""
    total = batch.encoded.shape[-1]
    for t0 in range(0, total, frames_per_slice):
        tokens, durations = tdt_joint_log_probs(model, batch.encoded[..., t0 : t0 + frames_per_slice], batch.prediction,
                                                num_durations)
        yield t0, tokens, durations
