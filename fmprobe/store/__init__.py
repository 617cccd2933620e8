"""The Zarr feature store: write (``embed``), resume, read, list, import and export."""

from fmprobe.store.core import (
    ATTR,
    FeatureInfo,
    FeatureStore,
    create_store,
    open_store,
    read_strings,
    store_exists,
)
from fmprobe.store.transfer import export_feature, import_features, read_table, store_info

__all__ = [
    "ATTR",
    "FeatureInfo",
    "FeatureStore",
    "create_store",
    "export_feature",
    "import_features",
    "open_store",
    "read_strings",
    "read_table",
    "store_exists",
    "store_info",
]
