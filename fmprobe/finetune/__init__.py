"""``fmprobe finetune``: LoRA adaptation, full fine-tuning and a linear head trained by the same
loop, over the sweep's own plan (its test split and nested (n, seed) subsets), with rows in the
sweep's results table."""

from fmprobe.finetune.api import FinetuneReport, finetune, merge
from fmprobe.finetune.config import METHODS, FinetuneConfig, TrainSettings

__all__ = ["METHODS", "FinetuneConfig", "FinetuneReport", "TrainSettings", "finetune", "merge"]
