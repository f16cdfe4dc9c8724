"""Shared pytest fixtures: tiny artefacts built once per session and reused by many tests."""

from __future__ import annotations

import pytest

# Fixtures that synthesise speech (Debian TTS engines) or train a model. A test that needs one,
# directly or through another fixture, is `slow` without saying so: `pytest -m "not slow"` is the fast
# inner loop (no TTS engine, nothing trained, under a minute on 2 cores).
HEAVY_FIXTURES = frozenset({"demo_corpus", "emitting_model", "emitting_streaming_model", "emitting_tdt_model"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory: pytest.TempPathFactory):
    """A tiny commands demo corpus (~0.03 h, seed 0, ~40 utterances from all installed TTS engines).

    Built once per session (~10 s on 2 CPU cores); returns a ``kdstore.corpus.DemoCorpus``.
    """
    from kdstore.corpus import prepare_demo

    out = tmp_path_factory.mktemp("demo_corpus")
    return prepare_demo(out, task="commands", hours=0.03, seed=0, num_jobs=2)


# ---------------------------------------------------------------------------------------------
# A tiny transducer that actually emits tokens (export and runtime-agreement tests).
# ---------------------------------------------------------------------------------------------
EMITTING_UTTERANCES = 10  # the shortest train utterances of the demo corpus, memorised by the model


def _overfit_tiny(demo_corpus, out_dir, config_name: str, hybrid: bool, max_steps: int, settle_steps: int = 0,
                  tdt: bool = False):
    """Train a tiny model of ``config_name`` on the 10 shortest demo training utterances until it emits (see
    ``emitting_model``), then ``settle_steps`` more steps so that its transcripts do not sit on a decision
    boundary (a model stopped the moment it first emits can flip a word under int8 weights or another CPU's
    float order); returns the saved .nemo path (``train.json`` and ``train_log.json`` beside it). ``tdt``: the
    config is a TDT one and the loss is kdstore's TDT loss with the config's durations (sigma = omega = 0, so
    that the loss is the negative log-likelihood the 0.3 threshold is about)."""
    import json
    import time
    from pathlib import Path

    import soundfile
    import torch
    from omegaconf import OmegaConf

    rows = [json.loads(line) for line in Path(demo_corpus.train_manifest).read_text().splitlines() if line.strip()]
    rows = sorted(rows, key=lambda r: r["duration"])[:EMITTING_UTTERANCES]
    (out_dir / "train.json").write_text("".join(json.dumps(r) + "\n" for r in rows))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rng_state = torch.get_rng_state()
    torch.manual_seed(0)
    settled = None
    try:
        from nemo.collections.asr.models import EncDecHybridRNNTCTCBPEModel, EncDecRNNTBPEModel

        from kdstore.distill.config import load_train_config
        from kdstore.lattice.rnnt_loss import rnnt_loss

        cfg = OmegaConf.create(OmegaConf.to_container(load_train_config(config_name).model, resolve=True))
        for key in ("enable_kd", "kd_alpha", "kd_temperature", "teacher_model_path", "kd", "optim",
                    "spec_augment", "train_ds"):  # kdstore-only keys; no data loaders needed
            cfg.pop(key, None)
        cfg.tokenizer.dir = str(demo_corpus.tokenizer_dir)
        model = (EncDecHybridRNNTCTCBPEModel if hybrid else EncDecRNNTBPEModel)(cfg=cfg)
        if tdt:
            from kdstore.lattice.tdt_loss import tdt_loss

            tdt_settings = {"durations": list(cfg.model_defaults.tdt_durations)}  # sigma = omega = 0: a likelihood

        waves = [soundfile.read(r["audio_filepath"], dtype="float32")[0] for r in rows]
        audio_len = torch.tensor([len(w) for w in waves])
        audio = torch.zeros(len(waves), int(audio_len.max()))  # (B, samples)
        for i, wave in enumerate(waves):
            audio[i, : len(wave)] = torch.from_numpy(wave)
        ids = [model.tokenizer.text_to_ids(r["text"]) for r in rows]
        target_len = torch.tensor([len(t) for t in ids])
        targets = torch.zeros(len(ids), int(target_len.max()), dtype=torch.long)  # (B, U)
        for i, t in enumerate(ids):
            targets[i, : len(t)] = torch.tensor(t)

        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        start = time.perf_counter()
        for step in range(1, max_steps + 1):
            model.train()
            enc, enc_len = model.forward(input_signal=audio, input_signal_length=audio_len)  # (B, D, T)
            pred, _, _ = model.decoder(targets=targets, target_length=target_len)  # (B, H, U+1)
            logits = model.joint.joint(enc.transpose(1, 2), pred.transpose(1, 2))  # (B, T, U+1, V+1)
            if tdt:  # the joint's CPU log-softmax over all V+1+D outputs is a shift that tdt_loss's split cancels
                loss = tdt_loss(logits, targets, enc_len, target_len, blank=model.decoder.blank_idx, **tdt_settings)
            else:
                loss = rnnt_loss(logits, targets, enc_len, target_len, blank=model.decoder.blank_idx)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if settled is not None:
                if step >= settled + settle_steps:
                    break
                continue
            if step % 10 == 0 and loss.item() < 0.3:
                model.eval()
                with torch.no_grad():
                    enc, enc_len = model.forward(input_signal=audio, input_signal_length=audio_len)
                    hyps = model.decoding.rnnt_decoder_predictions_tensor(encoder_output=enc, encoded_lengths=enc_len)
                if sum(bool(h.text.strip()) for h in hyps) >= 0.8 * len(rows):
                    settled = step
                    if not settle_steps:
                        break
        model.eval()
        path = out_dir / "model.nemo"
        model.save_to(str(path))
        log = {"steps": step, "emitting_at": settled, "seconds": round(time.perf_counter() - start, 1), "loss": round(loss.item(), 4)}
        (out_dir / "train_log.json").write_text(json.dumps(log) + "\n")
    finally:
        torch.set_rng_state(rng_state)
        torch.set_num_threads(threads)
    return path


@pytest.fixture(scope="session")
def emitting_model(demo_corpus, tmp_path_factory: pytest.TempPathFactory):
    """Path of a tiny EncDecRNNTBPEModel (.nemo) overfitted on 10 demo utterances, so it emits tokens.

    A model that emits only blanks proves nothing about an export. Built from
    the ``tiny`` config (no SpecAugment) with a plain torch loop: Adam 3e-3, all 10
    utterances in one batch, kdstore's vectorised RNN-T loss, until the loss is below 0.3 and most
    greedy transcripts are non-empty (~150 steps, ~30 s on one idle core). The utterances it saw are in
    ``train.json`` beside it (see ``emitting_manifest``).
    """
    return _overfit_tiny(demo_corpus, tmp_path_factory.mktemp("emitting_model"), "tiny", hybrid=False, max_steps=300)


@pytest.fixture(scope="session")
def emitting_manifest(emitting_model):
    """The NeMo manifest of the utterances ``emitting_model`` memorised."""
    return emitting_model.with_name("train.json")


@pytest.fixture(scope="session")
def emitting_streaming_model(demo_corpus, tmp_path_factory: pytest.TempPathFactory):
    """Path of a tiny cache-aware streaming hybrid (.nemo) overfitted on ``emitting_model``'s 10 utterances.

    The ``tiny-streaming`` config (kdstore/configs/_streaming.yaml: chunked_limited attention with the
    contexts [[70, 6], [70, 13], [70, 1], [70, 0]], causal convolutions and downsampling, normalize NA)
    as a plain ``EncDecHybridRNNTCTCBPEModel``, trained like ``emitting_model`` (Adam 3e-3, one batch of
    the 10 shortest train utterances, kdstore's RNN-T loss only; each training step draws one of the
    contexts, as multi-look-ahead training does) until the loss is below 0.3 and greedy transcripts
    with the default context (= NeMo's streaming transcripts, kdstore.nemo.streaming) are non-empty on
    at least 8 of 10 (180-220 steps, 48-61 s measured on one thread of a busy 2-core machine), then 80
    settling steps (CI once saw int8 flip words of a model stopped at that first moment). ``train.json``
    beside it lists the utterances.
    """
    return _overfit_tiny(demo_corpus, tmp_path_factory.mktemp("emitting_streaming_model"), "tiny-streaming",
                         hybrid=True, max_steps=480, settle_steps=80)


@pytest.fixture(scope="session")
def emitting_tdt_model(demo_corpus, tmp_path_factory: pytest.TempPathFactory):
    """Path of a tiny hybrid TDT-CTC model (.nemo, the ``tiny-tdt`` config: durations [0, 1, 2, 3, 4]) overfitted
    on ``emitting_model``'s 10 utterances, so that NeMo's TDT greedy decoding emits tokens and skips frames.

    Trained like ``emitting_model`` (Adam 3e-3, one batch, no SpecAugment) with kdstore's TDT loss on the joint
    (sigma = omega = 0) until the loss is below 0.3 and NeMo's TDT greedy transcripts are
    non-empty on at least 8 of 10, then 80 settling steps. ``train.json`` beside it lists the utterances.
    """
    return _overfit_tiny(demo_corpus, tmp_path_factory.mktemp("emitting_tdt_model"), "tiny-tdt", hybrid=True,
                         max_steps=480, settle_steps=80, tdt=True)
