"""The sweep stage: plan, splits and nested subsets, execution, results table."""

from fmprobe.sweep.run import PROBES, SAMPLERS, SweepConfig, SweepReport, sweep

__all__ = ["PROBES", "SAMPLERS", "SweepConfig", "SweepReport", "sweep"]
