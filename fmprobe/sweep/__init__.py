"""The sweep stage: plan, splits and nested subsets, execution, results table."""

from fmprobe.sweep.run import PROBES, SweepConfig, SweepReport, samplers, sweep

__all__ = ["PROBES", "SweepConfig", "SweepReport", "samplers", "sweep"]
