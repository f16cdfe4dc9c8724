"""The NeMo student: EncDecRNNTBPEModel (or the hybrid RNNT-CTC model) plus a KD term.

Only ``training_step`` and the training/validation data setup change; everything else (decoding,
transcribe, export, save/restore) is NeMo's own. The model is saved under the plain NeMo class
(``cfg.target``), so a student loads with ``ASRModel.restore_from`` where kdstore is not installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from nemo.collections.asr.models import EncDecHybridRNNTCTCBPEModel, EncDecRNNTBPEModel

from kdstore.distill import losses
from kdstore.distill.checks import check_alignment_upfront
from kdstore.distill.augment import nemo_augment
from kdstore.distill.data import (
    AudioBatch,
    DurationBucketSampler,
    KDRows,
    StoreCollate,
    StoreOrderBatchSampler,
    TranscribedAudioDataset,
    collate,
)
from kdstore.errors import IncompatibleStoreError
from kdstore.distill.settings import KDSettings
from kdstore.lattice.rnnt_loss import VectorizedRNNTLoss
from kdstore.inputs.screening import BadInputPolicy, rules_for, screened_manifest
from kdstore.store import StoreReader
from kdstore.store.layout import label_slot_fill
from kdstore.dump.teacher import full_lattice, lattice_rows
from kdstore.nemo.frontend import front_end_from_config

PLAIN_TARGETS = {
    "rnnt": "nemo.collections.asr.models.rnnt_bpe_models.EncDecRNNTBPEModel",
    "hybrid": "nemo.collections.asr.models.hybrid_rnnt_ctc_bpe_models.EncDecHybridRNNTCTCBPEModel",
}


def collate_nemo_tuple(items):
    """Collate for NeMo's own validation step, which unpacks (signal, len, tokens, len)."""
    return collate(items).as_nemo_tuple()


def kd_node_loss(log_probs: torch.Tensor, rows: KDRows, tokens: torch.Tensor, blank: int,
                 settings: KDSettings) -> torch.Tensor:
    """Batch KD term (without tau^2) from student log-probs (B, T, U+1, V+1) and teacher rows.

    Only the k stored ids are gathered from the student; the teacher side stays k-wide.
    """
    frames, nodes = rows.logp.shape[1], rows.logp.shape[2]
    device = log_probs.device
    lattice = log_probs[:, :frames, :nodes]  # (B, T, U+1, V+1)
    mask = losses.lattice_mask(rows.frames.to(device), rows.labels.to(device), frames, nodes - 1)
    if rows.stored is not None:
        mask = mask & rows.stored.to(device)  # band stores: only the kept nodes
    teacher_logp, teacher_ids = rows.logp.to(device), rows.ids.to(device)
    if settings.top_k:
        teacher_logp, teacher_ids = losses.truncate_topk(teacher_logp, teacher_ids, settings.top_k)
    if settings.loss == "topk_rest":
        node_kl = losses.topk_rest_kl(lattice, teacher_logp, teacher_ids, settings.temperature)
    elif settings.loss == "topk_renorm":
        node_kl = losses.topk_renorm_kl(lattice, teacher_logp, teacher_ids, settings.temperature)
    else:
        u = torch.arange(nodes, device=device)[None, None, :]
        label_valid = mask & (u < rows.labels.to(device)[:, None, None])
        node_kl = losses.collapsed_kl(lattice, rows.blank_label.to(device), tokens, label_valid, blank,
                                      settings.temperature)
    weights = losses.node_weights(
        settings.weights, mask, blank_label=rows.blank_label.to(device), frames=rows.frames.to(device),
        labels=rows.labels.to(device), occupancy=rows.occupancy.to(device) if rows.occupancy is not None else None)
    return losses.reduce_nodes(node_kl, weights)


def ctc_kd_loss(ctc_log_probs: torch.Tensor, rows: KDRows, settings: KDSettings) -> torch.Tensor:
    """KD on a hybrid student's CTC head: ``topk_rest`` KL per frame against the teacher's CTC top-k,
    mean over each utterance's frames, then over the batch (same scale as the lattice term)."""
    frames = rows.ctc_logp.shape[1]
    student = ctc_log_probs[:, :frames]  # (B, T, V+1)
    teacher_logp, teacher_ids = rows.ctc_logp.to(student.device), rows.ctc_ids.to(student.device)
    if settings.top_k:
        teacher_logp, teacher_ids = losses.truncate_topk(teacher_logp, teacher_ids, settings.top_k)
    mask = torch.arange(frames, device=student.device)[None, :] < rows.frames.to(student.device)[:, None]
    return losses.reduce_nodes(losses.topk_rest_kl(student, teacher_logp, teacher_ids, settings.temperature), mask)


def check_alignment(batch: AudioBatch, rows: KDRows, encoded_len: torch.Tensor) -> None:
    """The student's T and U must equal the store's for every utterance (design section 6)."""
    for b, key in enumerate(batch.keys):
        if int(encoded_len[b]) != int(rows.frames[b]):
            raise IncompatibleStoreError(
                f"utterance {key!r}: student has {int(encoded_len[b])} encoder frames, store has "
                f"{int(rows.frames[b])}; use the teacher's preprocessor and subsampling factor, no speed perturbation"
            )
        if int(batch.tokens_len[b]) != int(rows.labels[b]):
            raise IncompatibleStoreError(
                f"utterance {key!r}: student has {int(batch.tokens_len[b])} tokens, store has {int(rows.labels[b])}; "
                "train with the store's tokenizer"
            )


class KDMixin:
    """Adds the offline (store) or online (live teacher) KD term to a NeMo transducer's training."""

    _kd_store: StoreReader | None = None

    # -- data ------------------------------------------------------------------------------
    @property
    def kd_settings(self) -> KDSettings:
        return KDSettings.from_model_config(self._cfg)

    def _kd_loader(self, data_cfg, *, with_store: bool, shuffle: bool, nemo_tuples: bool):
        skipped_file = data_cfg.get("skipped_file")
        policy = BadInputPolicy(skip_bad=bool(data_cfg.get("skip_bad", False)),
                                side_file=Path(skipped_file) if skipped_file else None,
                                listed_in=skipped_file or "<output>.skipped.jsonl")
        entries = screened_manifest(data_cfg.manifest_filepath, self.tokenizer.text_to_ids,
                                    rules_for(self, front_end_from_config(self.cfg)), policy)
        self.skipped_lines = getattr(self, "skipped_lines", 0) + len(policy.skipped)
        max_duration = data_cfg.get("max_duration")
        if max_duration:
            entries = [e for e in entries if e.duration <= float(max_duration)]
        store = None
        if with_store:
            if self._kd_store is None:
                self._kd_store = StoreReader(self.kd_settings.store)
            store = self._kd_store
            check_alignment_upfront(entries, self.tokenizer.text_to_ids, store, store.metadata.front_end)
        augment = nemo_augment(data_cfg.get("augmentor"), int(data_cfg.sample_rate)) if shuffle else None
        dataset = TranscribedAudioDataset(entries, self.tokenizer.text_to_ids, int(data_cfg.sample_rate), store,
                                          augment=augment)
        collate_fn = collate_nemo_tuple if nemo_tuples else StoreCollate(store)
        workers = int(data_cfg.get("num_workers", 0) or 0)
        if shuffle and store is not None:
            positions = [(int(store.part_of[i]), int(store.index_in_part[i]))
                         for i in (store.index_of(e.key) for e in entries)]
            sampler = StoreOrderBatchSampler(positions, int(data_cfg.batch_size), seed=torch.initial_seed() % (1 << 31))
            return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn,
                                               num_workers=workers)
        if shuffle:
            sampler = DurationBucketSampler([e.duration for e in entries], int(data_cfg.batch_size),
                                            seed=torch.initial_seed() % (1 << 31))  # set by run.seed
            return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn,
                                               num_workers=workers)
        return torch.utils.data.DataLoader(dataset, batch_size=int(data_cfg.batch_size), shuffle=False,
                                           collate_fn=collate_fn, num_workers=workers)

    def setup_training_data(self, train_data_config):
        if not train_data_config or not train_data_config.get("manifest_filepath"):
            self._train_dl = None
            return
        settings = self.kd_settings
        with_store = settings.enabled and settings.store is not None and settings.teacher_model_path is None
        self._train_dl = self._kd_loader(train_data_config, with_store=with_store,
                                         shuffle=bool(train_data_config.get("shuffle", True)), nemo_tuples=False)

    def setup_validation_data(self, val_data_config):
        if not val_data_config or not val_data_config.get("manifest_filepath"):
            self._validation_dl = None
            return
        self._validation_dl = self._kd_loader(val_data_config, with_store=False, shuffle=False, nemo_tuples=True)

    # -- losses ----------------------------------------------------------------------------
    def _transducer_loss(self, logits, tokens, encoded_len, tokens_len) -> torch.Tensor:
        choice = getattr(self, "rnnt_loss_choice", "auto")
        if choice == "kdstore" or (choice == "auto" and logits.device.type == "cpu"):
            if not hasattr(self, "_cpu_rnnt_loss"):
                object.__setattr__(self, "_cpu_rnnt_loss", VectorizedRNNTLoss(
                    blank=int(self.decoder.blank_idx), reduction=self._cfg.get("rnnt_reduction", "mean_batch")))
            return self._cpu_rnnt_loss(log_probs=logits, targets=tokens, input_lengths=encoded_len,
                                       target_lengths=tokens_len)
        return self.loss(log_probs=logits, targets=tokens, input_lengths=encoded_len, target_lengths=tokens_len)

    def _online_rows(self, batch: AudioBatch) -> KDRows:
        """Teacher rows computed live (online KD): same reduction as a dump, full k by default."""
        teacher = getattr(self, "_online_teacher", None)
        if teacher is None:
            from kdstore.nemo.checkpoint import restore_model

            rng = torch.get_rng_state()  # restore_from draws random numbers: keep runs comparable by seed
            teacher = restore_model(self.kd_settings.teacher_model_path, map_location=str(self.device))
            torch.set_rng_state(rng)
            object.__setattr__(self, "_online_teacher", teacher)  # not a submodule: not saved, not optimised
        return online_rows(teacher, batch, top_k=self.kd_settings.top_k or 0)

    def kd_term(self, log_probs: torch.Tensor, batch: AudioBatch, encoded_len: torch.Tensor) -> torch.Tensor:
        rows = batch.kd if batch.kd is not None else self._online_rows(batch)
        check_alignment(batch, rows, encoded_len)
        return kd_node_loss(log_probs, rows, batch.tokens, int(self.decoder.blank_idx), self.kd_settings)

    # -- training --------------------------------------------------------------------------
    def training_step(self, batch: AudioBatch, batch_nb: int):
        settings = self.kd_settings
        encoded, encoded_len = self.forward(input_signal=batch.signal, input_signal_length=batch.signal_len)  # (B, D, T)
        prediction, _, _ = self.decoder(targets=batch.tokens, target_length=batch.tokens_len)  # (B, H, U+1)
        logits = self.joint.joint(encoded.transpose(1, 2), prediction.transpose(1, 2))  # (B, T, U+1, V+1)
        rnnt = self._transducer_loss(logits, batch.tokens, encoded_len, batch.tokens_len)
        logs = {"train_rnnt_loss": rnnt.detach()}
        loss = rnnt
        if settings.active:
            kd = self.kd_term(logits.float().log_softmax(-1), batch, encoded_len)
            loss = (1 - settings.alpha) * rnnt + settings.alpha * settings.temperature**2 * kd
            logs["train_kd_loss"] = kd.detach()
        ctc_weight = float(getattr(self, "ctc_loss_weight", 0.0) or 0.0)
        if ctc_weight > 0:
            ctc_log_probs = self.ctc_decoder(encoder_output=encoded)  # (B, T, V+1)
            ctc = self.ctc_loss(log_probs=ctc_log_probs, targets=batch.tokens, input_lengths=encoded_len,
                                target_lengths=batch.tokens_len)
            logs["train_ctc_loss"] = ctc.detach()
            rows = batch.kd
            if settings.active and settings.ctc and rows is not None and rows.ctc_logp is not None:
                ctc_kd = ctc_kd_loss(ctc_log_probs.float().log_softmax(-1), rows, settings)
                ctc = (1 - settings.alpha) * ctc + settings.alpha * settings.temperature**2 * ctc_kd
                logs["train_ctc_kd_loss"] = ctc_kd.detach()
            loss = (1 - ctc_weight) * loss + ctc_weight * ctc
        logs["train_loss"] = loss.detach()
        logs["learning_rate"] = torch.tensor(self._optimizer.param_groups[0]["lr"]) if self._optimizer else torch.tensor(0.0)
        self.last_step_logs = {k: float(v) for k, v in logs.items()}
        self.log_dict(logs, batch_size=len(batch.keys))
        return {"loss": loss}


def online_rows(teacher, batch: AudioBatch, top_k: int = 0) -> KDRows:
    """KDRows from a live teacher on this batch (top_k 0 = the whole vocabulary)."""
    device = next(teacher.parameters()).device
    with torch.no_grad():
        log_probs, enc_len = full_lattice(teacher, batch.signal.to(device), batch.signal_len.to(device),
                                          batch.tokens.to(device), batch.tokens_len.to(device))
    classes = log_probs.shape[-1]
    k = classes if top_k <= 0 else min(top_k, classes)
    blank = int(teacher.decoder.blank_idx)
    fill = label_slot_fill(np.dtype(np.float32))
    per_utt = [lattice_rows(log_probs[b], batch.tokens[b].to(device), int(batch.tokens_len[b]), k, blank, fill)
               for b in range(log_probs.shape[0])]  # each (T, U+1, k), padded lattice
    values = torch.stack([v for v, _, _ in per_utt]).cpu()
    ids = torch.stack([i for _, i, _ in per_utt]).cpu()
    blank_label = torch.stack([bl for _, _, bl in per_utt]).cpu()
    return KDRows(logp=values, ids=ids.long(), blank_label=blank_label, frames=enc_len.cpu().long(),
                  labels=batch.tokens_len.cpu().long())


class KDRNNTModel(KDMixin, EncDecRNNTBPEModel):
    """FastConformer-Transducer student; saved as EncDecRNNTBPEModel."""


class KDHybridModel(KDMixin, EncDecHybridRNNTCTCBPEModel):
    """Hybrid RNNT-CTC student (CTC head helps small models learn on CPU); saved as the plain hybrid class."""
