"""The report's Provenance section: what the results were computed from (store fingerprint,
sweep settings, fmprobe versions) and, with the store, its models, weights and libraries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from fmprobe import storage
from fmprobe.report.page import Page

SWEEP_SETTINGS = ("probes", "samplers", "n", "seeds", "C", "split_col", "test_frac", "group_col",
                  "split_seed", "standardize", "l2_normalize", "max_iter", "tol", "uncertain",
                  "blank")  # fmt: skip


def _results_rows(res: pd.DataFrame, results: str, forecast: Any) -> list[tuple[str, str]]:
    from fmprobe import __version__

    rows: list[tuple[str, str]] = [("results", str(results))]
    for col, what in (
        ("store_fingerprint", "store fingerprint (results)"),
        ("fmprobe_version", "fmprobe version (sweep)"),
    ):
        if col in res.columns:
            rows.append((what, ", ".join(map(str, res[col].unique()))))
    rows.append(("fmprobe version (report)", __version__))
    cfg_path = storage.join(storage.sibling(results, ".parts"), "config.json")
    if storage.exists(cfg_path):
        try:
            cfg = json.loads(storage.read_text(cfg_path)).get("config", {})
        except (OSError, ValueError, AttributeError):
            cfg = {}
        settings = ", ".join(f"{k}={cfg[k]}" for k in SWEEP_SETTINGS if k in cfg)
        if settings:
            rows.append(("sweep settings", settings))
    if isinstance(forecast, str | Path):
        rows.append(("forecast", str(forecast)))
    return rows


def _model_rows(fs: Any) -> list[dict[str, Any]]:
    models = []
    for m in fs.models():
        meta = fs.model_meta(m)
        spec = meta.get("model", {})
        weights = spec.get("weights", "")
        models.append(
            {
                "model": m,
                "spec": spec.get("spec", ""),
                "weights": json.dumps(weights) if isinstance(weights, dict) else str(weights),
                "layers": ", ".join(map(str, meta.get("layers", []))),
                "pools": ", ".join(meta.get("pools", [])),
                "dtype": meta.get("dtype", ""),
                "versions": ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()),
            }
        )
    return models


def provenance_section(
    page: Page, res: pd.DataFrame, results: str, store: str | Path | None, forecast: Any
) -> None:
    rows = _results_rows(res, results, forecast)
    models: list[dict[str, Any]] = []
    if store is not None:
        from fmprobe.store import open_store

        fs = open_store(store)
        rows.append(("store", fs.path))
        rows.append(("store fingerprint", fs.fingerprint))
        if "store_fingerprint" in res.columns and fs.fingerprint not in set(
            res["store_fingerprint"]
        ):
            rows.append(("warning", "the store's fingerprint differs from the results' store"))
        ds = fs.meta.get("dataset", {})
        rows.append(("dataset", ", ".join(f"{k}={v}" for k, v in ds.items() if k != "fingerprint")))
        rows.append(("store created by", str(fs.meta.get("created_by", ""))))
        models = _model_rows(fs)
        imported = [f.key for f in fs.features() if f.imported]
        if imported:
            rows.append(("imported features", ", ".join(imported)))
    page.section("Provenance")
    page.table(pd.DataFrame(rows, columns=["item", "value"]), wrap=True)
    if models:
        page.table(pd.DataFrame(models), wrap=True)
    elif store is None:
        page.note("Pass <code>--store</code> for the models, weights and library versions.")
