"""The demo teacher's wider voices, the held-out engine family, and the rooms and noise made on the spot."""

from __future__ import annotations

import numpy as np
import pytest

from kdstore.corpus import acoustics, tts
from kdstore.errors import ConfigError


def full_inventory() -> tts.Inventory:
    return tts.Inventory(
        names={"espeak-ng": list(tts.ESPEAK_DIALECTS), "flite": list(tts.FLITE_VOICES),
               "festival": list(tts.FESTIVAL_VOICES)},
        espeak_variants=list(dict.fromkeys([v for g in tts.ESPEAK_VARIANTS.values() for v in g]
                                           + list(tts.ESPEAK_WIDE_TRAIN))),
        warnings=[])


def ids(voices: dict[str, list[tts.Voice]]) -> set[str]:
    return {v.id for family in voices.values() for v in family}


def test_wide_voices_add_training_speakers_and_keep_the_held_out_ones():
    inventory = full_inventory()
    standard, wide = tts.split_voices(inventory), tts.split_voices(inventory, "wide")
    assert ids(wide["val"]) == ids(standard["val"]) and ids(wide["test"]) == ids(standard["test"])
    assert ids(standard["train"]) < ids(wide["train"]) and len(ids(wide["train"])) > 4 * len(ids(standard["train"]))
    held_variants = set(tts.ESPEAK_VARIANTS["test"]) | set(tts.ESPEAK_VARIANTS["val"])
    for split in ("val", "test"):
        assert not ids(wide["train"]) & ids(wide[split])
        held_names = {(v.engine, v.name) for f in wide[split].values() for v in f if v.engine != tts.ESPEAK}
        trained = {(v.engine, v.name) for f in wide["train"].values() for v in f}
        # an unseen base voice stays unseen (pitch variants of a trained voice only where a family has none)
        assert not (held_names & trained) - {(e, n) for e, n in held_names if e == tts.FESTIVAL and split == "val"}
    assert not {v.variant for v in wide["train"][tts.ESPEAK]} & held_variants
    with pytest.raises(ConfigError, match="voice variety"):
        tts.split_voices(inventory, "huge")


def test_held_out_engine_family_is_never_trained_on_and_is_the_whole_test_split():
    inventory = full_inventory()
    voices = tts.split_voices(inventory, "wide", hold_out_engine=tts.FESTIVAL)
    assert tts.FESTIVAL not in voices["train"] and tts.FESTIVAL not in voices["val"]
    assert list(voices["test"]) == [tts.FESTIVAL]
    assert {v.name for v in voices["test"][tts.FESTIVAL]} == set(tts.FESTIVAL_VOICES)
    with pytest.raises(ConfigError, match="cannot hold out"):
        tts.split_voices(tts.Inventory({"flite": ["kal"]}, [], []), hold_out_engine=tts.FESTIVAL)


def test_room_impulses_decay_by_60_db_in_rt60():
    rng = np.random.default_rng(0)
    rir = acoustics.room_impulse(rng, rt60_s=0.5)
    assert rir.dtype == np.float32 and len(rir) == int(1.2 * 0.5 * acoustics.SAMPLE_RATE)
    assert np.argmax(np.abs(rir)) < int(0.03 * acoustics.SAMPLE_RATE)  # direct path or an early reflection
    energy = np.cumsum(rir[::-1].astype(np.float64) ** 2)[::-1]  # Schroeder backward integral
    decay_db = 10 * np.log10(energy / energy[0])
    at_rt60 = decay_db[int(0.5 * acoustics.SAMPLE_RATE)]
    assert -75 < at_rt60 < -45  # ~60 dB down after RT60 (noise tail, a few reflections)


@pytest.mark.parametrize(("kind", "slope"), [("white", 0.0), ("pink", -1.0), ("brown", -2.0)])
def test_noise_colours_have_their_spectral_slope(kind, slope):
    noise = acoustics.coloured_noise(np.random.default_rng(1), kind, seconds=4.0)
    power = np.abs(np.fft.rfft(noise)) ** 2
    freqs = np.fft.rfftfreq(len(noise), 1 / acoustics.SAMPLE_RATE)
    band = (freqs > 100) & (freqs < 4000)
    fitted = np.polyfit(np.log10(freqs[band]), np.log10(power[band]), 1)[0]
    assert abs(fitted - slope) < 0.15, f"{kind}: slope {fitted:.2f}"
    assert abs(np.max(np.abs(noise)) - 0.5) < 1e-3
    with pytest.raises(ValueError, match="unknown noise kind"):
        acoustics.coloured_noise(np.random.default_rng(1), "purple")


def test_augmentor_config_runs_in_nemo(tmp_path):
    """The teacher recipe's augmentor, built by NeMo from the generated manifests: only speed changes
    the length; the rest keep it; output is finite."""
    from kdstore.distill.augment import length_changing, nemo_augment

    impulses, noise = acoustics.write_rooms_and_noise(tmp_path, rooms=3, noises=4, seed=0)
    assert len(impulses.read_text().splitlines()) == 3 and len(noise.read_text().splitlines()) == 4
    config = acoustics.augmentor_config(impulses, noise)
    assert length_changing(config) == ["speed"]
    always = {name: {**cfg, "prob": 1.0} for name, cfg in config.items() if name != "speed"}
    augment = nemo_augment(always, acoustics.SAMPLE_RATE)
    speech = (0.1 * np.sin(np.linspace(0, 2000, 24000))).astype(np.float32)
    out = augment(speech)
    assert out.shape == speech.shape and np.isfinite(out).all() and not np.allclose(out, speech)
    speed = nemo_augment({"speed": {**config["speed"], "prob": 1.0}}, acoustics.SAMPLE_RATE)
    lengths = {len(speed(speech)) for _ in range(20)}
    assert lengths - {len(speech)} and all(21600 <= n <= 26401 for n in lengths)  # 0.9x-1.1x


@pytest.mark.parametrize("variety", ["standard", "wide"])
def test_untranscribed_speakers_are_in_no_other_split(variety, tmp_path):
    from kdstore.corpus.synthetic import UNTRANSCRIBED, plan_untranscribed

    voices = tts.split_voices(full_inventory(), variety)
    unheard = tts.unheard_voices(voices["train"])
    for split in ("train", "val", "test"):
        assert not ids(unheard) & ids(voices[split]), split
    assert {v.pitch for family in unheard.values() for v in family} == set(tts.UNHEARD_PITCHES)
    plan = plan_untranscribed("commands", 0.05, 0, voices, tmp_path)
    assert plan and {p.split for p in plan} == {UNTRANSCRIBED} and {p.voice.id for p in plan} <= ids(unheard)
    # training-split sentences only: no test or validation sentence leaks in through the teacher's labels
    from kdstore.corpus import grammar

    assert {grammar.sentence_split(p.text) for p in plan} == {"train"}
    assert all(p.path.startswith(str(tmp_path / UNTRANSCRIBED)) for p in plan)
