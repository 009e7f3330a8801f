"""The activation store: TensorStore zarr3 arrays (one per hook) plus ``manifest.json``."""

from jaxinterp.store.manifest import read_manifest
from jaxinterp.store.reader import Store, StoreError, open_store
from jaxinterp.store.spec import SIDE_ARRAYS, Layout, array_spec, kvstore_spec, plan_layout
from jaxinterp.store.writer import StoreExistsError, StoreWriter

__all__ = [
    "Layout",
    "SIDE_ARRAYS",
    "Store",
    "StoreError",
    "StoreExistsError",
    "StoreWriter",
    "array_spec",
    "kvstore_spec",
    "open_store",
    "plan_layout",
    "read_manifest",
]
