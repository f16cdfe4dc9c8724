"""Non-finite values never reach a store (issue 14, fault 2): a teacher whose outputs hold NaN stops the
dump at the first such utterance, naming its line, and writes nothing of it."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from kdstore.cli.main import cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nan_teacher(tmp_path_factory) -> Path:
    """The demo teacher with one NaN in its joint's output layer: every log-prob of the joint is NaN."""
    import torch

    from kdstore.assets import demo_teacher_dir
    from kdstore.nemo.checkpoint import restore_model

    model = restore_model(demo_teacher_dir() / "teacher.nemo")
    with torch.no_grad():
        model.joint.joint_net[-1].weight[0, 0] = float("nan")
    path = tmp_path_factory.mktemp("nan_teacher") / "teacher.nemo"
    model.save_to(str(path))
    return path


def test_a_teacher_with_nan_outputs_stops_the_dump_naming_the_line(nan_teacher, demo_corpus, tmp_path):
    from kdstore.store.verify import verify_store

    manifest = tmp_path / "m.json"
    manifest.write_text("".join(line + "\n" for line in Path(demo_corpus.train_manifest).read_text().splitlines()[:3]))
    out = tmp_path / "s.zarr"
    result = CliRunner().invoke(cli, ["dump-teacher", "--teacher", str(nan_teacher), "--manifest", str(manifest),
                                      "--out", str(out), "--no-progress", "--batch-size", "1"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith(f"Error: {manifest}:") and "the teacher's logp for " in last and "NaN or infinite" in last
    assert "precision fp32" in last and "nothing of it was written" in last
    with pytest.raises(Exception, match="not committed|no committed|interrupted|resume"):
        verify_store(out)  # what exists is an unfinished dump, never a store that reads as valid
