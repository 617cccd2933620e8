"""Shared fixtures: tiny random-init models of every source, saved locally (no model hub)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# Never reach for a model hub from the tests, whatever network the machine has.
os.environ["HF_HUB_OFFLINE"] = "1"

TINY_VIT = {"img_size": 32, "patch_size": 8, "depth": 4, "embed_dim": 32, "num_heads": 2}
TINY_SIGLIP = {"img_size": 32, "patch_size": 8, "depth": 3, "embed_dim": 32, "num_heads": 2}


def gpu_available() -> bool:
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not gpu_available():
            item.add_marker(skip)


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny DINOv2 (class token) and a tiny SigLIP vision tower (MAP head), saved with
    their image processors, as a user's local model directories."""
    from transformers import (
        BitImageProcessor,
        Dinov2Config,
        Dinov2Model,
        SiglipImageProcessor,
        SiglipVisionConfig,
        SiglipVisionModel,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    root = tmp_path_factory.mktemp("hf")
    common = {
        "hidden_size": 32,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "image_size": 32,
        "patch_size": 8,
    }
    torch.manual_seed(1)
    Dinov2Model(Dinov2Config(**common)).save_pretrained(root / "dino")
    BitImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(root / "dino")
    SiglipVisionModel(SiglipVisionConfig(**common)).save_pretrained(root / "siglip")
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "siglip")
    return {"dino": root / "dino", "siglip": root / "siglip"}


@dataclass(frozen=True)
class CliResult:
    """What ``fmprobe ARGS`` did, run in this process through click's test runner."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def returncode(self) -> int:  # the name subprocess results use
        return self.exit_code


def run_cli(*args: str, check: bool = False) -> CliResult:
    """``fmprobe ARGS`` in-process (click's ``CliRunner``): its exit code, stdout and stderr.
    A traceback is never the answer: an exception that escapes the command fails the test."""
    from click.testing import CliRunner

    from fmprobe.cli import main

    result = CliRunner().invoke(main, list(args), catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    out = CliResult(result.exit_code, result.stdout, result.stderr)
    if check:
        assert out.exit_code == 0, out.stderr
    return out
