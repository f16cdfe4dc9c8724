"""Read what a .nemo archive carries without instantiating the model (tokenizer files, config)."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

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


def restore_model(nemo_path: str | Path, map_location: str = "cpu", error: type[KdstoreError] = KdstoreError) -> Any:
    """Restore any NeMo ASR model, in eval mode, with exact front-end buffers: the one restore path.

    ``restore_from`` returns train mode (dropout on), so the model is put in eval mode. A model saved
    with fp16 weights (the committed demo teacher) restores with fp16-rounded STFT window and mel
    filterbank; those are replaced by their exact float32 values
    (:func:`kdstore.nemo.frontend.restore_rounded_buffers`), so eval, dump-teacher and export-onnx all
    compute the features the model was trained with.

    Raises:
        error (default :class:`KdstoreError`): the file is missing, or NeMo cannot restore it.
    """
    from nemo.collections.asr.models import ASRModel

    path = Path(nemo_path)
    if not path.is_file():
        raise error(f"model file {path} does not exist; pass the path of a NeMo .nemo file")
    try:
        model = ASRModel.restore_from(str(path), map_location=map_location)
    except Exception as err:  # NeMo raises many kinds; the user needs one sentence
        raise error(f"{path}: NeMo could not restore this .nemo file ({err})") from err
    model.eval()
    exact_frontend_buffers(model)
    return model


def exact_frontend_buffers(model: Any) -> bool:
    """Replace fp16-rounded window/filterbank buffers of a log-mel preprocessor; False if none changed.

    Preprocessors kdstore cannot describe (not log-mel, unusual settings) are left as they are.
    """
    from kdstore.errors import ExportError
    from kdstore.nemo.frontend import MEL_PREPROCESSOR, frontend_config_from_nemo, restore_rounded_buffers

    preprocessor = getattr(model, "preprocessor", None)
    if type(preprocessor).__name__ != MEL_PREPROCESSOR:
        return False
    try:
        frontend = frontend_config_from_nemo(preprocessor)
    except (ExportError, ValueError):
        return False
    return restore_rounded_buffers(preprocessor, frontend)
