"""The NeMo student: EncDecRNNTBPEModel (or the hybrid RNNT-CTC model) plus a KD term.

Only ``training_step`` and the training/validation data setup change; everything else (decoding,
transcribe, export, save/restore) is NeMo's own. The model is saved under the plain NeMo class
(``cfg.target``), so a student loads with ``ASRModel.restore_from`` where kdstore is not installed.
The KD term itself is :mod:`kdstore.distill.kd_term`; the loaders' samplers :mod:`kdstore.distill.samplers`.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import torch
from nemo.collections.asr.models import EncDecHybridRNNTCTCBPEModel, EncDecRNNTBPEModel

from kdstore.distill import losses
from kdstore.distill.augment import nemo_augment
from kdstore.distill.checks import check_alignment_upfront, stored_label_ids
from kdstore.distill.config import DataSection, KDSettings, StepKeys, TrainDataSection, step_keys, typed
from kdstore.distill.data import KDBatch, KDRows, StoreCollate
from kdstore.distill.delay import align_rows
from kdstore.distill.kd_term import check_alignment, ctc_kd_loss, duration_kd_loss, kd_node_loss, online_rows
from kdstore.distill.samplers import DurationBucketSampler, StoreOrderBatchSampler
from kdstore.inputs.batches import TranscribedAudioDataset, collate_nemo_tuple
from kdstore.inputs.screening import BadInputPolicy, duration_filter, rules_for, screened_manifest
from kdstore.lattice.rnnt_loss import VectorizedRNNTLoss
from kdstore.lattice.tdt_loss import VectorizedTDTLoss
from kdstore.nemo.frontend import front_end_from_config
from kdstore.nemo.model_kind import tdt_durations
from kdstore.store import StoreSet, split_paths

PLAIN_TARGETS = {
    "rnnt": "nemo.collections.asr.models.rnnt_bpe_models.EncDecRNNTBPEModel",
    "hybrid": "nemo.collections.asr.models.hybrid_rnnt_ctc_bpe_models.EncDecHybridRNNTCTCBPEModel",
}


def _data_summary(entries, teacher_labelled: int | None, policy: BadInputPolicy, filtered: list, section: str,
                  data: DataSection) -> str:
    """The line ``train-student`` prints before training: what it will train on and what was left out, and why."""
    hours = sum(e.duration for e in entries) / 3600
    line = f"training data: {len(entries)} utterances ({hours:.3f} h)"
    if teacher_labelled is not None:
        line += f", {teacher_labelled} of them on the teacher's own labels (pseudo-labels)"
    if policy.left_out:
        files = ", ".join(sorted({why.split(" in ", 1)[-1] + ".skipped.jsonl" for _, why in policy.left_out}))
        line += (f"; {len(policy.left_out)} manifest lines left out, as dump-teacher decided (low teacher confidence "
                 f"or no words; listed in {files})")
    for kind, bound in (("over_max_duration", "max_duration"), ("under_min_duration", "min_duration")):
        count = sum(item.kind == kind for item in filtered)
        if count:
            line += (f"; {count} left out by {section}.{bound}={getattr(data, bound)} s (listed in "
                     f"{policy.side_file or 'no file: set ' + section + '.skipped_file'})")
    return line


class KDMixin:
    """Adds the offline (store) or online (live teacher) KD term to a NeMo transducer's training."""

    _kd_store: StoreSet | None = None

    # -- settings (typed views of NeMo's model config, read once) -------------------------
    @cached_property
    def step_keys(self) -> StepKeys:
        return step_keys(self._cfg)

    @cached_property
    def kd_settings(self) -> KDSettings:
        return KDSettings.of(self.step_keys)

    # -- data ------------------------------------------------------------------------------
    def _kd_loader(self, data: DataSection, *, with_store: bool) -> torch.utils.data.DataLoader:
        """Screened manifest(s) -> loader. Training (``TrainDataSection``): shuffled duration buckets (store
        order with a store), augmented audio, ``KDBatch``; validation: manifest order, NeMo's tuples.

        ``manifest_filepath`` may name several manifests (``a.json,b.json``). With a store, lines without
        text train on the store's label (the teacher's pseudo-label), and the KD rows are attached when
        KD is on."""
        train = isinstance(data, TrainDataSection)
        policy = BadInputPolicy(skip_bad=data.skip_bad, side_file=Path(data.skipped_file) if data.skipped_file else None,
                                listed_in=data.skipped_file or "<output>.skipped.jsonl", reset_side_file=train)
        store = self._stores() if with_store else None
        stored_ids = left_out = None
        if store is not None:
            def left_out(entry):
                found = store.left_out(entry.key) if entry.key not in store else None
                return None if found is None else f"{found[1]} in {found[0]}"

            def stored_ids(entry):
                return stored_label_ids(store, entry)
        rules = rules_for(self, front_end_from_config(self.cfg))
        seen: dict = {}  # one utterance once across all the manifests
        entries = [entry for manifest in split_paths(data.manifest_filepath)
                   for entry in screened_manifest(manifest, self.tokenizer.text_to_ids, rules, policy, labels=stored_ids,
                                                  leave_out=left_out, seen=seen)]
        bad = len(policy.skipped)
        self.skipped_lines = getattr(self, "skipped_lines", 0) + bad
        section = "model.train_ds" if train else "model.validation_ds"
        entries = duration_filter(entries, policy, min_duration=data.min_duration, max_duration=data.max_duration,
                                  setting=section)
        filtered = policy.skipped[bad:]
        labels = None
        if store is not None:
            labels = check_alignment_upfront(entries, self.tokenizer.text_to_ids, store, store.metadata.front_end)
            self._teacher_causal = bool(store.metadata.front_end.causal_downsampling)
            self.teacher_labelled = sum(1 for e in entries if (lab := store.label(e.key)) is not None
                                        and lab.source == "teacher")
        if train:
            self.left_out_by_dump = len(policy.left_out)
            self.left_out_by_duration = len(filtered)
            self.train_data_summary = _data_summary(entries, getattr(self, "teacher_labelled", 0) if store else None,
                                                    policy, filtered, section, data)
        shuffle = train and data.shuffle
        augment = nemo_augment(data.augmentor, data.sample_rate) if train else None
        dataset = TranscribedAudioDataset(entries, self.tokenizer.text_to_ids, data.sample_rate, augment=augment,
                                          labels=labels)
        rows_store = store if store is not None and self.kd_settings.active else None
        loader = {"collate_fn": StoreCollate(rows_store) if train else collate_nemo_tuple,
                  "num_workers": data.num_workers, "pin_memory": data.pin_memory}
        seed = torch.initial_seed() % (1 << 31)  # set by run.seed
        if shuffle and store is not None:
            sampler = StoreOrderBatchSampler([store.position(e.key) for e in entries], data.batch_size, seed=seed)
            return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, **loader)
        if shuffle:
            sampler = DurationBucketSampler([e.duration for e in entries], data.batch_size, seed=seed)
            return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, **loader)
        return torch.utils.data.DataLoader(dataset, batch_size=data.batch_size, shuffle=False, **loader)

    def _stores(self) -> StoreSet:
        """The teacher's store(s) (``model.kd.store``: one path or several, comma-separated), opened once."""
        if self._kd_store is None:
            self._kd_store = StoreSet(split_paths(self.kd_settings.store))
        return self._kd_store

    def setup_training_data(self, train_data_config):
        data = typed(TrainDataSection, train_data_config or {}, "model.train_ds")
        if not data.manifest_filepath:
            self._train_dl = None
            return
        settings = self.kd_settings
        with_store = settings.store is not None and settings.teacher_model_path is None
        self._train_dl = self._kd_loader(data, with_store=with_store)

    def setup_validation_data(self, val_data_config):
        data = typed(DataSection, val_data_config or {}, "model.validation_ds")
        if not data.manifest_filepath:
            self._validation_dl = None
            return
        self._validation_dl = self._kd_loader(data, with_store=False)

    # -- losses ----------------------------------------------------------------------------
    @property
    def tdt_durations(self) -> tuple[int, ...]:
        """The TDT joint's durations (frames), () for an RNN-T joint (:func:`kdstore.nemo.model_kind.tdt_durations`)."""
        return tdt_durations(self)

    def _transducer_loss(self, logits, tokens, encoded_len, tokens_len, per_utterance: bool = False) -> torch.Tensor:
        """RNN-T (or, for a TDT joint, TDT) loss of the batch (``model.rnnt_reduction``), or (B,) per utterance
        with ``per_utterance``. On CPU kdstore's vectorised losses replace NeMo's, which run on CUDA only (TDT)
        or loop in Python (RNN-T): :mod:`kdstore.lattice.rnnt_loss`, :mod:`kdstore.lattice.tdt_loss`."""
        choice = getattr(self, "rnnt_loss_choice", "auto")
        if choice == "kdstore" or (choice == "auto" and logits.device.type == "cpu"):
            if not hasattr(self, "_cpu_rnnt_loss"):
                blank, reduction = int(self.decoder.blank_idx), self.step_keys.rnnt_reduction
                if self.tdt_durations:
                    tdt = self.cfg.loss.get("tdt_kwargs", None) or {}
                    loss = VectorizedTDTLoss(blank=blank, durations=self.tdt_durations,
                                             sigma=float(tdt.get("sigma", 0.0)), omega=float(tdt.get("omega", 0.0)),
                                             reduction=reduction)
                else:
                    loss = VectorizedRNNTLoss(blank=blank, reduction=reduction)
                object.__setattr__(self, "_cpu_rnnt_loss", loss)
            loss_fn = self._cpu_rnnt_loss
        else:
            loss_fn = self.loss
        kept = loss_fn.reduction
        loss_fn.reduction = None if per_utterance else kept  # both losses reduce only when it is set
        try:
            return loss_fn(log_probs=logits, targets=tokens, input_lengths=encoded_len, target_lengths=tokens_len)
        finally:
            loss_fn.reduction = kept

    def _ctc_per_utterance(self, ctc_log_probs, tokens, encoded_len, tokens_len) -> torch.Tensor | None:
        """NeMo's CTC loss per utterance (B,), or None when its reduction cannot be undone (mean, sum)."""
        if getattr(self.ctc_loss, "config_reduction", None) not in ("mean_batch", "mean_volume"):
            return None
        self.ctc_loss._apply_reduction = False
        try:
            return self.ctc_loss(log_probs=ctc_log_probs, targets=tokens, input_lengths=encoded_len,
                                 target_lengths=tokens_len)
        finally:
            self.ctc_loss._apply_reduction = True

    def utterance_alphas(self, batch: KDBatch) -> torch.Tensor | None:
        """kd_alpha per utterance (B,) when ``model.kd.pseudo_label_alpha`` sets another one for teacher
        labels and the batch has some; None: one kd_alpha for the batch."""
        settings, rows = self.kd_settings, batch.kd
        if (not settings.active or settings.pseudo_label_alpha is None or rows is None or rows.teacher_label is None
                or not bool(rows.teacher_label.any())):
            return None
        return torch.where(rows.teacher_label, settings.pseudo_label_alpha, settings.alpha).float()

    def _online_rows(self, batch: KDBatch) -> KDRows:
        """Teacher rows computed live (online KD): same reduction as a dump, full k by default."""
        teacher = getattr(self, "_online_teacher", None)
        if teacher is None:
            from kdstore.nemo.checkpoint import restore_model

            rng = torch.get_rng_state()  # restore_from draws random numbers: keep runs comparable by seed
            from kdstore.nemo.model_kind import check_model_for

            teacher = restore_model(self.kd_settings.teacher_model_path, map_location=str(self.device))
            check_model_for("train-student (online KD, model.teacher_model_path)", teacher,
                            self.kd_settings.teacher_model_path, subword=True)
            torch.set_rng_state(rng)
            object.__setattr__(self, "_online_teacher", teacher)  # not a submodule: not saved, not optimised
        return online_rows(teacher, batch, top_k=self.kd_settings.top_k or 0)

    def _extra_frames(self) -> tuple[int, ...]:
        """Allowed T_student - T_teacher: (0,), or one frame either way when exactly one of them has a causal
        subsampling stack (:func:`kdstore.frames.causal_extra_frames`)."""
        student = bool(self.cfg.encoder.get("causal_downsampling", False))
        teacher = getattr(self, "_teacher_causal", None)
        if teacher is None and self.kd_settings.teacher_model_path and hasattr(self, "_online_teacher"):
            teacher = bool(self._online_teacher.cfg.encoder.get("causal_downsampling", False))
        if teacher is None or teacher == student:
            return (0,)
        return (0, 1) if student else (0, -1)

    def step_rows(self, batch: KDBatch, encoded_len: torch.Tensor, frames_out: int) -> KDRows:
        """The teacher's rows for this batch (stored, else live) checked against the student's T and U and put
        on its frame grid (B, frames_out, U+1, k), ``model.kd.delay_frames`` later (:mod:`kdstore.distill.delay`)."""
        rows = batch.kd if batch.kd is not None else self._online_rows(batch)
        check_alignment(batch, rows, encoded_len, self._extra_frames())
        return align_rows(rows, encoded_len, frames_out, self.kd_settings.delay_frames)

    def kd_term(self, log_probs: torch.Tensor, batch: KDBatch, encoded_len: torch.Tensor,
                per_utterance: bool = False, rows: KDRows | None = None) -> torch.Tensor:
        """KD term (without tau^2) for student log-probs (B, T, U+1, V+1): ``rows`` (:meth:`step_rows`), else
        the batch's stored rows, else live ones."""
        if rows is None:
            rows = self.step_rows(batch, encoded_len, log_probs.shape[1])
        return kd_node_loss(log_probs, rows, batch.tokens, int(self.decoder.blank_idx), self.kd_settings,
                            per_utterance)

    # -- training --------------------------------------------------------------------------
    def training_step(self, batch: KDBatch, batch_nb: int):
        """loss = (1 - a) * RNN-T + a * tau^2 * KD, per utterance a = kd_alpha (pseudo_label_alpha for teacher
        labels when set), then (1 - w) * that + w * the same mix of CTC and CTC KD for hybrids (weight w).

        TDT students: TDT loss instead of RNN-T; KD on the token distribution (the joint's first V+1 outputs,
        normalised on their own) plus ``model.kd.duration_weight`` x duration KD when the store is a TDT
        teacher's (:func:`kdstore.distill.kd_term.duration_kd_loss`). An RNN-T student of a TDT teacher's
        store learns the token distributions only."""
        settings = self.kd_settings
        encoded, encoded_len = self.forward(input_signal=batch.signal, input_signal_length=batch.signal_len)  # (B, D, T)
        prediction, _, _ = self.decoder(targets=batch.tokens, target_length=batch.tokens_len)  # (B, H, U+1)
        logits = self.joint.joint(encoded.transpose(1, 2), prediction.transpose(1, 2))  # (B, T, U+1, V+1)
        alphas = self.utterance_alphas(batch)
        reduction = self.step_keys.rnnt_reduction
        if alphas is None:
            rnnt = self._transducer_loss(logits, batch.tokens, encoded_len, batch.tokens_len)
            loss = rnnt
        else:
            alphas = alphas.to(logits.device)
            rnnt_utt = self._transducer_loss(logits, batch.tokens, encoded_len, batch.tokens_len, per_utterance=True)
            rnnt = losses.weighted_reduce(rnnt_utt, torch.ones_like(alphas), batch.tokens_len, reduction)
        logs = {"train_rnnt_loss": rnnt.detach()}
        rows = self.step_rows(batch, encoded_len, logits.shape[1]) if settings.active else None
        if settings.active:
            durations = len(self.tdt_durations)  # TDT joint: V+1 token logits, then D duration logits
            tokens_logits = logits[..., : logits.shape[-1] - durations] if durations else logits
            log_probs = tokens_logits.float().log_softmax(-1)
            duration_kd = durations and settings.duration_weight > 0 and getattr(rows, "duration_logp", None) is not None
            if duration_kd:
                duration_log_probs = logits[..., -durations:].float().log_softmax(-1)  # (B, T, U+1, D)
            if alphas is None:
                kd = self.kd_term(log_probs, batch, encoded_len, rows=rows)
                if duration_kd:
                    kd_duration = duration_kd_loss(duration_log_probs, rows, settings)
                    logs["train_duration_kd_loss"] = kd_duration.detach()
                    kd = kd + settings.duration_weight * kd_duration
                loss = (1 - settings.alpha) * rnnt + settings.alpha * settings.temperature**2 * kd
            else:
                kd_utt = self.kd_term(log_probs, batch, encoded_len, per_utterance=True, rows=rows)
                if duration_kd:
                    kd_duration_utt = duration_kd_loss(duration_log_probs, rows, settings, per_utterance=True)
                    logs["train_duration_kd_loss"] = kd_duration_utt.mean().detach()
                    kd_utt = kd_utt + settings.duration_weight * kd_duration_utt
                kd = kd_utt.mean()
                loss = losses.mix_per_utterance(rnnt_utt, kd_utt, alphas, batch.tokens_len, reduction,
                                                settings.temperature)
            logs["train_kd_loss"] = kd.detach()
        ctc_weight = float(getattr(self, "ctc_loss_weight", 0.0) or 0.0)
        if ctc_weight > 0:
            ctc_log_probs = self.ctc_decoder(encoder_output=encoded)  # (B, T, V+1)
            ctc_kd_on = settings.active and settings.ctc and rows is not None and rows.ctc_logp is not None
            ctc_utt = self._ctc_per_utterance(ctc_log_probs, batch.tokens, encoded_len, batch.tokens_len) \
                if alphas is not None and ctc_kd_on else None
            if ctc_utt is None:
                ctc = self.ctc_loss(log_probs=ctc_log_probs, targets=batch.tokens, input_lengths=encoded_len,
                                    target_lengths=batch.tokens_len)
                logs["train_ctc_loss"] = ctc.detach()
                if ctc_kd_on:
                    ctc_kd = ctc_kd_loss(ctc_log_probs.float().log_softmax(-1), rows, settings)
                    ctc = (1 - settings.alpha) * ctc + settings.alpha * settings.temperature**2 * ctc_kd
                    logs["train_ctc_kd_loss"] = ctc_kd.detach()
            else:
                ctc_reduction = self.ctc_loss.config_reduction
                logs["train_ctc_loss"] = losses.weighted_reduce(ctc_utt, torch.ones_like(alphas), batch.tokens_len,
                                                                ctc_reduction).detach()
                ctc_kd_utt = ctc_kd_loss(ctc_log_probs.float().log_softmax(-1), rows, settings, per_utterance=True)
                ctc = losses.mix_per_utterance(ctc_utt, ctc_kd_utt, alphas, batch.tokens_len, ctc_reduction,
                                               settings.temperature)
                logs["train_ctc_kd_loss"] = ctc_kd_utt.mean().detach()
            loss = (1 - ctc_weight) * loss + ctc_weight * ctc
        logs["train_loss"] = loss.detach()
        if not bool(torch.isfinite(loss)):
            self._stop_on_non_finite(logs, batch)
        logs["learning_rate"] = torch.tensor(self._optimizer.param_groups[0]["lr"]) if self._optimizer else torch.tensor(0.0)
        self.last_step_logs = {k: float(v) for k, v in logs.items()}
        self.log_dict(logs, batch_size=len(batch.keys))
        return {"loss": loss}


    def _stop_on_non_finite(self, logs: dict[str, torch.Tensor], batch: KDBatch) -> None:
        """Raise ``TrainingError`` naming the step, the non-finite terms and the batch's utterances: one NaN
        step would turn every weight into NaN, so training stops and nothing is saved."""
        from kdstore.errors import TrainingError

        terms = ", ".join(f"{name.removeprefix('train_')}={float(value)}" for name, value in logs.items())
        shown = ", ".join(batch.keys[:8]) + (f" and {len(batch.keys) - 8} more" if len(batch.keys) > 8 else "")
        step = int(self.trainer.global_step) + 1 if self._trainer is not None else 0
        raise TrainingError(f"step {step}: the training loss is not finite ({terms}) on the batch of utterances "
                            f"{shown}; nothing was saved: check those utterances (audio, labels, their store rows "
                            "with kdstore inspect --verify) or lower the learning rate")


class KDRNNTModel(KDMixin, EncDecRNNTBPEModel):
    """FastConformer-Transducer student; saved as EncDecRNNTBPEModel."""


class KDHybridModel(KDMixin, EncDecHybridRNNTCTCBPEModel):
    """Hybrid RNNT-CTC student (CTC head helps small models learn on CPU); saved as the plain hybrid class."""
