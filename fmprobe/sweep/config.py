"""A sweep's configuration: ``SweepConfig`` (everything that defines its results) and the
checks that turn ``sweep()``'s options into one."""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from fmprobe.errors import UsageError, did_you_mean
from fmprobe.options import split_list
from fmprobe.probes.backends import check_backend
from fmprobe.probes.batch import ProbeSettings
from fmprobe.store import FeatureStore
from fmprobe.sweep.tasks import Task

PROBES = ("logreg", "ridge", "knn", "attnpool")
RANDOM_SAMPLER = "random"  # stratified, nested across n (sweep.splits.nested_order)


def samplers() -> tuple[str, ...]:
    """``random`` (stratified, nested) and every cold-start strategy of ``fmprobe select``."""
    from fmprobe.select import STRATEGIES

    return (RANDOM_SAMPLER, *(s for s in STRATEGIES if s != RANDOM_SAMPLER))


@dataclass(frozen=True)
class SweepConfig:
    """Everything that defines a sweep's results (recorded beside them; a rerun must match).

    Attributes
    ----------
    features, tasks, probes, samplers : tuple of str
        The plan's axes (feature keys resolved against the store).
    n : tuple
        Label counts (ints, or ``"all"`` for the whole training pool).
    seeds : int
        Seeds 0 .. seeds-1 per label count.
    C : float or "auto"
        Inverse regularisation, or k-fold cross-validation over a grid (``folds``).
    knn_k : tuple of int
    split_col, test_frac, group_col, split_seed, test_where
        How the one test split is drawn.
    labels : str or None
        The ``--labels`` table the tasks come from.
    standardize, l2_normalize : bool
    max_iter, tol : int, float
    store_fingerprint : str
        The dataset fingerprint of the store the sweep read.
    backend : str
    attnpool : str or None
        ``AttnPoolConfig`` fields as canonical JSON (probe ``attnpool``).
    uncertain, blank : str or None, str
        The label policies of CheXpert-style columns (``fmprobe.sweep.tasks``).
    """

    features: tuple[str, ...]
    tasks: tuple[str, ...]
    probes: tuple[str, ...]
    samplers: tuple[str, ...]
    n: tuple[int | str, ...]
    seeds: int
    C: float | str
    folds: int
    knn_k: tuple[int, ...]
    split_col: str | None
    test_frac: float
    group_col: str | None
    split_seed: int
    labels: str | None
    standardize: bool
    l2_normalize: bool
    max_iter: int
    tol: float
    store_fingerprint: str
    backend: str = "torch"
    test_where: str | None = None
    attnpool: str | None = None
    uncertain: str | None = None
    blank: str = "missing"

    def digest(self) -> str:
        """A short hash of the configuration (results of another configuration never mix)."""
        d = asdict(self)
        # settings added later count only when set: older sweeps keep their digest (and resume)
        later = (("backend", "torch"), ("test_where", None), ("attnpool", None),
                 ("uncertain", None), ("blank", "missing"))  # fmt: skip
        for k, default in later:
            if d[k] == default:
                del d[k]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def probe_settings(self, probe: str) -> ProbeSettings:
        """How the batched probe ``probe`` is fitted under this configuration."""
        return ProbeSettings(
            probe=probe, C=self.C, folds=self.folds, standardize=self.standardize,
            knn_k=self.knn_k, max_iter=self.max_iter, tol=self.tol, backend=self.backend,
        )  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepConfig:
        """The inverse of ``dataclasses.asdict`` (as recorded in JSON: lists back to tuples)."""
        tuples = ("features", "tasks", "probes", "samplers", "n", "knn_k")
        return cls(**{**d, **{k: tuple(d[k]) for k in tuples}})


def parse_ns(value: str | Sequence[int | str]) -> tuple[int | str, ...]:
    """``--n``: label counts and ``all``, each once, in the order given.

    >>> parse_ns("10,20,all,10")
    (10, 20, 'all')
    """
    out: list[int | str] = []
    for item in split_list(value):
        if item == "all":
            out.append("all")
            continue
        try:
            n = int(item)
        except ValueError:
            raise UsageError(f"--n {item!r}: use label counts such as 10,20,50,all") from None
        if n < 1:
            raise UsageError(f"--n {n}: label counts must be at least 1")
        out.append(n)
    if not out:
        raise UsageError("--n is empty; e.g. --n 10,20,50,all")
    return tuple(dict.fromkeys(out))


def parse_C(C: float | str) -> float | str:
    """``--C``: a positive number, or ``auto``."""
    if isinstance(C, str) and C != "auto":
        try:
            C = float(C)
        except ValueError:
            raise UsageError(f"--C {C!r}: a positive number or 'auto'") from None
    if not isinstance(C, str) and not C > 0:
        raise UsageError(f"--C {C}: must be positive (or 'auto')")
    return C


def parse_choices(
    value: str | Sequence[str], *, option: str, valid: Sequence[str], noun: str
) -> tuple[str, ...]:
    """A comma list whose every item is one of ``valid`` (close names suggested)."""
    items = tuple(split_list(value))
    bad = [s for s in items if s not in valid]
    if bad or not items:
        hint = did_you_mean(bad[0], valid) if bad else ""
        raise UsageError(
            f"{option} {bad[0] if bad else ''!r}{hint}: valid {noun} are {', '.join(valid)}"
        )
    return items


def parse_knn_k(knn_k: str | Sequence[int], *, needed: bool) -> tuple[int, ...]:
    """``--knn-k``: positive integers, sorted, each once."""
    try:
        ks = tuple(sorted({int(k) for k in split_list(knn_k)}))
    except ValueError:
        raise UsageError(f"--knn-k {knn_k!r}: comma list of integers, e.g. 1,5,20") from None
    if needed and (not ks or ks[0] < 1):
        raise UsageError("--knn-k needs positive integers, e.g. 1,5,20")
    return ks


def resolve_features(store: FeatureStore, patterns: str | Sequence[str]) -> tuple[str, ...]:
    """Feature keys from comma lists or globs; token features are left to attention probes."""
    infos = [f for f in store.features() if f.pool != "tokens" and len(f.shape) == 2]
    keys = [f.key for f in infos]
    chosen: list[str] = []
    for pat in split_list(patterns) or ["*"]:
        hits = [k for k in keys if fnmatch.fnmatchcase(k, pat)]
        if not hits:
            raise UsageError(
                f"--features {pat!r} matches no feature of {store.path}{did_you_mean(pat, keys)}; "
                f"list them with `fmprobe store info {store.path}`"
            )
        chosen += [h for h in hits if h not in chosen]
    incomplete = [f.key for f in infos if f.key in chosen and not f.complete]
    if incomplete:
        raise UsageError(
            f"feature {incomplete[0]!r} is unfinished; rerun its `fmprobe embed` first"
        )
    return tuple(chosen)


def _stored_tokens(store: FeatureStore) -> dict[str, list[int]]:
    stored: dict[str, list[int]] = {}
    for f in store.features():
        if f.pool == "tokens" and f.model is not None:
            stored.setdefault(str(f.model), []).append(int(f.layer or 0))
    if not stored:
        raise UsageError(
            f"--probe attnpool needs patch tokens and {store.path} has none; "
            "embed with `fmprobe embed --tokens`"
        )
    return stored


def resolve_token_features(
    store: FeatureStore, patterns: str | Sequence[str], layers: str | Sequence[int] | None
) -> tuple[str, ...]:
    """``--probe attnpool``: ``--features`` globs select models with stored patch tokens,
    ``--layers`` which of their stored layers to combine (default: all). Returns names
    ``<model>/block2+block5+…/attnpool`` (the results' ``feature``)."""
    stored = _stored_tokens(store)
    models = sorted(stored)
    chosen: list[str] = []
    for pat in split_list(patterns) or ["*"]:
        head = pat.split("/")[0]
        hits = [m for m in models if fnmatch.fnmatchcase(m, pat) or fnmatch.fnmatchcase(m, head)]
        if not hits:
            raise UsageError(
                f"--features {pat!r} matches no model with stored tokens"
                f"{did_you_mean(pat, models)}; models with tokens: {', '.join(models)}"
            )
        chosen += [h for h in hits if h not in chosen]
    try:
        want = None if layers in (None, "", "all") else [int(v) for v in split_list(layers)]
    except ValueError:
        raise UsageError(
            f"--layers {layers!r}: comma list of block indices, e.g. 2,5,8,11"
        ) from None
    names = []
    for m in chosen:
        have = sorted(stored[m])
        use = have if want is None else want
        missing = [i for i in use if i not in have]
        if missing:
            raise UsageError(
                f"--layers: {m} has no stored tokens of block {missing[0]}; stored: "
                f"{', '.join(map(str, have))}"
            )
        if not store.model_complete(m):
            raise UsageError(f"the tokens of {m!r} are unfinished; rerun its `fmprobe embed` first")
        names.append(f"{m}/{'+'.join(f'block{i}' for i in use)}/attnpool")
    return tuple(names)


def attnpool_json(value: dict[str, Any] | None) -> str:
    """AttnPoolConfig's fields (``--attnpool``), checked, as canonical JSON for the config."""
    from fmprobe.probes.attnpool import AttnPoolConfig

    fields = dict(value or {})
    known = set(AttnPoolConfig.__dataclass_fields__)
    for k in fields:
        if k not in known:
            raise UsageError(f"--attnpool: unknown setting {k!r}{did_you_mean(k, known)}")
    AttnPoolConfig(**fields)  # validates
    return json.dumps(fields, sort_keys=True)


def check_columns(table: pd.DataFrame, columns: Sequence[str | None]) -> None:
    """Every named column is in the store's samples or the ``--labels`` table."""
    for col in columns:
        if col is not None and col not in table.columns:
            raise UsageError(
                f"column {col!r} is not in the store or --labels{did_you_mean(col, table.columns)}"
            )


def build_config(
    fs: FeatureStore,
    task_objs: Sequence[Task],
    *,
    features: str | Sequence[str],
    probes: tuple[str, ...],
    samplers_: tuple[str, ...],
    layers: str | Sequence[int] | None,
    attnpool: dict[str, Any] | None,
    **settings: Any,
) -> SweepConfig:
    """The configuration of a sweep of ``probes`` × ``samplers_`` over ``features`` of
    ``fs``; ``settings`` are ``SweepConfig``'s remaining fields, already parsed."""
    if "attnpool" in probes:
        if len(probes) > 1:
            raise UsageError(
                "--probe attnpool reads patch tokens, the other probes pooled features: "
                "run attnpool in a sweep of its own"
            )
        if samplers_ != (RANDOM_SAMPLER,):
            raise UsageError("--probe attnpool draws random (stratified, nested) subsets only")
        feature_keys = resolve_token_features(fs, features, layers)
        attn_json: str | None = attnpool_json(attnpool)
    else:
        feature_keys = resolve_features(fs, features)
        attn_json = None
    return SweepConfig(
        features=feature_keys,
        tasks=tuple(t.name for t in task_objs),
        probes=probes,
        samplers=samplers_,
        store_fingerprint=fs.fingerprint,
        attnpool=attn_json,
        **{**settings, "backend": check_backend(settings.get("backend", "torch"))},
    )
