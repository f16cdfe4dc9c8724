"""The distillation study on the demo corpus: test WER of students trained with the same steps and seeds.

What it answers (``ROWS``; every row with every seed, paired by seed):

- teacher-initialised vs from scratch: ``tiny-teacher-2l`` (2 of the teacher's 4 layers, started from the
  teacher's weights, ``model.init_from_teacher``) against ``tiny`` (1.4M, random init);
- hybrid vs plain: ``tiny`` with its CTC head (the default) against ``tiny`` with ``model.aux_ctc=null``;
- KD vs no KD within each of those three (offline KD from a band-6 k=8 store with CTC rows, the defaults);
- node weights and loss on the teacher-initialised student: ``occupancy`` and ``non_blank`` weights
  beside ``uniform``; the ``collapsed`` loss beside ``topk_rest``.

The earlier questions (online vs offline, full vs band, k) are the ``store`` group (``--rows``); their
results from before the teacher was retrained are in docs/benchmarks.md, "Distillation study (store)".

Every student is ``kdstore train-student`` on ``<corpus>/train.json`` with the same steps, batch size and
seed per seed column, one torch thread, run as a subprocess, two at a time (``--jobs``); each is then
scored on ``<corpus>/test.json`` with ``kdstore eval --json``. The teacher's stores are dumped once
(``kdstore dump-teacher``) into the work folder. Storage per row is the store folder on disk (0 for no KD
and online KD, which needs the teacher itself at training time).

Restartable: every finished student leaves ``<workdir>/results/<row>-s<seed>.json`` (and every store a
``<workdir>/stores/<name>.json``) that a rerun with the same settings reuses; a trained student whose
evaluation was interrupted is only evaluated again.

    python bench/study.py --quick [--steps 30]            # main rows, 1 seed
    python bench/study.py --out docs/benchmarks.md        # main + weights/loss rows, 3 seeds

Without ``--out`` nothing under docs/ is written: the table is printed and the plot goes to the work folder.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from _report import machine, write_section  # bench/ is sys.path[0] when run as a script

REPO = Path(__file__).resolve().parent.parent
SECTION = "## Distillation study: students worth deploying"
STORES = {  # name -> dump-teacher options
    "full-k8": {"top_k": 8, "band": None},
    "band6-k8": {"top_k": 8, "band": 6},
    "full-k4": {"top_k": 4, "band": None},
    "full-k16": {"top_k": 16, "band": None},
    "full-k1": {"top_k": 1, "band": None},
}
HEADLINE, SCRATCH = "tiny-teacher-2l", "tiny"
PLAIN = ("model.aux_ctc=null",)


@dataclass(frozen=True)
class Row:
    name: str
    label: str
    group: str  # main (every seed) | k | loss (first seed only)
    store: str | None = None
    online: bool = False
    kd: bool = True
    overrides: tuple[str, ...] = ()
    config: str = SCRATCH
    init: bool = False  # model.init_from_teacher.path = the teacher


ROWS = [
    Row("init-kd", "teacher-init hybrid 2-layer, KD", "main", "band6-k8", config=HEADLINE, init=True),
    Row("init-nokd", "teacher-init hybrid 2-layer, no KD", "main", kd=False, config=HEADLINE, init=True),
    Row("scratch-kd", "from scratch, hybrid tiny, KD", "main", "band6-k8"),
    Row("scratch-nokd", "from scratch, hybrid tiny, no KD", "main", kd=False),
    Row("plain-kd", "from scratch, plain RNN-T tiny, KD", "main", "band6-k8", overrides=PLAIN),
    Row("plain-nokd", "from scratch, plain RNN-T tiny, no KD", "main", kd=False, overrides=PLAIN),
    Row("init-occupancy", "teacher-init, KD, occupancy node weights", "weights", "band6-k8", config=HEADLINE,
        init=True, overrides=("model.kd.weights=occupancy",)),
    Row("init-nonblank", "teacher-init, KD, non_blank node weights", "weights", "band6-k8", config=HEADLINE,
        init=True, overrides=("model.kd.weights=non_blank",)),
    Row("init-collapsed", "teacher-init, KD, collapsed loss (3 classes)", "weights", "band6-k8", config=HEADLINE,
        init=True, overrides=("model.kd.loss=collapsed",)),
    # the earlier questions (run them with --rows): where the teacher's rows come from, and k
    Row("nokd", "no KD", "store", kd=False),
    Row("online", "online KD (teacher in the loop, k=V+1)", "store", online=True),
    Row("offline-full", "offline KD, full lattice, k=8, topk_rest", "store", "full-k8"),
    Row("offline-band6", "offline KD, band 6, k=8, topk_rest", "store", "band6-k8"),
    Row("k4", "offline KD, full lattice, k=4", "store", "full-k4"),
    Row("k16", "offline KD, full lattice, k=16", "store", "full-k16"),
]
DEFAULT_GROUPS = ("main", "weights")


# -- helpers ---------------------------------------------------------------------------------------------
def default_teacher() -> Path:
    from kdstore.assets import demo_teacher_dir

    committed = demo_teacher_dir() / "teacher.nemo"
    return committed if committed.is_file() else REPO / "demo-run/teacher.nemo"


def kdstore_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "kdstore.cli.main", *args]


def run_logged(command: list[str], log: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with log.open("w") as handle:
        handle.write("$ " + shlex.join(command) + "\n")
        handle.flush()
        return subprocess.run(command, check=False, stdout=handle, stderr=subprocess.STDOUT, env=env,
                              cwd=REPO).returncode


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def file_id(path: Path) -> str:
    """Cheap identity of an input file (path, size, first MiB hash): a changed teacher invalidates results."""
    with path.open("rb") as handle:
        head = hashlib.sha256(handle.read(1 << 20)).hexdigest()[:16]
    return f"{path.resolve()}:{path.stat().st_size}:{head}"


def parse_eval_json(log: Path) -> dict:
    """``kdstore eval --json`` prints one indented JSON object; NeMo may print lines before it."""
    text = log.read_text()
    start = text.find("\n{\n")
    if start < 0:
        raise ValueError(f"no JSON summary in {log}")
    return json.JSONDecoder().raw_decode(text[start + 1:])[0]


def curve_summary(csv_path: Path) -> tuple[int | None, float | None]:
    if not csv_path.is_file():
        return None, None
    rows = list(csv.DictReader(csv_path.open()))
    if not rows:
        return None, None
    return int(float(rows[-1]["step"])), float(rows[-1]["seconds"])


# -- stages ----------------------------------------------------------------------------------------------
class Study:
    def __init__(self, args) -> None:
        self.args = args
        self.work: Path = args.workdir.resolve()
        self.teacher: Path = args.teacher.resolve()
        self.corpus: Path = args.corpus_dir.resolve()
        self.train = self.corpus / "train.json"
        self.test = self.corpus / "test.json"
        self.teacher_id = file_id(self.teacher)
        self.tokenizer = self.work / "teacher-tokenizer"

    def log(self, message: str) -> None:
        print(f"[study {time.strftime('%H:%M:%S')}] {message}", flush=True)

    def extract_tokenizer(self) -> None:
        from kdstore.nemo.checkpoint import read_tokenizer_files  # no NeMo import

        self.tokenizer.mkdir(parents=True, exist_ok=True)
        for name, payload in read_tokenizer_files(self.teacher).items():
            (self.tokenizer / name).write_bytes(payload)

    # stores
    def store_path(self, name: str) -> Path:
        return self.work / "stores" / f"{name}.zarr"

    def dump(self, name: str) -> dict:
        spec = STORES[name]
        fingerprint = {"teacher": self.teacher_id, "manifest": file_id(self.train), **spec}
        marker = self.work / "stores" / f"{name}.json"
        if marker.is_file():
            done = json.loads(marker.read_text())
            if done.get("fingerprint") == fingerprint and self.store_path(name).is_dir():
                return done
        command = kdstore_cmd("dump-teacher", "--teacher", str(self.teacher), "--manifest", str(self.train),
                              "--out", str(self.store_path(name)), "--top-k", str(spec["top_k"]),
                              "--band", str(spec["band"] or "full"), "--threads", "1", "--overwrite", "--no-progress")
        self.log(f"dump {name}")
        start = time.perf_counter()
        rc = run_logged(command, self.work / "logs" / f"dump-{name}.log")
        if rc != 0:
            raise RuntimeError(f"dump {name} failed (rc {rc}); see {self.work / 'logs' / f'dump-{name}.log'}")
        done = {"fingerprint": fingerprint, "bytes": folder_bytes(self.store_path(name)),
                "seconds": round(time.perf_counter() - start, 1), "command": shlex.join(command)}
        marker.write_text(json.dumps(done, indent=2))
        return done

    # students
    def fingerprint(self, row: Row, seed: int) -> dict:
        return {"row": row.name, "seed": seed, "steps": self.args.steps, "batch_size": self.args.batch_size,
                "config": row.config, "init": row.init, "teacher": self.teacher_id, "corpus": str(self.corpus),
                "store": STORES.get(row.store) if row.store else None, "overrides": list(row.overrides),
                "extra": list(self.args.extra)}

    def train_command(self, row: Row, seed: int, output: Path) -> list[str]:
        command = kdstore_cmd("train-student", "--config", row.config, "--no-progress")
        if row.store:
            command += ["--store", str(self.store_path(row.store))]
        else:
            command.append(f"model.tokenizer.dir={self.tokenizer}")
        command += [f"model.train_ds.manifest_filepath={self.train}", f"run.output={output}",
                    f"trainer.max_steps={self.args.steps}", f"model.train_ds.batch_size={self.args.batch_size}",
                    f"run.seed={seed}", "run.num_threads=1", "trainer.accelerator=cpu",
                    f"exp_manager.exp_dir={output.with_suffix('.logs')}"]
        if not row.kd:
            command.append("model.enable_kd=false")
        if row.online:
            command.append(f"model.teacher_model_path={self.teacher}")
        if row.init:
            command.append(f"model.init_from_teacher.path={self.teacher}")
        return command + list(row.overrides) + list(self.args.extra)

    def evaluate(self, model: Path, log: Path) -> dict:
        rc = run_logged(kdstore_cmd("eval", "--model", str(model), "--manifest", str(self.test), "--json",
                                    "--no-progress", "--threads", "1"), log)
        if rc != 0:
            raise RuntimeError(f"eval of {model} failed (rc {rc}); see {log}")
        return parse_eval_json(log)["model"]

    def student(self, row: Row, seed: int) -> dict:
        tag = f"{row.name}-s{seed}"
        result_path = self.work / "results" / f"{tag}.json"
        fingerprint = self.fingerprint(row, seed)
        if result_path.is_file():
            result = json.loads(result_path.read_text())
            if result.get("fingerprint") == fingerprint:
                return result
        output = self.work / "students" / f"{tag}.nemo"
        trained = output.with_suffix(".trained.json")
        command = self.train_command(row, seed, output)
        if not (trained.is_file() and json.loads(trained.read_text()).get("fingerprint") == fingerprint
                and output.is_file()):
            self.log(f"train {tag}")
            trained.unlink(missing_ok=True)
            start = time.perf_counter()
            rc = run_logged(command, self.work / "logs" / f"{tag}.train.log")
            if rc != 0:
                raise RuntimeError(f"training {tag} failed (rc {rc}); see {self.work / 'logs' / f'{tag}.train.log'}")
            trained.write_text(json.dumps({"fingerprint": fingerprint,
                                           "wall_seconds": round(time.perf_counter() - start, 1)}))
        self.log(f"eval {tag}")
        summary = self.evaluate(output, self.work / "logs" / f"{tag}.eval.log")
        steps, seconds = curve_summary(output.with_suffix(".log.csv"))
        result = {"fingerprint": fingerprint, "row": row.name, "seed": seed, "wer": summary["wer"],
                  "cer": summary["cer"], "params": summary["params"], "steps": steps, "train_seconds": seconds,
                  "wall_seconds": json.loads(trained.read_text()).get("wall_seconds"),
                  "model": str(output), "command": shlex.join(command)}
        result_path.parent.mkdir(parents=True, exist_ok=True)
        result_path.write_text(json.dumps(result, indent=2))
        self.log(f"done {tag}: WER {100 * result['wer']:.2f}%")
        return result

    def teacher_score(self) -> dict:
        result_path = self.work / "results" / "teacher.json"
        fingerprint = {"teacher": self.teacher_id, "test": file_id(self.test)}
        if result_path.is_file():
            result = json.loads(result_path.read_text())
            if result.get("fingerprint") == fingerprint:
                return result
        self.log("eval teacher")
        summary = self.evaluate(self.teacher, self.work / "logs" / "teacher.eval.log")
        result = {"fingerprint": fingerprint, "wer": summary["wer"], "cer": summary["cer"], "params": summary["params"]}
        result_path.parent.mkdir(parents=True, exist_ok=True)
        result_path.write_text(json.dumps(result, indent=2))
        return result


def run_jobs(jobs: list[tuple[str, callable]], workers: int) -> tuple[dict, dict]:
    """Run (name, fn) jobs ``workers`` at a time; returns results and errors by name."""
    results, errors = {}, {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {name: pool.submit(fn) for name, fn in jobs}
        for name, future in futures.items():
            try:
                results[name] = future.result()
            except Exception as err:  # noqa: BLE001 (one failed job must not lose the others' results)
                errors[name] = str(err)
                print(f"[study] FAILED {name}: {err}", flush=True)
    return results, errors


# -- report ----------------------------------------------------------------------------------------------
def fmt_wer(values: list[float]) -> tuple[str, str]:
    if not values:
        return "-", "-"
    mean = f"{100 * statistics.mean(values):.2f}"
    if len(values) > 1:
        mean += f" ± {100 * statistics.stdev(values):.2f}"
    return mean, ", ".join(f"{100 * v:.2f}" for v in values)


def plot(path: Path, rows: list[Row], by_row: dict, storage: dict, teacher: dict, title: str) -> None:
    """Test WER per row: mean bar, one dot per seed (same seed, same colour), the teacher as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [row for row in rows if by_row.get(row.name)]
    fig, ax = plt.subplots(figsize=(max(6.5, 0.9 * len(shown) + 2), 4.8))
    colours = {"main": "#4c72b0", "weights": "#55a868", "store": "#c44e52"}
    for x, row in enumerate(shown):
        results = sorted(by_row[row.name], key=lambda r: r["seed"])
        wers = [100 * r["wer"] for r in results]
        mean = statistics.mean(wers)
        ax.bar(x, mean, color=colours.get(row.group, "#888888"), alpha=0.75 if row.kd else 0.35,
               hatch=None if row.kd else "//", edgecolor="black", linewidth=0.5)
        ax.scatter([x] * len(wers), wers, c=[f"C{r['seed']}" for r in results], s=14, zorder=3)
        ax.annotate(f"{mean:.1f}", (x, mean), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
    if teacher:
        ax.axhline(100 * teacher["wer"], color="gray", linestyle="-", linewidth=0.8,
                   label=f"teacher: {100 * teacher['wer']:.1f}%")
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(shown)), [row.name for row in shown], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("test WER [%] (bar: mean; dots: seeds; hatched: no KD)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def versions() -> str:
    """Versions of what ran; kdstore's from the imported package (an editable install's metadata keeps the
    version it was installed at)."""
    import kdstore

    found = [f"{n} {version(n)}" for n in ("torch", "nemo_toolkit")] + [f"kdstore {kdstore.__version__}",
                                                                        f"zarr {version('zarr')}"]
    return ", ".join([f"Python {sys.version.split()[0]}"] + found)


PAIRS = [  # (row, baseline): the differences the study exists to show
    ("init-kd", "init-nokd"), ("scratch-kd", "scratch-nokd"), ("plain-kd", "plain-nokd"),
    ("init-kd", "scratch-kd"), ("init-nokd", "scratch-nokd"), ("scratch-kd", "plain-kd"),
    ("scratch-nokd", "plain-nokd"), ("init-occupancy", "init-kd"), ("init-nonblank", "init-kd"),
    ("init-collapsed", "init-kd"),
    ("online", "nokd"), ("offline-full", "nokd"), ("offline-band6", "nokd"),
    ("offline-full", "online"), ("offline-band6", "online"), ("offline-band6", "offline-full"),
]


def paired_differences(by_row: dict) -> list[str]:
    """WER(row) - WER(baseline) seed by seed: same initialisation and batch order, so the seed-to-seed
    spread of both rows cancels and the difference is what KD (or where its rows come from) changes."""
    labels = {r.name: r.name for r in ROWS}
    out = [("Paired differences (same seed: same initialisation and batch order), WER points, negative = "
           "the first row is better:"), "",
           "| difference | seeds | mean ± sd | per seed | first row better on |",
           "|---|---:|---:|---|---:|"]
    for name, base in PAIRS:
        a = {r["seed"]: r["wer"] for r in by_row.get(name, [])}
        b = {r["seed"]: r["wer"] for r in by_row.get(base, [])}
        seeds = sorted(set(a) & set(b))
        if not seeds:
            continue
        diffs = [100 * (a[s] - b[s]) for s in seeds]
        spread = f" ± {statistics.stdev(diffs):.2f}" if len(diffs) > 1 else ""
        out.append(f"| {labels[name]} - {labels[base]} | {len(seeds)} | {statistics.mean(diffs):+.2f}{spread} | "
                   f"{', '.join(f'{d:+.2f}' for d in diffs)} | {sum(d < 0 for d in diffs)}/{len(diffs)} |")
    return out


def report(study: Study, rows: list[Row], seeds: list[int], by_row: dict, storage: dict, dumps: dict,
           teacher: dict, errors: dict, started: str, wall: float, loads: list[float], plot_path: Path,
           command: str) -> str:
    args = study.args
    hours = sum(json.loads(line)["duration"] for line in study.train.read_text().splitlines() if line.strip()) / 3600
    seed_text = f"Seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
    if args.one_seed_rows:
        seed_text += f" (rows {args.one_seed_rows.replace(',', ', ')}: seed {seeds[0]} only)"
    seed_text += "."
    configs = ", ".join(sorted({f"`{r.config}`" for r in rows}))
    lines = [
        SECTION, "",
        (f"Students ({configs}: see each row) trained with `kdstore train-student` for {args.steps} steps (batch "
         f"{args.batch_size}, one torch thread each, {args.jobs} at a time) on `{study.train}` ({hours:.3f} h), "
         f"scored with `kdstore eval --json` (greedy, `basic` normaliser) on `{study.test}`; every row uses the "
         f"same steps and seeds (seed s = `run.seed=s`: same initialisation and batch order). {seed_text} "
         "KD: `kd_alpha` and `kd_temperature` from the config unless set in the command. Storage is the store "
         "folder on disk (whole train set); online KD needs no store but runs the teacher in every step. The "
         "online student restores its teacher inside its first step, which draws from torch's random stream "
         "(`kdstore/distill/student.py`, `_online_rows`), so its dropout and SpecAugment draws differ from the other "
         "rows' after step 1 (same initialisation and batch order)."),
        "",
        f"- Command: `{command}` ({wall / 60:.1f} min wall)",
        f"- Machine: {machine()}; 1-min load during the run {min(loads):.2f}-{max(loads):.2f}",
        f"- Date: {started}",
        f"- Versions: {versions()}",
        (f"- Teacher: `{study.teacher}` ({teacher.get('params', 0) / 1e6:.2f}M params), test WER "
         f"{100 * teacher.get('wer', float('nan')):.2f}%, CER {100 * teacher.get('cer', float('nan')):.2f}%"),
        f"- Work folder (models, stores, logs, per-student result JSON): `{study.work}`",
        "",
        ("| row | what | config | store | storage [MB] | seeds | test WER % (mean ± sd) | WER % per seed "
         "| retention (mean) | CER % (mean) | params | train min per student |"),
        "|---|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        results = sorted(by_row.get(row.name, []), key=lambda r: r["seed"])
        mean, per_seed = fmt_wer([r["wer"] for r in results])
        cer = f"{100 * statistics.mean(r['cer'] for r in results):.2f}" if results else "-"
        minutes = [r["train_seconds"] / 60 for r in results if r.get("train_seconds")]
        train = f"{statistics.mean(minutes):.1f}" if minutes else "-"
        if row.store:
            store, size = f"`{row.store}`", f"{storage[row.store] / 1e6:.2f}"
        else:
            store, size = "-", "0"
        kept = "-"
        if results and teacher.get("wer") is not None:
            kept = f"{100 * statistics.mean((1 - r['wer']) / (1 - teacher['wer']) for r in results):.1f}%"
        params = f"{results[0]['params'] / 1e6:.2f}M" if results else "-"
        failed = [name for name in errors if name.startswith(f"{row.name}-s")]
        if failed:
            per_seed += f" (failed: {', '.join(failed)})"
        lines.append(f"| {row.name} | {row.label} | `{row.config}`{' + init' if row.init else ''} | {store} | {size} | "
                     f"{len(results)} | {mean} | {per_seed} | {kept} | {cer} | {params} | {train} |")
    lines += ["", *paired_differences(by_row), ""]
    if args.out and Path(plot_path).is_absolute() is False:
        link = os.path.relpath(REPO / plot_path, (REPO / args.out).resolve().parent)
        lines += [f"![test WER per row]({link})", ""]
    else:
        lines += [f"Plot: `{plot_path}` (test WER per row, one dot per seed).", ""]
    if errors:
        lines += ["Failures: " + "; ".join(f"{k}: {v}" for k, v in errors.items()), ""]
    dump_times = ", ".join(f"{name} {d['seconds']} s" for name, d in dumps.items() if d.get("seconds"))
    if dump_times:
        lines += [f"Dump times (each store, when it was dumped): {dump_times}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="main rows only (no KD, offline full, offline band 6, online KD), 1 seed, few steps")
    parser.add_argument("--teacher", type=Path, default=default_teacher(),
                        help="teacher .nemo (default: the committed demo teacher in kdstore/assets/demo_teacher/, "
                             "else demo-run/teacher.nemo)")
    parser.add_argument("--corpus-dir", type=Path, default=REPO / "demo-run/corpus",
                        help="folder with train.json and test.json (the teacher's corpus)")
    parser.add_argument("--workdir", type=Path, default=REPO / "demo-run-study",
                        help="models, stores, logs, result JSON (default demo-run-study/, git-ignored)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per student (600; 200 with --quick)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds for every row (3; 1 with --quick)")
    parser.add_argument("--one-seed-rows", default="",
                        help="comma-separated rows run with the first seed only (a shorter study; they pair with "
                             "the other rows on that seed)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=2, help="students trained at once (one thread each)")
    parser.add_argument("--rows", default=None, help="comma-separated row names (default: all, or main with --quick)")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file whose section to write (and the "
                        "plot to docs/img/study-students.png)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG path (default docs/img/study-students.png with --out, "
                        "else <workdir>/study.png)")
    parser.add_argument("extra", nargs="*", help="key=value overrides for every student (e.g. model.kd_alpha=0.7)")
    args = parser.parse_args()
    args.steps = args.steps or (200 if args.quick else 600)
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    rows = [r for r in ROWS if r.group in (("main",) if args.quick else DEFAULT_GROUPS)]
    if args.rows:
        wanted = args.rows.split(",")
        unknown = set(wanted) - {r.name for r in ROWS}
        if unknown:
            parser.error(f"unknown rows {sorted(unknown)}; known: {[r.name for r in ROWS]}")
        rows = [r for r in ROWS if r.name in wanted]
    for path, what in ((args.teacher, "--teacher"), (args.corpus_dir / "train.json", "--corpus-dir"),
                       (args.corpus_dir / "test.json", "--corpus-dir")):
        if not path.is_file():
            parser.error(f"{what}: {path} does not exist")
    plot_path = args.plot or (REPO / "docs/img/study-students.png" if args.out else args.workdir / "study.png")
    command = "python bench/study.py " + shlex.join(sys.argv[1:])

    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    wall = time.perf_counter()
    loads = [os.getloadavg()[0]]
    study = Study(args)
    study.work.mkdir(parents=True, exist_ok=True)
    study.extract_tokenizer()
    study.log(f"teacher {study.teacher}, corpus {study.corpus}, {args.steps} steps, seeds {seeds}, "
              f"rows {[r.name for r in rows]}, work {study.work}")

    # 1. stores (and the teacher's own score), two at a time
    needed = sorted({r.store for r in rows if r.store}, key=list(STORES).index)
    stage1 = [(f"dump:{name}", lambda name=name: study.dump(name)) for name in needed]
    stage1.append(("teacher", study.teacher_score))
    done, errors = run_jobs(stage1, args.jobs)
    dumps = {name.split(":", 1)[1]: value for name, value in done.items() if name.startswith("dump:")}
    teacher = done.get("teacher", {})
    storage = {name: d["bytes"] for name, d in dumps.items()}
    loads.append(os.getloadavg()[0])

    # 2. students: the slowest (online KD) first, main rows' seeds before the single-seed rows
    jobs = []
    one_seed = set(filter(None, args.one_seed_rows.split(",")))
    for seed in seeds:  # seed by seed: an interrupted study still has complete pairs
        for row in sorted(rows, key=lambda r: (r.group != "main", not r.online)):
            if row.name in one_seed and seed != seeds[0]:
                continue
            if row.store and row.store not in storage:
                errors[f"{row.name}-s{seed}"] = f"store {row.store} missing"
                continue
            jobs.append((f"{row.name}-s{seed}", lambda row=row, seed=seed: study.student(row, seed)))
    results, student_errors = run_jobs(jobs, args.jobs)
    errors.update(student_errors)
    loads.append(os.getloadavg()[0])

    by_row: dict[str, list[dict]] = {}
    for result in results.values():
        by_row.setdefault(result["row"], []).append(result)
    title = (f"students, {args.steps} steps, "
             f"{'seed 0' if len(seeds) == 1 else f'seeds 0-{seeds[-1]}'}; "
             f"teacher {teacher.get('params', 0) / 1e6:.1f}M")
    plot(plot_path, rows, by_row, storage, teacher, title)
    text = report(study, rows, seeds, by_row, storage, dumps, teacher, errors, started, time.perf_counter() - wall,
                  loads, plot_path.relative_to(REPO) if plot_path.is_relative_to(REPO) else plot_path, command)
    (study.work / "study.json").write_text(json.dumps({"results": results, "errors": errors, "storage": storage,
                                                       "teacher": teacher}, indent=2))
    (study.work / "study.md").write_text(text)
    print(text)
    if args.out:
        write_section(args.out, SECTION, text)
        print(f"wrote section {SECTION!r} of {args.out} and {plot_path}")
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
