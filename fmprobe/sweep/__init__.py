"""The sweep stage: probes over features × tasks × samplers × label counts × seeds.

``config`` (the ``SweepConfig`` and its checks), ``plan`` (work units), ``splits`` and
``subsets`` (the test split and the nested training subsets), ``tasks`` (label columns as
tasks), ``units`` (running units; the local engine), ``processes`` and ``ray_engine`` (the
other engines), ``results`` (parts, the results table, ``merge``), ``api`` (``sweep()``).
"""

from fmprobe.sweep.api import ConvergenceWarning, SweepReport, sweep
from fmprobe.sweep.config import PROBES, SweepConfig, samplers
from fmprobe.sweep.results import RESULT_COLUMNS, merge

__all__ = [
    "PROBES",
    "RESULT_COLUMNS",
    "ConvergenceWarning",
    "SweepConfig",
    "SweepReport",
    "merge",
    "samplers",
    "sweep",
]
