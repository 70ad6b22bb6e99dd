"""Readable progress for multi-phase jobs: numbered phases, the elapsed total, and time estimates.

The Trainer's own progress bars stay; these add what they cannot know: which phase of how many is
running, how long the whole job has taken, and, a few optimiser steps into a training phase, how long
that phase will take on *this* machine (machines of the same nominal size differ by 1.6× and more).

    clock = JobClock(total_phases=5)
    clock.phase("teacher", "MiniLM fine-tuned on BBC News")   # logs "[2/5] teacher: ... (elapsed 0:03)"
    trainer = Trainer(..., callbacks=[clock.step_estimator()])
    clock.finish()                                             # per-phase seconds, for the report
"""

from __future__ import annotations

import logging
import time

from transformers import TrainerCallback

logger = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """`m:ss` below an hour, `h:mm:ss` above."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class JobClock:
    """Numbers the phases of a job, logs each start with the elapsed total, and keeps per-phase times."""

    def __init__(self, total_phases: int):
        self.total_phases = total_phases
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self._current: str | None = None
        self._current_start = self.start
        self._number = 0

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def phase(self, name: str, description: str) -> None:
        """Close the running phase (if any) and announce the next one."""
        self._close()
        self._number += 1
        self._current, self._current_start = name, time.perf_counter()
        logger.info(
            "[%d/%d] %s: %s (elapsed %s)",
            self._number,
            self.total_phases,
            name,
            description,
            format_duration(self.elapsed),
        )

    def step_estimator(self, warmup_steps: int = 2, measure_steps: int = 5) -> StepTimeEstimator:
        """A Trainer callback that estimates the running phase's duration from its first steps."""
        label = f"[{self._number}/{self.total_phases}] {self._current}"
        return StepTimeEstimator(label, self, warmup_steps=warmup_steps, measure_steps=measure_steps)

    def finish(self) -> dict[str, float]:
        """Close the last phase; returns seconds per phase plus `total`."""
        self._close()
        self.seconds["total"] = self.elapsed
        logger.info("Done in %s", format_duration(self.elapsed))
        return dict(self.seconds)

    def _close(self) -> None:
        if self._current is not None:
            self.seconds[self._current] = time.perf_counter() - self._current_start
            self._current = None


class StepTimeEstimator(TrainerCallback):
    """Logs the seconds per optimiser step and the time left in a training phase: early, and revised
    once a quarter of the phase is done (a machine's speed can drift while it runs).

    The first `warmup_steps` steps are not timed (they include allocation and any one-off work); the
    next `measure_steps` give the first rate, and the revision uses every step since the warm-up. A
    resumed run counts from the step it resumed at.
    """

    def __init__(self, label: str, clock: JobClock, *, warmup_steps: int = 2, measure_steps: int = 5):
        self.label = label
        self.clock = clock
        self.warmup_steps = warmup_steps
        self.measure_steps = measure_steps
        self._first_step: int | None = None
        self._mark: tuple[int, float] | None = None
        self._reports = 0
        self._revise_at: int | None = None
        self.seconds_per_step: float | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if self._reports == 2:
            return
        if self._first_step is None:
            self._first_step = state.global_step
            self._revise_at = self._first_step + (state.max_steps - self._first_step) // 4
        done = state.global_step - self._first_step
        if done == self.warmup_steps:
            self._mark = (state.global_step, time.perf_counter())
            return
        if self._mark is None:
            return
        measured = state.global_step - self._mark[0]
        first = self._reports == 0 and measured >= self.measure_steps
        revision = self._reports == 1 and state.global_step >= self._revise_at
        if first or revision:
            self.seconds_per_step = (time.perf_counter() - self._mark[1]) / measured
            left = max(0, state.max_steps - state.global_step) * self.seconds_per_step
            logger.info(
                "%s: %.2f s per step, about %s left for %d more steps%s (elapsed %s)",
                self.label,
                self.seconds_per_step,
                format_duration(left),
                state.max_steps - state.global_step,
                " (revised)" if revision else "",
                format_duration(self.clock.elapsed),
            )
            self._reports += 1
