"""``fmprobe sweep --workers N``: the plan's work units on N local worker processes.

One process per core, each with one thread, beats one process whose torch and BLAS calls are
split over the cores: most of a probe's time is spent in operations too small to split (the
solver's per-iteration steps, the AUROC sort, the result rows), and thread pools that
synchronise at every operation stall as soon as anything else runs on the machine.

Units are dealt out one at a time to whichever worker is free. Each worker keeps a
``UnitRunner`` per job, so a feature is read and prepared once per worker, not once per unit;
each unit's part is written atomically by the worker that ran it, so a killed worker or
driver loses only the units in flight and a rerun resumes. The results do not depend on the
number of workers (a unit's subsets and fits depend on its seeds only).

The pool is started once per driver process (spawned workers: about two seconds to import
torch) and reused by later sweeps of the same process, as a notebook or a benchmark runs them.
"""

from __future__ import annotations

import atexit
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from fmprobe.errors import FmprobeError
from fmprobe.sweep.plan import Unit, unit_probes
from fmprobe.sweep.units import SweepJob, UnitRunner

_POOL: tuple[int, ProcessPoolExecutor] | None = None
_RUNNERS: dict[SweepJob, UnitRunner] = {}


def _worker_init() -> None:
    """One thread per worker: the workers are the parallelism."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)


def _run_units(job: SweepJob, units: list[Unit]) -> int:
    runner = _RUNNERS.get(job)
    if runner is None:  # a new job: the previous one's store and feature are let go
        _RUNNERS.clear()
        runner = _RUNNERS[job] = UnitRunner(job)
    return runner.run(units)


def _noop() -> int:
    return 0


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """The process pool of ``workers`` workers, started on first use and kept for later sweeps
    of this process (a pool of another size is shut down first)."""
    global _POOL
    if _POOL is not None and _POOL[0] == workers:
        return _POOL[1]
    shutdown_pool()
    ex = ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init
    )
    # start every worker now (the executor spawns them lazily, one per submission)
    try:
        for f in [ex.submit(_noop) for _ in range(workers)]:
            f.result()
    except BrokenProcessPool:
        ex.shutdown(wait=False, cancel_futures=True)
        raise FmprobeError(
            "a sweep worker process died while starting (out of memory? killed?); nothing was "
            "run: rerun the same command, or use fewer --workers"
        ) from None
    _POOL = (workers, ex)
    return ex


def shutdown_pool() -> None:
    global _POOL
    if _POOL is not None:
        _POOL[1].shutdown(wait=True, cancel_futures=True)
        _POOL = None


atexit.register(shutdown_pool)


def run_in_processes(
    job: SweepJob,
    units: Sequence[Unit],
    *,
    workers: int,
    progress: Callable[[int], Any] | None = None,
) -> int:
    """Run ``units`` on ``workers`` local processes; returns the number of probes fitted.
    ``progress`` is called with each finished unit's number of result rows."""
    if not units:
        return 0
    ex = worker_pool(workers)
    pending: dict[Future[int], Unit] = {}
    fitted = 0
    try:
        for u in units:
            pending[ex.submit(_run_units, job, [u])] = u
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                u = pending.pop(f)
                fitted += f.result()
                if progress is not None:
                    progress(unit_probes(job.cfg, u))
    except BrokenProcessPool:
        shutdown_pool()
        raise FmprobeError(
            "a sweep worker process died; finished units are kept, rerun the same command to resume"
        ) from None
    except BaseException:
        for f in pending:
            f.cancel()
        raise
    return fitted
