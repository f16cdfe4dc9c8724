"""The wheel works outside the checkout: package data (configs, demo teacher) travels with it.

An editable install finds ``configs/`` and the demo teacher through the repository whatever
``pyproject.toml`` ships, so the slow test builds the wheel from a copy of the working tree, installs
it with ``pip install --target`` into a folder of its own, and runs ``kdstore`` with only that folder
on ``PYTHONPATH`` from a folder outside the repository (the editable finder in ``.venv`` is a
``sys.meta_path`` entry after the path finder, so ``PYTHONPATH`` wins; the test checks it did).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_demo_teacher_is_package_data():
    from kdstore.assets import DEMO_TEACHER_FILES, demo_teacher_dir

    for kind in ("rnnt", "tdt"):
        folder = demo_teacher_dir(kind)
        assert folder.is_relative_to(REPO / "kdstore")  # inside the package, not beside it
        assert sorted(p.name for p in folder.iterdir() if p.is_file()) == sorted(DEMO_TEACHER_FILES)
    assert '"kdstore.assets" = ["demo_teacher/*", "demo_teacher_tdt/*"]' in (REPO / "pyproject.toml").read_text()


# --- the wheel, installed where the repository is not importable ---------------------------------


def _working_tree(dst: Path) -> Path:
    """Copy what a clone plus this session's uncommitted work holds (tracked + untracked, not ignored)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = REPO / name
        if src.is_file():  # listed but deleted in the working tree: skip
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    return dst


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """``{"site": DIR, "env": ..., "cwd": ...}``: the wheel installed into DIR, run from a foreign folder."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to know which files a clone holds")
    base = tmp_path_factory.mktemp("wheel")
    src = _working_tree(base / "src")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(base / "dist"),
                    str(src)], check=True, capture_output=True, timeout=600)
    wheel = next((base / "dist").glob("kdstore-*.whl"))
    site = base / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], check=True,
                   capture_output=True, timeout=600)
    cwd = base / "elsewhere"
    cwd.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    code = "import kdstore, kdstore.cli.main as m; print(kdstore.__file__); print(m.__file__)"
    probe = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, check=True, capture_output=True, text=True)
    for line in probe.stdout.split():
        assert Path(line).is_relative_to(site), f"imported {line}, not the installed wheel in {site}"
    return {"site": site, "env": env, "cwd": cwd}


def _kdstore(installed: dict) -> list[str]:
    script = installed["site"] / "bin" / "kdstore"  # the console script pip wrote
    return [str(script)] if script.is_file() else [sys.executable, "-m", "kdstore.cli.main"]


@pytest.mark.slow
def test_installed_wheel_trains_a_student_by_config_name(installed, demo_corpus):
    out = installed["cwd"] / "student.nemo"
    args = [*_kdstore(installed), "train-student", "--config", "tiny", "--no-progress",
            f"model.train_ds.manifest_filepath={demo_corpus.train_manifest}",
            f"model.tokenizer.dir={demo_corpus.tokenizer_dir}", "model.enable_kd=false", f"run.output={out}",
            "trainer.max_steps=2", "model.train_ds.batch_size=2", "trainer.accelerator=cpu"]
    result = subprocess.run(args, cwd=installed["cwd"], env=installed["env"], capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert out.is_file() and "2 steps" in result.stdout


@pytest.mark.slow
def test_installed_wheel_runs_the_quick_demo_from_the_packaged_teacher(installed):
    """``kdstore demo --quick`` up to the student training: corpus, the packaged teacher, the dump."""
    work = installed["cwd"] / "demo-run"
    proc = subprocess.Popen([*_kdstore(installed), "demo", "--quick", "--no-progress", "--workdir", str(work)],
                            cwd=installed["cwd"], env=installed["env"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    deadline = time.monotonic() + 900
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("[demo] students ...") or time.monotonic() > deadline:
                break  # corpus, teacher and dump are done; training two students takes minutes
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the demo and the trainers it started
        proc.wait(timeout=60)
    output = "".join(lines)
    assert "[demo] students ..." in output, output[-3000:]
    teacher_line = next(line for line in lines if line.startswith("[demo] teacher: the committed demo teacher"))
    packaged = Path(teacher_line.split("demo teacher ", 1)[1].split(" (")[0])
    assert packaged.is_relative_to(installed["site"]), teacher_line
    assert (work / "teacher.nemo").read_bytes() == packaged.read_bytes()
    assert (work / "steps" / "dump.json").is_file()
    assert not any(installed["site"].rglob("*.zarr")), "the demo wrote into the installed package"
