"""Streaming students from an offline teacher: KD vs no KD, and how far to delay the teacher (issue [5/6]).

Every row trains the demo's streaming student ``tiny-teacher-2l-streaming`` (the headline student made
cache-aware: chunked_limited attention, causal convolutions and downsampling, no feature normalisation;
started from the offline demo teacher's weights) on the demo corpus's train split with the teacher's
store, the same steps, batch and seed per seed column, and scores it with NeMo's cache-aware streaming
decode on test.json (``kdstore eval --streaming``, the model's default chunk), with the offline teacher's
word timestamps as the latency reference:

- ``nokd``: the store gives labels and batch order only (``model.enable_kd=false``): the no-KD twin;
- ``kd-dN``: KD with the teacher's targets N encoder frames later (``model.kd.delay_frames=N``, N x 80 ms).

Latency per word = when its last token is emitted (the end of the audio the emitting chunk needed) minus
the word's end in the offline teacher's timestamps; median and p90 over the correctly recognised words.

    python bench/streaming.py --corpus-dir <make demo corpus> --workdir /tmp/kdstore-streaming \
        --rows nokd kd-d0 kd-d1 kd-d2 kd-d4 --seeds 0 --out docs/benchmarks.md

Restartable like bench/study.py (results per row and seed in ``<workdir>/results``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from _report import machine, write_section
from study import (
    curve_summary,
    default_teacher,
    file_id,
    fmt_wer,
    kdstore_cmd,
    parse_eval_json,
    run_jobs,
    run_logged,
    versions,
)

SECTION = "## Streaming students: delay-aware KD from an offline teacher"
STUDENT = "tiny-teacher-2l-streaming"
DEFAULT_STEPS = 700  # the demo's budget


@dataclass(frozen=True)
class Row:
    name: str
    label: str
    overrides: tuple[str, ...]


def _rows() -> list[Row]:
    rows = [Row("nokd", "no KD (the twin: same init, data order, steps, seed)", ("model.enable_kd=false",))]
    for delay in (0, 1, 2, 3, 4, 6):
        rows.append(Row(f"kd-d{delay}", f"KD, teacher delayed {delay} frames ({80 * delay} ms)",
                        (f"model.kd.delay_frames={delay}",)))
    return rows


ROWS = _rows()


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.work: Path = args.workdir.resolve()
        self.teacher: Path = args.teacher.resolve()
        self.corpus: Path = args.corpus_dir.resolve()
        self.train, self.test = self.corpus / "train.json", self.corpus / "test.json"
        self.teacher_id = file_id(self.teacher)
        for path in (self.train, self.test):
            if not path.is_file():
                raise SystemExit(f"{path} is missing: build the corpus with kdstore prepare-demo (or make demo)")

    def log(self, message: str) -> None:
        print(f"[streaming {time.strftime('%H:%M:%S')}] {message}", flush=True)

    @property
    def store(self) -> Path:
        return self.work / "stores" / "train.zarr"

    def dump(self) -> dict:
        fingerprint = {"teacher": self.teacher_id, "manifest": file_id(self.train)}
        marker = self.work / "stores" / "train.json"
        if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == fingerprint:
            return json.loads(marker.read_text())
        command = kdstore_cmd("dump-teacher", "--teacher", str(self.teacher), "--manifest", str(self.train),
                              "--out", str(self.store), "--threads", "1", "--overwrite", "--no-progress")
        self.log("dump train")
        start = time.perf_counter()
        log = self.work / "logs" / "dump-train.log"
        if run_logged(command, log) != 0:
            raise RuntimeError(f"dump failed; see {log}")
        done = {"fingerprint": fingerprint, "seconds": round(time.perf_counter() - start, 1),
                "command": shlex.join(command)}
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(done, indent=2))
        return done

    def train_command(self, row: Row, seed: int, output: Path) -> list[str]:
        return kdstore_cmd("train-student", "--config", STUDENT, "--no-progress", "--store", str(self.store),
                           f"model.train_ds.manifest_filepath={self.train}", f"run.output={output}",
                           f"trainer.max_steps={self.args.steps}", f"model.train_ds.batch_size={self.args.batch_size}",
                           f"run.seed={seed}", "run.num_threads=1", "trainer.accelerator=cpu",
                           f"exp_manager.exp_dir={output.with_suffix('.logs')}",
                           f"model.init_from_teacher.path={self.teacher}", *row.overrides)

    def student(self, row: Row, seed: int, store: dict) -> dict:
        tag = f"{row.name}-s{seed}" + (f"-{self.args.steps}steps" if self.args.steps != DEFAULT_STEPS else "")
        result_path = self.work / "results" / f"{tag}.json"
        fingerprint = {"row": row.name, "seed": seed, "steps": self.args.steps, "batch_size": self.args.batch_size,
                       "teacher": self.teacher_id, "store": store["fingerprint"], "overrides": list(row.overrides),
                       "test": file_id(self.test)}
        if result_path.is_file() and json.loads(result_path.read_text()).get("fingerprint") == fingerprint:
            return json.loads(result_path.read_text())
        output = self.work / "students" / f"{tag}.nemo"
        command = self.train_command(row, seed, output)
        if not output.is_file() or not (self.work / "students" / f"{tag}.trained").is_file():
            self.log(f"train {tag}")
            if run_logged(command, self.work / "logs" / f"{tag}.train.log") != 0:
                raise RuntimeError(f"training {tag} failed; see {self.work / 'logs' / f'{tag}.train.log'}")
            (self.work / "students" / f"{tag}.trained").write_text(shlex.join(command) + "\n")
        log = self.work / "logs" / f"{tag}.eval.log"
        if run_logged(kdstore_cmd("eval", "--model", str(output), "--manifest", str(self.test), "--streaming",
                                  "--latency-reference", str(self.teacher), "--json", "--no-progress",
                                  "--threads", "1"), log) != 0:
            raise RuntimeError(f"eval of {tag} failed; see {log}")
        summary = parse_eval_json(log)["model"]
        steps, seconds = curve_summary(output.with_suffix(".log.csv"))
        result = {"fingerprint": fingerprint, "row": row.name, "seed": seed, "eval": summary,
                  "wer": summary["wer"], "steps": steps, "train_seconds": seconds, "command": shlex.join(command)}
        result_path.parent.mkdir(parents=True, exist_ok=True)
        result_path.write_text(json.dumps(result, indent=2))
        self.log(f"done {tag}: WER {100 * result['wer']:.2f}%")
        return result


def _latency(result: dict, key: str) -> float | None:
    """A latency figure (ms) from ``kdstore eval --streaming --json`` (key: median or p90)."""
    value = (result["eval"].get("streaming") or {}).get(f"latency_{key}_ms")
    return None if value is None else float(value)


def report(bench: Bench, rows: list[Row], seeds: list[int], results: dict) -> str:
    lines = [f"Measured {datetime.date.today()} on {machine()}; {versions()}.", "",
             (f"Command: `python bench/streaming.py --corpus-dir {bench.args.corpus_dir} --steps {bench.args.steps} "
              f"--rows {' '.join(r.name for r in rows)} --seeds {' '.join(map(str, seeds))}"
              + (f" --one-seed-rows {' '.join(bench.args.one_seed_rows)}" if bench.args.one_seed_rows else "") + "`."),
             "",
             (f"Student `{STUDENT}` (2 of the offline teacher's 4 layers, started from its weights, cache-aware, "
              f"default chunk 560 ms = 480 ms look-ahead), {bench.args.steps} steps, batch {bench.args.batch_size}, "
              "one thread per run. Scored with NeMo's cache-aware streaming decode (`kdstore eval --streaming`) on "
              "the test split (unseen voices); latency against the offline teacher's word ends."), "",
             "| row | seeds | test WER % (mean ± sd) | per seed | latency median ms | latency p90 ms |",
             "|---|---:|---:|---|---:|---:|"]
    for r in rows:
        done = [results[f"{r.name}-s{s}"] for s in seeds if f"{r.name}-s{s}" in results]
        if not done:
            continue
        mean, per = fmt_wer([d["wer"] for d in done])
        med = [v for d in done if (v := _latency(d, "median")) is not None]
        p90 = [v for d in done if (v := _latency(d, "p90")) is not None]
        lines.append(f"| {r.name}: {r.label} | {len(done)} | {mean} | {per} | "
                     f"{statistics.mean(med):.0f} | {statistics.mean(p90):.0f} |" if med and p90 else
                     f"| {r.name}: {r.label} | {len(done)} | {mean} | {per} | - | - |")
    lines += ["", "Paired by seed (row minus nokd, WER points; negative: KD helped):", ""]
    for r in rows:
        if r.name == "nokd":
            continue
        diffs = [100 * (results[f"{r.name}-s{s}"]["wer"] - results[f"nokd-s{s}"]["wer"]) for s in seeds
                 if f"{r.name}-s{s}" in results and f"nokd-s{s}" in results]
        if diffs:
            lines.append(f"- {r.name}: {', '.join(f'{d:+.2f}' for d in diffs)} (mean {statistics.mean(diffs):+.2f}; "
                         f"better in {sum(d < 0 for d in diffs)} of {len(diffs)} seeds)")
    lines += ["", "![streaming study](img/streaming.png)"]
    return "\n".join(lines)


def plot(path: Path, rows: list[Row], seeds: list[int], results: dict) -> None:
    """WER (left) and median latency (right) per row; one dot per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    shown = [r for r in rows if any(f"{r.name}-s{s}" in results for s in seeds)]
    for i, r in enumerate(shown):
        done = [results[f"{r.name}-s{s}"] for s in seeds if f"{r.name}-s{s}" in results]
        wers = [100 * d["wer"] for d in done]
        left.bar(i, statistics.mean(wers), color="#8c8c8c" if r.name == "nokd" else "#4c72b0")
        left.scatter([i] * len(wers), wers, color="black", s=12, zorder=3)
        med = [v for d in done if (v := _latency(d, "median")) is not None]
        if med:
            right.bar(i, statistics.mean(med), color="#dd8452")
            right.scatter([i] * len(med), med, color="black", s=12, zorder=3)
    for axis, label in ((left, "test WER % (streaming decode)"), (right, "median word latency, ms")):
        axis.set_xticks(range(len(shown)), [r.name for r in shown], fontsize=8)
        axis.set_ylabel(label)
    left.set_title("streaming student: WER by KD delay")
    right.set_title("latency vs the offline teacher's word ends")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus-dir", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/kdstore-streaming"))
    parser.add_argument("--teacher", type=Path, default=default_teacher())
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=["nokd", "kd-d0", "kd-d1", "kd-d2", "kd-d4"])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--one-seed-rows", nargs="*", default=[], help="rows run with the first seed only")
    parser.add_argument("--out", type=Path, default=None, help="docs/benchmarks.md to write the section into")
    args = parser.parse_args()
    unknown = set(args.rows) - {r.name for r in ROWS}
    if unknown:
        raise SystemExit(f"unknown rows {sorted(unknown)}; known: {', '.join(r.name for r in ROWS)}")
    bench = Bench(args)
    rows = [r for r in ROWS if r.name in args.rows]
    store = bench.dump()
    jobs = [(f"{r.name}-s{s}", (lambda r=r, s=s: bench.student(r, s, store))) for s in args.seeds for r in rows
            if r.name not in args.one_seed_rows or s == args.seeds[0]]
    results, errors = run_jobs(jobs, args.jobs)
    text = report(bench, rows, args.seeds, results)
    png = (args.out.parent / "img" / "streaming.png") if args.out else bench.work / "streaming.png"
    plot(png, rows, args.seeds, results)
    print(text)
    (bench.work / "report.md").write_text(text + "\n")
    if args.out:
        write_section(args.out, SECTION, text)
    if errors:
        raise SystemExit(f"failed: {errors}")


if __name__ == "__main__":
    main()
