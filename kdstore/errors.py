"""One error hierarchy for everything a user can get wrong.

Each class also inherits the builtin that matches it, so callers that catch ``ValueError`` or
``FileNotFoundError`` keep working, and the CLI turns any ``KdstoreError`` into one clear line.
Messages say what is wrong, where (file and line when there is one) and how to fix it.
"""

from __future__ import annotations


class KdstoreError(Exception):
    """Base class of every error kdstore raises on purpose."""


class ManifestError(KdstoreError, ValueError):
    """A manifest line is malformed, has an empty transcript, or names missing audio."""


class AudioError(KdstoreError, ValueError):
    """An audio file is missing, unreadable or has the wrong sample rate/channels."""


class StoreError(KdstoreError, ValueError):
    """A store is missing, incomplete, corrupt or written in an unknown format version."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No store (or no committed store) exists at the given path."""


class MetadataError(StoreError):
    """A store's root metadata lacks a required field or holds one of the wrong type.

    ``field`` is the dotted path (``kdstore.counts.nodes``), ``expected`` the type or values it must
    have, ``got`` what was found (type and value, or ``nothing`` when missing), ``store`` the path.
    """

    def __init__(self, field: str, expected: str, got: str, store: str = "") -> None:
        self.field, self.expected, self.got, self.store = field, expected, got, store
        where = f"store {store}: " if store else ""
        super().__init__(f"{where}root attribute {field}: expected {expected}, got {got}; the store was not "
                         "written by kdstore or is damaged: re-run dump-teacher")

    def __reduce__(self):  # pickle (DataLoader workers) rebuilds from the fields, not the message
        return type(self), (self.field, self.expected, self.got, self.store)


class IncompatibleStoreError(StoreError):
    """A store was made by another teacher/tokenizer/frame rate than the student expects."""


class ConfigError(KdstoreError, ValueError):
    """A config file or ``key=value`` override is invalid."""


class DependencyError(KdstoreError, ImportError):
    """An optional dependency or system tool (TTS engine, sox) is missing."""


class TrainingError(KdstoreError, RuntimeError):
    """Training cannot go on (a non-finite loss, no training batch); nothing is saved as a model."""


class ExportError(KdstoreError, ValueError):
    """A model cannot be exported, or a folder is not a complete ONNX export."""


class StreamingError(KdstoreError, ValueError):
    """A model cannot be streamed cache-aware, or a chunk length it was not trained for was asked."""
