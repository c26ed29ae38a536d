"""Where artifacts live: the store, its datasets and manifests, and the file formats inside them."""

from storage.manifest import Manifest, Recipe, code_version, file_fingerprint
from storage.store import Dataset, IncompleteDatasetError, Store

__all__ = [
    "Dataset",
    "IncompleteDatasetError",
    "Manifest",
    "Recipe",
    "Store",
    "code_version",
    "file_fingerprint",
]
