"""Training never saves a model it should not (issue 14): a non-finite loss stops the run naming the
step and the utterances, a split the duration bounds empty (or a run with no step) fails, what the
bounds leave out is counted and listed, and a resumed run keeps the first run's loss curve.

Real parts: the committed demo teacher's real Zarr store and NeMo students trained by ``train_student``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from kdstore.errors import ManifestError, TrainingError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def six(demo_corpus, tmp_path_factory) -> tuple[Path, Path]:
    """Six training lines and the demo teacher's store of them (band 6)."""
    from kdstore.assets import demo_teacher_dir
    from kdstore.dump.run import DumpSettings, dump_teacher

    folder = tmp_path_factory.mktemp("guards")
    manifest = folder / "six.json"
    manifest.write_text("".join(line + "\n" for line in Path(demo_corpus.train_manifest).read_text().splitlines()[:6]))
    store = folder / "six.zarr"
    dump_teacher(demo_teacher_dir() / "teacher.nemo", manifest, store, DumpSettings(batch_size=6))
    return manifest, store


def config(tmp_path, manifest, *extra, store=None, name="tiny-teacher-2l", tokenizer=None):
    from kdstore.distill.config import load_train_config

    overrides = [f"model.train_ds.manifest_filepath={manifest}", f"run.output={tmp_path / 's.nemo'}",
                 "trainer.max_steps=2", "model.train_ds.batch_size=3", "trainer.accelerator=cpu", *extra]
    if tokenizer is not None:
        overrides += [f"model.tokenizer.dir={tokenizer}", "model.enable_kd=false"]
    return load_train_config(name, overrides, store=str(store) if store else None)


def test_non_finite_store_values_stop_training_naming_the_utterance(six, tmp_path):
    import shutil

    import zarr

    from kdstore.distill.train import train_student
    from kdstore.errors import StoreError
    from kdstore.store import StoreReader

    manifest, store = six
    poisoned = tmp_path / "poisoned.zarr"
    shutil.copytree(store, poisoned)
    logp = zarr.open_group(str(poisoned), mode="r+")["parts/00000/node/logp"]
    values = logp[:]
    values[:5] = np.nan  # the first stored utterance's first nodes (the KD term used to skip them silently)
    logp[:] = values
    first = StoreReader(poisoned).keys[0]
    from kdstore.store.verify import verify_store

    assert verify_store(store)
    with pytest.raises(StoreError, match=r"parts/00000/node/logp: NaN or infinite value at row 0 \(utterance 0 of "):
        verify_store(poisoned)  # inspect --verify used to say "verified" (mean_topk_mass nan)
    with pytest.raises(StoreError, match=f"utterance {first} holds NaN or infinite teacher values in logp"):
        train_student(config(tmp_path, manifest, "model.train_ds.batch_size=6", store=poisoned))
    assert not (tmp_path / "s.nemo").exists()


def test_a_non_finite_loss_stops_training_naming_the_step_and_nothing_is_saved(six, demo_corpus, tmp_path):
    from kdstore.distill.train import train_student

    manifest, _ = six
    keys = [f"{json.loads(line)['audio_filepath']}|" for line in manifest.read_text().splitlines()]
    with pytest.raises(TrainingError) as info:  # a learning rate that blows the weights up after step 1
        train_student(config(tmp_path, manifest, "model.optim.lr=1e30",
                             "trainer.max_steps=4", "trainer.gradient_clip_val=null",
                             tokenizer=demo_corpus.tokenizer_dir, name="tiny"))
    message = str(info.value)
    assert message.startswith("step ") and ": the training loss is not finite (rnnt_loss=" in message, message
    assert int(message.split()[1].rstrip(":")) > 1 and "nothing was saved" in message
    assert sum(key in message for key in keys) == 3  # the batch's utterances
    assert not (tmp_path / "s.nemo").exists()


def test_duration_bounds_are_counted_listed_and_an_emptied_split_fails(six, demo_corpus, tmp_path):
    from kdstore.distill.train import train_student

    manifest, store = six
    durations = sorted(json.loads(line)["duration"] for line in manifest.read_text().splitlines())
    bound = (durations[3] + durations[4]) / 2  # two lines are longer
    lines = []
    result = train_student(config(tmp_path, manifest, f"model.train_ds.max_duration={bound}", store=store),
                           echo=lines.append)
    assert result.left_out_by_duration == 2 and result.model_path.is_file()
    side = [json.loads(x) for x in (tmp_path / "s.skipped.jsonl").read_text().splitlines()]
    assert [row["kind"] for row in side] == ["over_max_duration"] * 2
    assert all(row["reason"].endswith(f"is longer than model.train_ds.max_duration={bound} s") for row in side)
    summary = next(line for line in lines if line.startswith("training data:"))
    assert "4 utterances" in summary and f"2 left out by model.train_ds.max_duration={bound} s" in summary
    result.model_path.unlink()
    with pytest.raises(ManifestError, match=r"every one of the 6 usable utterances was left out \(6 by "
                                            r"model.train_ds.max_duration\)"):
        train_student(config(tmp_path, manifest, "model.train_ds.max_duration=0.2", store=store))
    with pytest.raises(ManifestError, match=r"\(6 by model.train_ds.min_duration\)"):
        train_student(config(tmp_path, manifest, "model.train_ds.min_duration=100", "model.train_ds.max_duration=null",
                             tokenizer=demo_corpus.tokenizer_dir, name="tiny"))
    assert not (tmp_path / "s.nemo").exists()


def test_a_run_with_no_training_step_fails_and_saves_nothing(six, demo_corpus, tmp_path):
    from kdstore.distill.train import train_student

    manifest, _ = six
    with pytest.raises(TrainingError, match=r"no training step ran \(2 training batches per epoch on this rank, "
                                            r"trainer.max_steps=0\); nothing was saved"):
        train_student(config(tmp_path, manifest, "trainer.max_steps=0", tokenizer=demo_corpus.tokenizer_dir, name="tiny"))
    assert not (tmp_path / "s.nemo").exists()


def test_a_resumed_run_keeps_the_first_runs_loss_curve(six, demo_corpus, tmp_path):
    from kdstore.distill.train import train_student

    manifest, _ = six
    common = [f"model.validation_ds.manifest_filepath={manifest}", "trainer.val_check_interval=2",
              "exp_manager.resume_if_exists=true", "trainer.log_every_n_steps=1"]
    first = train_student(config(tmp_path, manifest, *common, "trainer.max_steps=4",
                                 tokenizer=demo_corpus.tokenizer_dir, name="tiny"))
    with first.curve_csv.open() as handle:
        before = [row for row in csv.DictReader(handle)]
    assert [int(row["step"]) for row in before] == [1, 2, 3, 4]
    second = train_student(config(tmp_path, manifest, *common, "trainer.max_steps=6",
                                  tokenizer=demo_corpus.tokenizer_dir, name="tiny"))
    with second.curve_csv.open() as handle:
        after = [row for row in csv.DictReader(handle)]
    assert [int(row["step"]) for row in after] == [1, 2, 3, 4, 5, 6]
    assert [row["train_loss"] for row in after[:4]] == [row["train_loss"] for row in before]
    assert float(after[4]["seconds"]) >= float(before[-1]["seconds"])
