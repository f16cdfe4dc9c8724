"""The kdstore Zarr store: format metadata, a writer, a reader and a verifier.

No NeMo imports here: this package is the reusable core and must stay fast to import and test.
"""

from kdstore.store.metadata import FORMAT_VERSION, StoreMetadata
from kdstore.store.reader import StoreReader, UtteranceRows
from kdstore.store.writer import StoreWriter

__all__ = ["FORMAT_VERSION", "StoreMetadata", "StoreReader", "StoreWriter", "UtteranceRows"]
