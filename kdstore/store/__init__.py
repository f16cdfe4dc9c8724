"""The kdstore Zarr store: format metadata, part writers, commit, a reader and a verifier.

No NeMo imports here: this package is the reusable core and must stay fast to import and test.
"""

from kdstore.store.meta_v3 import FORMAT_VERSION, StoreMetadata
from kdstore.store.part_writer import PartWriter
from kdstore.store.reader import StoreReader, UtteranceRows
from kdstore.store.root import commit_store, open_for_writing
from kdstore.store.store_set import StoreSet, split_paths

__all__ = ["FORMAT_VERSION", "PartWriter", "StoreMetadata", "StoreReader", "StoreSet", "UtteranceRows", "commit_store",
           "open_for_writing", "split_paths"]
