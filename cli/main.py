"""The ``kdstore`` command: one thin sub-command per verb, registered explicitly."""

from __future__ import annotations

import importlib

import click

from kdstore import __version__

# verb -> module under kdstore.cli.commands exposing a click command named ``command``.
# Modules are imported lazily so `kdstore --help` never imports torch or NeMo.
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare-demo": ("prepare_demo", "Synthesise the demo speech corpus offline (Debian TTS engines)."),
    "prepare-librispeech": ("prepare_librispeech", "Write NeMo manifests for a LibriSpeech folder."),
    "dump-teacher": ("dump_teacher", "Run a NeMo transducer teacher once and store its top-k lattice."),
    "inspect": ("inspect", "Summarise (and verify) a kdstore Zarr store."),
    "label-quality": ("label_quality", "Score a store's teacher labels against withheld transcripts, by confidence."),
    "convert": ("convert", "Copy a store between Zarr and one HDF5 file."),
    "train-student": ("train_student", "Train a FastConformer-Transducer student, with KD from a store."),
    "eval": ("evaluate", "Greedy transcripts, WER and CER of one or more .nemo models."),
    "export-onnx": ("export_onnx", "Export a .nemo transducer to ONNX (sherpa-onnx or NeMo/onnx-asr layout)."),
    "transcribe": ("transcribe", "Transcribe audio files with an exported ONNX model (onnxruntime)."),
    "demo": ("demo", "Run the whole pipeline on the demo corpus and write a report."),
}


class LazyGroup(click.Group):
    """A group whose sub-commands are imported only when invoked or asked for help."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module_name, _ = COMMANDS[cmd_name]
        module = importlib.import_module(f"kdstore.cli.commands.{module_name}")
        return module.command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, summary) for name, (_, summary) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kdstore")
def cli() -> None:
    """kdstore: offline knowledge distillation for NeMo speech transducers.

    \b
    Typical flow:
      kdstore dump-teacher --teacher T.nemo --manifest train.json --out T.zarr
      kdstore train-student --config tiny --store T.zarr model.train_ds.manifest_filepath=train.json
      kdstore eval --model student.nemo --manifest test.json
      kdstore export-onnx --model student.nemo --out onnx/
    """


if __name__ == "__main__":
    cli()
