"""Read what a .nemo archive carries without instantiating the model (tokenizer files, config)."""

from __future__ import annotations

import tarfile
from pathlib import Path

from kdstore.errors import KdstoreError

TOKENIZER_FILES = ("tokenizer.model", "vocab.txt", "tokenizer.vocab")


def read_tokenizer_files(nemo_path: str | Path) -> dict[str, bytes]:
    """Tokenizer artifacts of a .nemo under their canonical NeMo names (tokenizer.model, vocab.txt...).

    NeMo stores artifacts as ``<uuid>_<name>``; the uuid prefix is dropped here.
    """
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(nemo_path, "r:*") as archive:
            for member in archive.getmembers():
                name = Path(member.name).name
                for canonical in TOKENIZER_FILES:
                    if name == canonical or name.endswith("_" + canonical):
                        handle = archive.extractfile(member)
                        if handle is not None:
                            files[canonical] = handle.read()
    except (tarfile.TarError, OSError) as err:
        raise KdstoreError(f"{nemo_path} is not a readable .nemo archive: {err}") from None
    if "tokenizer.model" not in files:
        raise KdstoreError(f"{nemo_path} has no SentencePiece tokenizer.model; kdstore needs a BPE-tokenizer model")
    return files


def restore_model(nemo_path: str | Path, map_location: str = "cpu"):
    """Restore any NeMo ASR model in eval mode (restore_from returns train mode: dropout on)."""
    from nemo.collections.asr.models import ASRModel

    path = Path(nemo_path)
    if not path.is_file():
        raise KdstoreError(f"model file {path} does not exist")
    model = ASRModel.restore_from(str(path), map_location=map_location)
    return model.eval()
