"""Does teacher-labelled audio help the student? Paired by seed, on the demo corpus (issue [3/6]).

The demo corpus built with ``kdstore prepare-demo --voices wide --untranscribed-hours H`` has
``train.json`` (transcribed) and ``untranscribed.json`` (more audio, spoken by training voices at pitches no split uses, text
withheld in ``untranscribed.refs.json``). The teacher's stores are dumped once:

- ``train``: ``dump-teacher`` over train.json (band 6, k 8, CTC rows: the defaults);
- ``untranscribed``: ``dump-teacher`` over untranscribed.json: the teacher labels every line (greedy);
- ``filtered`` (row ``plus-filtered``): the same with ``--min-confidence`` at the lowest bucket's upper
  edge of the label-quality table (the least sure fifth left out).

``kdstore label-quality`` scores the ``untranscribed`` store's labels against the withheld text. Then
every row trains the demo's headline student (``tiny-teacher-2l`` started from the teacher, KD on) with
the same steps, batch size and seed per seed column, and is scored on test.json (unseen voices):

- ``base``: train.json with the train store (what ``kdstore demo`` did before);
- ``plus-untranscribed``: train.json + untranscribed.json with both stores (``--store`` twice);
- ``plus-filtered``: the same with the filtered store;
- ``plus-kd-only``: both stores, the teacher-labelled utterances learn from the lattice only
  (``model.kd.pseudo_label_alpha=1``: no RNN-T/CTC term on their hard labels).

    python bench/untranscribed.py --corpus-dir corpus --workdir work --rows base plus-untranscribed --steps 2800 \\
        --extra-test bigger-test.json   # add --out docs/benchmarks.md to rewrite that section

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
    HEADLINE,
    curve_summary,
    default_teacher,
    file_id,
    fmt_wer,
    folder_bytes,
    kdstore_cmd,
    parse_eval_json,
    run_jobs,
    run_logged,
    versions,
)

SECTION = "## Untranscribed audio: the teacher labels it, the student learns from it"
DEFAULT_STEPS = 700  # the demo's budget; other budgets keep their own result files


@dataclass(frozen=True)
class Row:
    name: str
    label: str
    stores: tuple[str, ...]
    manifests: tuple[str, ...]
    kd: bool = True
    overrides: tuple[str, ...] = ()


ROWS = [
    Row("base", "train.json only (KD, train store)", ("train",), ("train",)),
    Row("plus-untranscribed", "+ teacher-labelled untranscribed audio (two stores)", ("train", "untranscribed"),
        ("train", "untranscribed")),
    Row("plus-filtered", "+ teacher-labelled audio, least sure fifth left out (--min-confidence)",
        ("train", "filtered"), ("train", "untranscribed")),
    Row("plus-kd-only", "+ teacher-labelled audio, KD only on it (model.kd.pseudo_label_alpha=1)",
        ("train", "untranscribed"), ("train", "untranscribed"), overrides=("model.kd.pseudo_label_alpha=1.0",)),
]


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.work: Path = args.workdir.resolve()
        self.teacher: Path = args.teacher.resolve()
        self.corpus: Path = args.corpus_dir.resolve()
        self.manifests = {"train": self.corpus / "train.json", "untranscribed": self.corpus / "untranscribed.json"}
        self.refs = self.corpus / "untranscribed.refs.json"
        self.test = self.corpus / "test.json"
        self.teacher_id = file_id(self.teacher)
        for path in (*self.manifests.values(), self.refs):
            if not path.is_file():
                raise SystemExit(f"{path} is missing: build the corpus with kdstore prepare-demo --voices wide "
                                 "--untranscribed-hours 1")

    def log(self, message: str) -> None:
        print(f"[untranscribed {time.strftime('%H:%M:%S')}] {message}", flush=True)

    def store_path(self, name: str) -> Path:
        return self.work / "stores" / f"{name}.zarr"

    def dump(self, name: str, manifest: str, extra: tuple[str, ...] = ()) -> dict:
        fingerprint = {"teacher": self.teacher_id, "manifest": file_id(self.manifests[manifest]), "extra": list(extra)}
        marker = self.work / "stores" / f"{name}.json"
        if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == fingerprint:
            return json.loads(marker.read_text())
        command = kdstore_cmd("dump-teacher", "--teacher", str(self.teacher), "--manifest", str(self.manifests[manifest]),
                              "--out", str(self.store_path(name)), "--threads", "1", "--overwrite", "--no-progress",
                              *extra)
        self.log(f"dump {name}")
        start = time.perf_counter()
        log = self.work / "logs" / f"dump-{name}.log"
        if run_logged(command, log) != 0:
            raise RuntimeError(f"dump {name} failed; see {log}")
        done = {"fingerprint": fingerprint, "bytes": folder_bytes(self.store_path(name)),
                "seconds": round(time.perf_counter() - start, 1), "command": shlex.join(command),
                "last_lines": log.read_text().strip().splitlines()[-2:]}
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(done, indent=2))
        return done

    def label_quality(self) -> dict:
        from kdstore.evaluate.label_quality import label_quality, write_label_quality

        quality = label_quality(self.store_path("untranscribed"), self.refs)
        write_label_quality(quality, self.work / "label-quality")
        return quality.to_json() | {"table": quality.table()}

    def train_command(self, row: Row, seed: int, output: Path) -> list[str]:
        command = kdstore_cmd("train-student", "--config", HEADLINE, "--no-progress")
        for store in row.stores:
            command += ["--store", str(self.store_path(store))]
        manifests = ",".join(str(self.manifests[m]) for m in row.manifests)
        command += [f"model.train_ds.manifest_filepath={manifests}", f"run.output={output}",
                    f"trainer.max_steps={self.args.steps}", f"model.train_ds.batch_size={self.args.batch_size}",
                    f"run.seed={seed}", "run.num_threads=1", "trainer.accelerator=cpu",
                    f"exp_manager.exp_dir={output.with_suffix('.logs')}", f"model.init_from_teacher.path={self.teacher}"]
        if not row.kd:
            command.append("model.enable_kd=false")
        return command + list(row.overrides)

    def student(self, row: Row, seed: int, stores: dict) -> dict:
        tag = f"{row.name}-s{seed}" + (f"-{self.args.steps}steps" if self.args.steps != DEFAULT_STEPS else "")
        result_path = self.work / "results" / f"{tag}.json"
        fingerprint = {"row": row.name, "seed": seed, "steps": self.args.steps, "batch_size": self.args.batch_size,
                       "teacher": self.teacher_id, "stores": [stores[s]["fingerprint"] for s in row.stores]}
        if row.overrides:
            fingerprint["overrides"] = list(row.overrides)
        output = self.work / "students" / f"{tag}.nemo"
        if result_path.is_file() and json.loads(result_path.read_text()).get("fingerprint") == fingerprint:
            return self.extra_tests(json.loads(result_path.read_text()), tag, output, result_path)
        command = self.train_command(row, seed, output)
        start = time.perf_counter()
        done_steps, _ = curve_summary(output.with_suffix(".log.csv"))
        if output.is_file() and done_steps == self.args.steps:  # trained earlier; only its eval failed
            self.log(f"reuse {tag} (trained earlier)")
        else:
            self.log(f"train {tag}")
            if run_logged(command, self.work / "logs" / f"{tag}.train.log") != 0:
                raise RuntimeError(f"training {tag} failed; see {self.work / 'logs' / f'{tag}.train.log'}")
        wall = round(time.perf_counter() - start, 1)
        log = self.work / "logs" / f"{tag}.eval.log"
        if run_logged(kdstore_cmd("eval", "--model", str(output), "--manifest", str(self.test), "--json",
                                  "--no-progress", "--threads", "1"), log) != 0:
            raise RuntimeError(f"eval of {tag} failed; see {log}")
        summary = parse_eval_json(log)["model"]
        steps, seconds = curve_summary(output.with_suffix(".log.csv"))
        result = {"fingerprint": fingerprint, "row": row.name, "seed": seed, "wer": summary["wer"],
                  "cer": summary["cer"], "steps": steps, "train_seconds": seconds, "wall_seconds": wall,
                  "command": shlex.join(command)}
        result_path.parent.mkdir(parents=True, exist_ok=True)
        result_path.write_text(json.dumps(result, indent=2))
        self.log(f"done {tag}: WER {100 * result['wer']:.2f}%")
        return self.extra_tests(result, tag, output, result_path)

    def extra_tests(self, result: dict, tag: str, model: Path, result_path: Path) -> dict:
        """Score the student on every ``--extra-test`` manifest it has no score for yet (kept in its result
        file under ``extra``, keyed by the manifest's file id), so a larger test set can be added later."""
        for manifest in self.args.extra_test:
            key = file_id(manifest)
            if key in result.get("extra", {}):
                continue
            log = self.work / "logs" / f"{tag}.eval-{manifest.stem}-{key[-16:]}.log"
            if run_logged(kdstore_cmd("eval", "--model", str(model), "--manifest", str(manifest), "--json",
                                      "--no-progress", "--threads", "1"), log) != 0:
                raise RuntimeError(f"eval of {tag} on {manifest} failed; see {log}")
            summary = parse_eval_json(log)["model"]
            utterances = sum(1 for line in manifest.open() if line.strip())
            result.setdefault("extra", {})[key] = {"manifest": str(manifest), "utterances": utterances,
                                                   "wer": summary["wer"], "cer": summary["cer"]}
            result_path.write_text(json.dumps(result, indent=2))
            self.log(f"{tag} on {manifest}: WER {100 * summary['wer']:.2f}%")
        return result


def paired_t(diffs: list[float]) -> float | None:
    """Student's paired t statistic of the per-seed differences (mean / (sd / sqrt(n))); None below 2 seeds."""
    if len(diffs) < 2 or statistics.stdev(diffs) == 0:
        return None
    return statistics.mean(diffs) / (statistics.stdev(diffs) / len(diffs) ** 0.5)


def budget_results(work: Path, rows: tuple[str, ...], test: str | None = None) -> dict[int, dict[str, dict[int, float]]]:
    """``steps -> row -> seed -> test WER %`` of every result file in ``<work>/results`` for ``rows``: on the
    corpus' test.json, or with ``test`` (a manifest's :func:`file_id`) on that ``--extra-test`` set."""
    found: dict[int, dict[str, dict[int, float]]] = {}
    for path in sorted((work / "results").glob("*.json")):
        result = json.loads(path.read_text())
        fp = result.get("fingerprint", {})
        if fp.get("row") not in rows or "overrides" in fp:
            continue
        wer = result["wer"] if test is None else result.get("extra", {}).get(test, {}).get("wer")
        if wer is not None:
            found.setdefault(fp["steps"], {}).setdefault(fp["row"], {})[fp["seed"]] = 100 * wer
    return found


def budget_table(work: Path, row: str = "plus-untranscribed", base: str = "base", test: str | None = None) -> str:
    """Every training budget (steps) measured in ``work``: ``base`` against ``row``, paired by seed.

    Reads ``<work>/results/*.json`` (one file per row, seed and budget), so runs of several invocations with
    other ``--steps`` and ``--seeds`` land in one table. WER in percent (on test.json, or on the
    ``--extra-test`` manifest whose file id is ``test``); differences in WER points.
    """
    found = budget_results(work, (base, row), test)
    lines = [f"| steps | seeds | {base} WER % | {row} WER % | paired difference per seed | mean | better in | paired t |",
             "|---:|---|---:|---:|---|---:|---:|---:|"]
    for steps in sorted(found):
        seeds = sorted(set(found[steps].get(base, {})) & set(found[steps].get(row, {})))
        if not seeds:
            continue
        a = [found[steps][base][s] for s in seeds]
        b = [found[steps][row][s] for s in seeds]
        diffs = [y - x for x, y in zip(a, b)]
        t = paired_t(diffs)
        sd = (lambda v: f" ± {statistics.stdev(v):.2f}" if len(v) > 1 else "")
        lines.append(f"| {steps} | {', '.join(map(str, seeds))} | {statistics.mean(a):.2f}{sd(a)} | "
                     f"{statistics.mean(b):.2f}{sd(b)} | {', '.join(f'{d:+.2f}' for d in diffs)} | "
                     f"{statistics.mean(diffs):+.2f} | {sum(d < 0 for d in diffs)} of {len(diffs)} | "
                     f"{'-' if t is None else f'{t:.2f}'} |")
    return "\n".join(lines)


def min_confidence_from(quality: dict) -> float:
    """The label-quality table's second threshold: the value that leaves the least sure bucket out."""
    return float(quality["thresholds"][1]["min_confidence"])


def report(bench: Bench, rows: list[Row], seeds: list[int], results: dict, stores: dict, quality: dict,
           corpus: dict, threshold: float) -> str:
    by_row = {r.name: [results[f"{r.name}-s{s}"]["wer"] for s in seeds if f"{r.name}-s{s}" in results] for r in rows}
    lines = [f"Measured {datetime.date.today()} on {machine()}; {versions()}.", "",
             (f"Command: `python bench/untranscribed.py --corpus-dir {bench.args.corpus_dir} --workdir {bench.args.workdir} "
             f"--rows {' '.join(r.name for r in rows)} --steps {bench.args.steps} --seeds {' '.join(map(str, seeds))}"
             + (f" --one-seed-rows {' '.join(bench.args.one_seed_rows)}" if bench.args.one_seed_rows else "")
             + "".join(f" --extra-test {m}" for m in bench.args.extra_test)
             + "` (corpus: `kdstore prepare-demo --voices wide --hours 1 "
             "--untranscribed-hours 1`)."), "",
             (f"Corpus: train {corpus['train']['utterances']} utterances ({corpus['train']['hours']:.3f} h), "
             f"untranscribed {corpus['untranscribed']['utterances']} ({corpus['untranscribed']['hours']:.3f} h, voices "
             f"of no other split (training voices at unheard pitches), new training-split sentences, text withheld), "
             f"test {corpus['test']['utterances']} "
             "(unseen voices). Student: the demo's headline `tiny-teacher-2l` (2 of the teacher's 4 layers, started "
             f"from the teacher, hybrid, kd_alpha 0.8), {bench.args.steps} steps, batch {bench.args.batch_size}, "
             "one thread per run, two runs side by side."), "",
             "### Label quality of the teacher's labels (untranscribed split vs the withheld text)", "",
             quality["table"], "",
             f"`plus-filtered` uses `--min-confidence {threshold:.4f}`.", "",
             "### Test WER of the student", "",
             "| row | WER % (mean ± sd) | per seed | stores |", "|---|---:|---|---|"]
    for r in rows:
        mean, per = fmt_wer(by_row[r.name])
        lines.append(f"| {r.name}: {r.label} | {mean} | {per} | {' + '.join(r.stores)} |")
    lines += ["", "Paired by seed (row minus base, WER points; negative: the added audio helped):", ""]
    for r in rows[1:]:
        diffs = [100 * (results[f"{r.name}-s{s}"]["wer"] - results[f"base-s{s}"]["wer"]) for s in seeds
                 if f"{r.name}-s{s}" in results and f"base-s{s}" in results]
        if diffs:
            better = sum(d < 0 for d in diffs)
            lines.append(f"- {r.name}: {', '.join(f'{d:+.2f}' for d in diffs)} (mean {statistics.mean(diffs):+.2f}; "
                         f"better in {better} of {len(diffs)} seeds)")
    lines += ["", (f"Every budget measured in {bench.work} (same code, same stores; this table is rebuilt from its "
              "result files on every run):"), "", budget_table(bench.work)]
    for manifest in bench.args.extra_test:
        n = sum(1 for line in manifest.open() if line.strip())
        lines += ["", f"The same students on `{manifest}` ({n} utterances, `--extra-test`):", "",
                  budget_table(bench.work, test=file_id(manifest))]
    lines += ["", "Stores: " + "; ".join(f"{name} {s['bytes'] / 1e6:.1f} MB, dumped in {s['seconds']:.0f} s"
                                         for name, s in stores.items()) + ".", "",
              "![untranscribed study](img/untranscribed.png)"]
    return "\n".join(lines)


def plot(path: Path, rows: list[Row], seeds: list[int], results: dict, quality: dict, work: Path,
         steps: int) -> None:
    """Three panels: this run's rows (mean bar, a dot per seed); test WER by training budget for ``base`` and
    ``plus-untranscribed`` (every budget in ``work``, a line through the means, paired seeds joined); the
    teacher's label WER by confidence bucket."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4))
    budgets = budget_results(work, ("base", "plus-untranscribed"))
    for name, colour in (("base", "#8c8c8c"), ("plus-untranscribed", "#4c72b0")):
        measured = [n for n in sorted(budgets) if budgets[n].get(name)]
        for n in measured:
            middle.scatter([n] * len(budgets[n][name]), list(budgets[n][name].values()), color=colour, s=12, alpha=0.7)
        middle.plot(measured, [statistics.mean(budgets[n][name].values()) for n in measured], color=colour, marker="o",
                    label=f"{name} (mean)")
    middle.set_xlabel("training steps (batch 16)")
    middle.set_ylabel("test WER % (unseen voices)")
    middle.set_title("by budget: transcribed only vs + teacher-labelled")
    middle.legend(fontsize=8)
    for i, r in enumerate(rows):
        values = [100 * results[f"{r.name}-s{s}"]["wer"] for s in seeds if f"{r.name}-s{s}" in results]
        if values:
            left.bar(i, statistics.mean(values), color=["#8c8c8c", "#4c72b0", "#55a868"][i % 3])
            left.scatter([i] * len(values), values, color="black", zorder=3, s=12)
    left.set_xticks(range(len(rows)), [r.name for r in rows], fontsize=8)
    left.set_ylabel("test WER % (unseen voices)")
    left.set_title(f"student WER at {steps} steps, {len(seeds)} seeds (dots)")
    names = [f"{b['low']:.4f}..{b['high']:.4f}" for b in quality["buckets"]]
    right.bar(range(len(names)), [100 * b["wer"] for b in quality["buckets"]], color="#dd8452")
    right.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    right.set_xlabel("teacher confidence (nats per token)")
    right.set_ylabel("label WER %")
    right.set_title(f"teacher labels: {100 * quality['wer']:.1f}% WER overall")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus-dir", type=Path, required=True,
                        help="a corpus of kdstore prepare-demo --voices wide --untranscribed-hours 1")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/kdstore-untranscribed"),
                        help="stores, students, logs and per-run results (reused: runs are restartable)")
    parser.add_argument("--teacher", type=Path, default=default_teacher(), help="default: the committed demo teacher")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training steps per student (the demo: 700)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=[r.name for r in ROWS], choices=[r.name for r in ROWS],
                        metavar="ROW", help=f"rows to run: {', '.join(r.name for r in ROWS)} (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="students trained side by side (one thread each)")
    parser.add_argument("--one-seed-rows", nargs="*", default=[], help="rows run with the first seed only")
    parser.add_argument("--extra-test", type=Path, action="append", default=[],
                        help="another test manifest (repeatable) every student is scored on too, e.g. a larger "
                             "split of the same unseen voices; reported in its own table")
    parser.add_argument("--out", type=Path, default=None, help="docs/benchmarks.md to write the section into")
    args = parser.parse_args()
    unknown = set(args.one_seed_rows) - set(args.rows)
    if unknown:
        parser.error(f"--one-seed-rows {' '.join(sorted(unknown))}: not among --rows")
    for manifest in args.extra_test:
        if not manifest.is_file():
            parser.error(f"--extra-test {manifest}: no such manifest")
    bench = Bench(args)
    rows = [r for r in ROWS if r.name in args.rows]
    stores = {"train": bench.dump("train", "train"), "untranscribed": bench.dump("untranscribed", "untranscribed")}
    quality = bench.label_quality()
    print(quality["table"], flush=True)
    threshold = min_confidence_from(quality)
    if any("filtered" in r.stores for r in rows):
        stores["filtered"] = bench.dump("filtered", "untranscribed", ("--min-confidence", f"{threshold:.4f}"))
    jobs = [(f"{r.name}-s{s}", (lambda r=r, s=s: bench.student(r, s, stores))) for s in args.seeds for r in rows
            if r.name not in args.one_seed_rows or s == args.seeds[0]]
    results, errors = run_jobs(jobs, args.jobs)
    corpus = json.loads((bench.corpus / "corpus.json").read_text())["splits"]
    text = report(bench, rows, args.seeds, results, stores, quality, corpus, threshold)
    png = (args.out.parent / "img" / "untranscribed.png") if args.out else bench.work / "untranscribed.png"
    plot(png, rows, args.seeds, results, quality, bench.work, args.steps)
    print(text)
    (bench.work / "report.md").write_text(text + "\n")
    if args.out:
        write_section(args.out, SECTION, text)
    if errors:
        raise SystemExit(f"failed: {errors}")


if __name__ == "__main__":
    main()
