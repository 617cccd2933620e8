"""Cold-start selection: which samples to label first, from their embeddings alone.

``select_indices(features, budget=, strategy=)`` works on an array (the sweep's sampler uses
it); ``select(store=, feature=, ...)`` reads a feature store and writes the ids to annotate.
"""

from fmprobe.select.api import (
    STRATEGIES,
    Selection,
    SelectReport,
    parse_strategy,
    select,
    select_indices,
)

__all__ = ["STRATEGIES", "SelectReport", "Selection", "parse_strategy", "select", "select_indices"]
