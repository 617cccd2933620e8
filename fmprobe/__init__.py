"""fmprobe: how many labels, with which foundation model?

Stages (see README): ``embed`` → feature store (Zarr) → ``sweep`` → results (Parquet) →
``forecast`` / ``compare`` / ``report``; ``select`` picks which samples to label first.
"""

from fmprobe.errors import FmprobeError, UsageError

__version__ = "0.1.0"

__all__ = ["FmprobeError", "UsageError", "__version__"]
