"""Tests for ``prepare_librispeech`` / ``kdstore prepare-librispeech`` on a tiny LibriSpeech-shaped tree.

The tree has the real layout (``<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`` and one
``<speaker>-<chapter>.trans.txt`` per chapter) with 0.1-0.13 s FLAC files at 16 kHz.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
from click.testing import CliRunner

from kdstore import files
from kdstore.corpus import prepare_librispeech
from kdstore.errors import ManifestError

SR = 16000
# subset -> (speaker, chapter) -> transcript lines (LibriSpeech style: capitals, apostrophes)
# speakers/chapters chosen so numeric and string order differ (84 < 1089, 9 < 121123)
LAYOUT = {
    "train-clean-100": {
        ("1089", "134686"): ["HE HOPED THERE WOULD BE STEW", "STUFF IT INTO YOU HIS BELLY COUNSELLED HIM"],
        ("1089", "9"): ["AFTER EARLY NIGHTFALL"],
        ("84", "121123"): ["GO DO YOU HEAR", "BUT IN LESS THAN FIVE MINUTES", "THE STAIRCASE GROANED"],
        ("84", "9"): ["IT'S THE  SAME OLD   STORY"],
    },
    "train-clean-360": {("14", "208"): ["I DON'T KNOW", "WHAT A DAY"]},
    "dev-clean": {("2277", "149896"): ["HE WAS IN A FEVERED STATE OF MIND", "HE ARRIVED AT THE CAFE"]},
}
DEV = "dev-clean/2277/149896"


def frames(index: int) -> int:
    return 1600 + 160 * index  # 0.10 s, 0.11 s, ...


def make_tree(root: Path, layout: dict = LAYOUT) -> Path:
    """Write ``layout`` under ``root`` (the LibriSpeech folder); returns ``root``."""
    for subset, chapters in layout.items():
        for (speaker, chapter), lines in chapters.items():
            folder = root / subset / speaker / chapter
            folder.mkdir(parents=True)
            trans = []
            for i, text in enumerate(lines):
                utt = f"{speaker}-{chapter}-{i:04d}"
                soundfile.write(str(folder / f"{utt}.flac"), np.full(frames(i), 0.1, dtype="float32"), SR)
                trans.append(f"{utt} {text}")
            (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(trans) + "\n")
    return root


def expected_rows(root: Path, subset: str) -> list[dict]:
    rows = []
    for speaker, chapter in sorted(LAYOUT[subset], key=lambda sc: (int(sc[0]), int(sc[1]))):
        for i, text in enumerate(LAYOUT[subset][(speaker, chapter)]):
            audio = root.resolve() / subset / speaker / chapter / f"{speaker}-{chapter}-{i:04d}.flac"
            rows.append({"audio_filepath": str(audio), "duration": frames(i) / SR, "text": " ".join(text.lower().split())})
    return rows


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "LibriSpeech")


# ---------------------------------------------------------------- manifests


def test_manifest_per_subset(tree, tmp_path):
    # things a real download may carry that must be ignored
    (tree / "dev-clean" / ".DS_Store").mkdir()
    (tree / DEV / "._2277-149896-0000.flac").write_bytes(b"\0\5\26\7")  # macOS AppleDouble
    (tree / "README.TXT").write_text("LibriSpeech ASR corpus")
    trans = tree / DEV / "2277-149896.trans.txt"
    trans.write_bytes(trans.read_bytes().replace(b"0000 ", b"0000\t").replace(b"\n", b"\r\n"))

    result = prepare_librispeech(tree, tmp_path / "out")
    assert list(result.manifests) == ["train-clean-100", "train-clean-360", "dev-clean"]
    assert result.root == tree.resolve() and result.skipped == [] and result.skipped_path is None
    for subset, path in result.manifests.items():
        assert path == tmp_path / "out" / f"{subset}.json"
        rows = read(path)
        assert rows == expected_rows(tree, subset)
        for row in rows:
            audio = Path(row["audio_filepath"])
            assert audio.is_absolute() and audio.is_file()
            info = soundfile.info(str(audio))
            assert row["duration"] == info.frames / info.samplerate
        assert result.utterances[subset] == len(rows)
        assert result.hours[subset] == pytest.approx(sum(r["duration"] for r in rows) / 3600)
    texts = [r["text"] for r in read(result.manifests["train-clean-100"])]
    assert texts == [
        "it's the same old story",  # 84/9
        "go do you hear",  # 84/121123
        "but in less than five minutes",
        "the staircase groaned",
        "after early nightfall",  # 1089/9
        "he hoped there would be stew",  # 1089/134686
        "stuff it into you his belly counselled him",
    ]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "dev-clean.json", "train-clean-100.json", "train-clean-360.json"
    ]  # no temporary files left


def test_root_may_be_the_parent_and_output_is_deterministic(tree, tmp_path):
    one = prepare_librispeech(tree, tmp_path / "a", num_jobs=1)
    two = prepare_librispeech(tree.parent, tmp_path / "b", num_jobs=2)
    assert two.root == one.root
    for subset, path in one.manifests.items():
        assert path.read_bytes() == two.manifests[subset].read_bytes()
    with pytest.raises(ManifestError, match="point ROOT at its parent"):
        prepare_librispeech(tree / "dev-clean", tmp_path / "c")
    with pytest.raises(ManifestError, match="no LibriSpeech subset .* found under"):
        prepare_librispeech(tmp_path / "a", tmp_path / "c")
    with pytest.raises(ManifestError, match="num_jobs"):
        prepare_librispeech(tree, tmp_path / "c", num_jobs=0)


def test_combine_train(tree, tmp_path):
    result = prepare_librispeech(tree, tmp_path / "out", combine="train")
    out = tmp_path / "out"
    assert result.manifests["train"] == out / "train.json"
    assert result.combined == {"train": ("train-clean-100", "train-clean-360")}
    assert (out / "train.json").read_bytes() == (out / "train-clean-100.json").read_bytes() + (
        out / "train-clean-360.json"
    ).read_bytes()
    assert result.utterances["train"] == 9 and "dev-clean" not in (out / "train.json").read_text()

    only = prepare_librispeech(tree, tmp_path / "only", subsets="train-clean-360,dev-clean", combine="train")
    assert only.combined == {"train": ("train-clean-360",)}
    assert read(only.manifests["train"]) == expected_rows(tree, "train-clean-360")
    with pytest.raises(ManifestError, match="--combine train needs at least one of train-clean-100"):
        prepare_librispeech(tree, tmp_path / "x", subsets=["dev-clean"], combine="train")
    with pytest.raises(ManifestError, match="unknown combination"):
        prepare_librispeech(tree, tmp_path / "x", combine="dev")


def test_subsets_selection(tree, tmp_path):
    result = prepare_librispeech(tree, tmp_path / "a", subsets=["dev-clean", "train-clean-360"])
    assert list(result.manifests) == ["train-clean-360", "dev-clean"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["dev-clean.json", "train-clean-360.json"]
    assert list(prepare_librispeech(tree, tmp_path / "b", subsets="dev-clean").manifests) == ["dev-clean"]
    with pytest.raises(ManifestError, match=r"unknown LibriSpeech subset\(s\) dev-noisy"):
        prepare_librispeech(tree, tmp_path / "c", subsets=["dev-noisy"])
    with pytest.raises(ManifestError, match=r"test-other not found in .*present: train-clean-100"):
        prepare_librispeech(tree, tmp_path / "c", subsets=["dev-clean", "test-other"])
    assert not (tmp_path / "c").exists()


# ---------------------------------------------------------------- bad entries


def append_line(line: str):
    def mutate(root: Path) -> None:
        trans = root / DEV / "2277-149896.trans.txt"
        trans.write_text(trans.read_text() + line + "\n")

    return mutate


def remove_flac(root: Path) -> None:
    (root / DEV / "2277-149896-0001.flac").unlink()


def extra_flac(root: Path) -> None:
    soundfile.write(str(root / DEV / "2277-149896-0007.flac"), np.zeros(1600, dtype="float32"), SR)


def no_transcript(root: Path) -> None:
    (root / DEV / "2277-149896.trans.txt").unlink()


def corrupt_flac(root: Path) -> None:
    path = root / DEV / "2277-149896-0001.flac"
    path.write_bytes(path.read_bytes()[:20])  # truncated inside the header


TRANS, FLAC1 = f"{DEV}/2277-149896.trans.txt", f"{DEV}/2277-149896-0001.flac"
BAD = {  # name: (mutation, strict error regex, skipped.jsonl rows as (kind, file, line, utterance), rows kept)
    "line without text": (
        append_line("2277-149896-0009"), r"2277-149896\.trans\.txt:3: expected '<UTTID> <TEXT>', no transcript text",
        [("malformed_line", TRANS, 3, "2277-149896-0009")], 2,
    ),
    "line with a foreign id": (
        append_line("HELLO WORLD"), r"trans\.txt:3: .*utterance id is not '2277-149896-<number>': 'HELLO WORLD'",
        [("malformed_line", TRANS, 3, None)], 2,
    ),
    "duplicate id": (
        append_line("2277-149896-0001 SOMETHING ELSE"), r"trans\.txt:3: 2277-149896-0001 is listed twice",
        [("malformed_line", TRANS, 3, "2277-149896-0001")], 1,
    ),
    "listed without its flac": (
        remove_flac, r"trans\.txt:2: 2277-149896-0001 is listed but \S+2277-149896-0001\.flac does not exist",
        [("missing_audio", TRANS, 2, "2277-149896-0001")], 1,
    ),
    "flac without a transcript line": (
        extra_flac, r"2277-149896-0007\.flac: no line for 2277-149896-0007 in 2277-149896\.trans\.txt",
        [("missing_transcript", f"{DEV}/2277-149896-0007.flac", None, "2277-149896-0007")], 2,
    ),
    "chapter without a transcript": (
        no_transcript, r"2277-149896-0000\.flac: no transcript 2277-149896\.trans\.txt in its folder",
        [("missing_transcript", f"{DEV}/2277-149896-000{i}.flac", None, f"2277-149896-000{i}") for i in (0, 1)]
        + [("empty_subset", "dev-clean", None, None)], 0,
    ),
    "unreadable flac header": (
        corrupt_flac, r"2277-149896-0001\.flac: cannot read the audio header",
        [("unreadable_audio", FLAC1, None, "2277-149896-0001")], 1,
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_entry_stops_or_is_skipped(tree, tmp_path, case):
    mutate, message, skipped, kept = BAD[case]
    mutate(tree)
    out = tmp_path / "out"
    with pytest.raises(ManifestError, match=message) as info:
        prepare_librispeech(tree, out)
    assert "\n" not in str(info.value) and "--skip-bad" in str(info.value)
    assert str(tree.resolve()) in str(info.value)  # the full path of the file to look at
    assert not out.exists()  # nothing written before the error

    result = prepare_librispeech(tree, out, combine="train", skip_bad=True)
    rows = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    base = str(tree.resolve())
    assert [(r["kind"], r["file"].replace(base + "/", ""), r["line"], r["utterance"]) for r in rows] == skipped
    assert all(set(r) == {"kind", "file", "line", "utterance", "reason", "raw"} and r["reason"] for r in rows)
    assert all(r["file"].startswith(f"{base}/{DEV.split('/')[0]}") for r in rows)
    assert all((r["raw"] is not None) == (r["kind"] == "malformed_line") for r in rows)
    assert len(result.skipped) == len(skipped) and result.skipped_path == out / "skipped.jsonl"
    assert read(out / "train.json") == expected_rows(tree, "train-clean-100") + expected_rows(tree, "train-clean-360")
    if kept:
        assert [r["text"] for r in read(out / "dev-clean.json")] == [
            r["text"] for r in expected_rows(tree, "dev-clean")
        ][:kept]
    else:
        assert "dev-clean" not in result.manifests and not (out / "dev-clean.json").exists()


def test_empty_subset_and_clean_skip_run(tree, tmp_path):
    (tree / "dev-other").mkdir()
    with pytest.raises(ManifestError, match=r"dev-other: no <speaker>/<chapter>/.*trans\.txt transcripts"):
        prepare_librispeech(tree, tmp_path / "out")
    result = prepare_librispeech(tree, tmp_path / "out", skip_bad=True)
    assert [(s.kind, Path(s.file).name) for s in result.skipped] == [("empty_subset", "dev-other")]
    assert "dev-other" not in result.manifests
    (tree / "dev-other").rmdir()
    result = prepare_librispeech(tree, tmp_path / "out", skip_bad=True)
    assert result.skipped == [] and (tmp_path / "out" / "skipped.jsonl").read_text() == ""


def test_interrupted_write_keeps_the_old_manifest(tree, tmp_path, monkeypatch):
    out = tmp_path / "out"
    before = prepare_librispeech(tree, out, subsets="dev-clean").manifests["dev-clean"].read_bytes()
    trans = tree / DEV / "2277-149896.trans.txt"
    trans.write_text(trans.read_text().replace("CAFE", "INN"))

    def fail(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", fail)
    with pytest.raises(OSError, match="No space"):
        prepare_librispeech(tree, out, subsets="dev-clean")
    assert (out / "dev-clean.json").read_bytes() == before
    assert [p.name for p in out.iterdir()] == ["dev-clean.json"]  # the temporary file is gone
    monkeypatch.undo()
    prepare_librispeech(tree, out, subsets="dev-clean")
    assert read(out / "dev-clean.json")[1]["text"] == "he arrived at the inn"


# ---------------------------------------------------------------- CLI


def invoke(*args: str):
    from kdstore.cli.main import cli

    return CliRunner().invoke(cli, ["prepare-librispeech", *map(str, args)])


def test_cli_subsets_and_combine(tree, tmp_path):
    out = tmp_path / "m"
    result = invoke(tree.parent, out, "--subset", "dev-clean", "--subsets", "train-clean-100,train-clean-360",
                    "--combine", "train", "-j", "2", "--no-progress")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["train-clean-100", "7"], ["train-clean-360", "2"], ["dev-clean", "2"], ["train", "9"]
    ]
    assert lines[-1].endswith("(train-clean-100 + train-clean-360)") and str(out / "train.json") in lines[-1]
    assert (out / "train.json").is_file() and not (out / "skipped.jsonl").exists()

    result = invoke("--root", tree, "--out", tmp_path / "d", "--subsets", "dev-clean")  # progress bar on (stderr)
    assert result.exit_code == 0 and sorted(p.name for p in (tmp_path / "d").iterdir()) == ["dev-clean.json"]

    result = invoke(tree, out, "--subsets", "dev-clean,dev-noisy")
    assert result.exit_code == 2 and "unknown LibriSpeech subset(s) dev-noisy" in result.output


def test_cli_bad_entry(tree, tmp_path):
    append_line("2277-149896-0009")(tree)
    result = invoke(tree, tmp_path / "m", "--no-progress")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.count("\n") == 1 and "2277-149896.trans.txt:3:" in result.output
    assert "--skip-bad" in result.output

    result = invoke(tree, tmp_path / "m", "--no-progress", "--skip-bad")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == f"skipped 1 bad entry, listed in {tmp_path / 'm' / 'skipped.jsonl'}"

    result = invoke(tmp_path / "m", tmp_path / "x")
    assert result.exit_code == 1 and "no LibriSpeech subset" in result.output


def test_cli_help():
    result = invoke("--help")
    assert result.exit_code == 0
    for word in ("--subsets", "--combine", "train.json", "--skip-bad", "skipped.jsonl", "--num-jobs", "Example"):
        assert word in result.output
