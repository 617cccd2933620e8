"""The Zarr feature store: read (``core``), write and resume (``write``: the group layout, the
``_done`` ledger, chunk writes), import and export (``transfer``)."""

from fmprobe.store.core import (
    ATTR,
    FeatureInfo,
    FeatureStore,
    open_store,
    read_strings,
    store_exists,
)
from fmprobe.store.info import ModelInfo, StoreInfo, store_info
from fmprobe.store.transfer import export_feature, import_features, read_table
from fmprobe.store.write import create_store

__all__ = [
    "ATTR",
    "FeatureInfo",
    "FeatureStore",
    "ModelInfo",
    "StoreInfo",
    "create_store",
    "export_feature",
    "import_features",
    "open_store",
    "read_strings",
    "read_table",
    "store_exists",
    "store_info",
]
