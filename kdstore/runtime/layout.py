"""What an export folder holds: every file name of both layouts, once, and how to read the shared parts.

``kdstore export-onnx`` writes one of two layouts into a folder (see :mod:`kdstore.export.run`):

* ``sherpa`` (sherpa-onnx's): ``encoder.onnx``, ``decoder.onnx``, ``joiner.onnx``, ``tokens.txt``;
* ``nemo`` (NeMo's ``model.export``, what onnx-asr loads): ``encoder-model.onnx``,
  ``decoder_joint-model.onnx`` (prediction net and joint in one graph), ``vocab.txt``, ``config.json``;

plus, in both, ``preprocessor.ts`` (NeMo's preprocessor as TorchScript) and, with ``--int8``,
``<graph>.int8.onnx`` beside each graph. ``export-onnx --streaming`` writes one sherpa layout (no
``preprocessor.ts``) per chunk size into ``chunk-<ms>ms/`` sub-folders (:func:`chunk_folder`), e.g.
``OUT/chunk-560ms/encoder.onnx``: a cache-aware encoder is exported for one chunk size. The encoder carries kdstore's metadata (front end, blank id,
provenance; a TDT model's durations, :func:`tdt_durations_of`) in its ``metadata_props``; the token file has one
``piece id`` line per id, blank last.

The export (writer) and the runtimes (readers) both take the names from here. Needs the ``onnx``
package only inside :func:`read_metadata`; no torch, no NeMo.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kdstore.errors import ExportError

PREPROCESSOR_TS = "preprocessor.ts"
TDT_DURATIONS_KEY = "tdt_durations"  # encoder metadata of a TDT export: "0,1,2,3,4" (frames, joint order)
PREPROCESSOR_EXTRA_FILE = "kdstore.json"  # inside preprocessor.ts: how it was made and the front-end settings
INT8_SUFFIX = ".int8.onnx"


@dataclass(frozen=True)
class ExportLayout:
    """The file names of one layout. ``decoder`` is the prediction net (sherpa) or prediction net + joint (nemo)."""

    name: str
    encoder: str
    decoder: str
    joiner: str | None  # sherpa only
    tokens: str
    config: str | None  # nemo only (onnx-asr's config.json)

    def graphs(self, int8: bool = False) -> tuple[str, ...]:
        """The ONNX file names, encoder first; the ``*.int8.onnx`` copies with ``int8``."""
        names = (self.encoder, self.decoder) + ((self.joiner,) if self.joiner else ())
        return tuple(int8_name(n) for n in names) if int8 else names


SHERPA = ExportLayout("sherpa", "encoder.onnx", "decoder.onnx", "joiner.onnx", "tokens.txt", None)
NEMO = ExportLayout("nemo", "encoder-model.onnx", "decoder_joint-model.onnx", None, "vocab.txt", "config.json")
LAYOUTS = {SHERPA.name: SHERPA, NEMO.name: NEMO}
_CHUNK_FOLDER = re.compile(r"chunk-([0-9]+)ms")


def int8_name(name: str) -> str:
    """``encoder.onnx`` -> ``encoder.int8.onnx``: where the quantised copy of a graph lives."""
    return name.removesuffix(".onnx") + INT8_SUFFIX


def chunk_folder(chunk_ms: int) -> str:
    """``560`` -> ``chunk-560ms``: the sub-folder of a streaming export for chunks of ``chunk_ms`` milliseconds."""
    return f"chunk-{int(chunk_ms)}ms"


def chunk_folders(onnx_dir: Path) -> dict[int, Path]:
    """The ``chunk-<ms>ms`` sub-folders of ``onnx_dir`` that hold an encoder, by chunk ms (ascending)."""
    found = {}
    for path in Path(onnx_dir).glob("chunk-*ms"):
        match = _CHUNK_FOLDER.fullmatch(path.name)
        if match and (path / SHERPA.encoder).is_file():
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def detect_layout(onnx_dir: Path) -> ExportLayout:
    """The layout of ``onnx_dir`` from the encoder file present.

    Raises ExportError when both encoders are there or neither is (not an export folder).
    """
    sherpa = (onnx_dir / SHERPA.encoder).is_file()
    nemo = (onnx_dir / NEMO.encoder).is_file()
    if sherpa and nemo:
        raise ExportError(f"{onnx_dir} holds both layouts ({SHERPA.encoder} and {NEMO.encoder}); keep one per folder")
    if not (sherpa or nemo):
        raise ExportError(f"{onnx_dir}: not a complete ONNX export, missing {SHERPA.encoder} (or {NEMO.encoder}); "
                          "run kdstore export-onnx first")
    return SHERPA if sherpa else NEMO


def read_metadata(path: Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict (weights in external files are not loaded)."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def tdt_durations_of(metadata: dict[str, str], joint_width: int, num_tokens: int) -> tuple[int, ...]:
    """The TDT durations of an export (``()`` for an RNN-T one), from its encoder ``metadata``, the joint's
    output width and the number of token outputs (blank included).

    kdstore writes ``tdt_durations``; an export made elsewhere for sherpa-onnx marks TDT only by "tdt" in its
    ``url`` and, as sherpa-onnx assumes, has durations ``0..D-1`` with D = ``joint_width - num_tokens``.
    Raises ExportError when the metadata and the joint's width disagree.
    """
    extra = joint_width - num_tokens
    if TDT_DURATIONS_KEY in metadata:
        try:
            durations = tuple(int(d) for d in metadata[TDT_DURATIONS_KEY].split(","))
        except ValueError:
            raise ExportError(f"encoder metadata {TDT_DURATIONS_KEY}={metadata[TDT_DURATIONS_KEY]!r} is not a comma-"
                              "separated list of frame counts; export again with kdstore export-onnx") from None
    elif "tdt" in metadata.get("url", "") and extra > 0:
        durations = tuple(range(extra))
    else:
        durations = ()
    if len(durations) != extra:
        raise ExportError(f"the joint emits {joint_width} values for {num_tokens} tokens (blank included), but the "
                          f"encoder metadata gives {len(durations)} TDT durations; export again with kdstore export-onnx")
    return durations


def read_tokens(path: Path) -> list[str]:
    """``tokens.txt`` / ``vocab.txt`` (``piece id`` lines) as a list indexed by id.

    Raises ExportError naming the line that is not ``piece id``, or when the ids are not 0..N-1.
    """
    table: dict[int, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        piece, _, ident = line.rpartition(" ")
        if not piece or not ident.isdigit():
            raise ExportError(f"{path}:{n}: expected 'piece id', got {line!r}")
        table[int(ident)] = piece
    if sorted(table) != list(range(len(table))):
        raise ExportError(f"{path}: token ids are not 0..{len(table) - 1}")
    return [table[i] for i in range(len(table))]
