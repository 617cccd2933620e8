"""``fmprobe sweep --workers N|auto``: the plan's work units on local worker processes.

One process per core, each with one thread, beats one process whose torch and BLAS calls are
split over the cores: most of a probe's time is spent in operations too small to split (the
solver's per-iteration steps, the AUROC sort, the result rows), and thread pools that
synchronise at every operation stall as soon as anything else runs on the machine.

Units are dealt out one at a time to whichever worker is free. Each worker keeps a
``UnitRunner`` per job, so a feature is read and prepared once per worker, not once per unit;
each unit's part is written atomically by the worker that ran it, so a killed worker or
driver loses only the units in flight and a rerun resumes. The results do not depend on the
number of workers (a unit's subsets and fits depend on its seeds only).

The pool is started once per driver process (spawned workers: two to ten seconds to import
torch, depending on how busy the machine is) and reused by later sweeps of the same process,
as a notebook or a benchmark runs them.

``--workers auto`` (the default, ``run_adaptive``) starts in this process, one thread, and
spawns workers for the other cores only once the units run so far say that the rest of the
sweep takes longer than starting them costs: a small sweep never pays the start-up, a large
one uses every core, and this process keeps computing while the workers start.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from fmprobe.errors import FmprobeError
from fmprobe.sweep.plan import Unit, unit_probes
from fmprobe.sweep.units import SweepJob, UnitRunner, one_thread

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


SCALE_OUT_SECONDS = 15.0  # remaining work (one process) above which auto starts workers


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, as a Slurm allocation sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_pool(workers: int, *, wait_started: bool = True) -> ProcessPoolExecutor:
    """The process pool of ``workers`` workers, kept for later sweeps of this process (a pool
    of another size is shut down first); ``wait_started`` waits until every worker runs."""
    global _POOL
    if _POOL is not None and _POOL[0] == workers:
        return _POOL[1]
    shutdown_pool()
    ex = ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init
    )
    if not wait_started:
        _POOL = (workers, ex)
        return ex
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


def pool_size() -> int:
    """Worker processes of the pool kept by this process (0: none started)."""
    return _POOL[0] if _POOL is not None else 0


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


def run_adaptive(
    job: SweepJob,
    units: Sequence[Unit],
    *,
    max_workers: int,
    progress: Callable[[int], Any] | None = None,
    scale_out_seconds: float | None = None,
) -> int:
    """``--workers auto``: run ``units`` in this process (one thread) and, once the mean time
    of the units run so far says the rest would take longer than ``scale_out_seconds``, on
    ``max_workers - 1`` worker processes as well. Returns the number of probes fitted."""
    threshold = SCALE_OUT_SECONDS if scale_out_seconds is None else scale_out_seconds
    runner = UnitRunner(job)
    queue = deque(units)
    pending: dict[Future[int], Unit] = {}
    ex: ProcessPoolExecutor | None = None
    fitted = done_here = 0
    t0 = time.perf_counter()
    try:
        with one_thread():
            while queue or pending:
                for f in [f for f in pending if f.done()]:
                    fitted += f.result()
                    if progress is not None:
                        progress(unit_probes(job.cfg, pending.pop(f)))
                if ex is None and max_workers > 1 and done_here and len(queue) > 1:
                    per_unit = (time.perf_counter() - t0) / done_here
                    if per_unit * len(queue) > threshold:
                        ex = worker_pool(max_workers - 1, wait_started=False)
                while ex is not None and queue and len(pending) < 2 * (max_workers - 1):
                    u = queue.pop()  # the workers take from the end, this process the front
                    pending[ex.submit(_run_units, job, [u])] = u
                if queue:
                    fitted += runner.run([queue.popleft()], progress=progress)
                    done_here += 1
                elif pending:
                    wait(pending, return_when=FIRST_COMPLETED)
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
