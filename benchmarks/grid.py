"""Run a benchmark's independent student runs side by side in worker processes.

A 2-layer student of width 96-128 gains little from a second torch thread (its matrices are too small
for intra-op parallelism to pay), so on a small CPU two one-thread processes finish a grid sooner than
one process with both threads. Each worker gets an equal share of the cores; the parent process writes
every finished run to the results file as it arrives, so an interrupted grid keeps what it finished.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

logger = logging.getLogger("grid")


def _start_worker(threads: int, level: int) -> None:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s")
    logging.getLogger("transformers").setLevel(logging.WARNING)


def run_grid(
    jobs: Iterable[Any], run_one: Callable[[Any], dict], record: Callable[[dict], None], workers: int = 1
) -> None:
    """`record(run_one(job))` for every job, in `workers` processes (`run_one` must be a module-level
    function and the jobs picklable); with one worker, in this process."""
    jobs = list(jobs)
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            record(run_one(job))
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    logger.info("%d runs in %d processes, %d torch threads each", len(jobs), workers, threads)
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),  # no fork of a process that holds torch threads
        initializer=_start_worker,
        initargs=(threads, logging.getLogger().getEffectiveLevel()),
    )
    futures = [pool.submit(run_one, job) for job in jobs]
    failure = None
    try:
        for future in as_completed(futures):
            if future.cancelled():
                continue
            try:
                record(future.result())
            except Exception as error:
                # One run failed: cancel the runs not yet handed to a worker, keep the rest.
                logger.exception("A run failed; runs already handed to a worker finish and are kept")
                failure = failure or error
                for other in futures:
                    other.cancel()
    finally:
        pool.shutdown(cancel_futures=True)
    if failure is not None:
        raise failure
