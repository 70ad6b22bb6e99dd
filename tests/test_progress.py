"""Phase numbering, elapsed totals and step-time estimates of long jobs."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from ckadistill.progress import JobClock, StepTimeEstimator, format_duration


def test_format_duration():
    assert format_duration(0) == "0:00"
    assert format_duration(61.4) == "1:01"
    assert format_duration(3725) == "1:02:05"
    assert format_duration(-3) == "0:00"


def test_phases_are_numbered_and_timed(caplog):
    clock = JobClock(total_phases=3)
    with caplog.at_level(logging.INFO, logger="ckadistill.progress"):
        clock.phase("data", "splits")
        clock.phase("teacher", "fine-tune")
        seconds = clock.finish()
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("[1/3] data: splits (elapsed 0:0")
    assert messages[1].startswith("[2/3] teacher: fine-tune (elapsed")
    assert set(seconds) == {"data", "teacher", "total"}
    assert seconds["total"] >= seconds["data"] + seconds["teacher"] >= 0


def test_step_estimator_reports_after_warmup_and_revises_at_a_quarter(caplog, monkeypatch):
    clock = JobClock(total_phases=2)
    clock.phase("student", "distil")
    now = [100.0]
    monkeypatch.setattr("ckadistill.progress.time.perf_counter", lambda: now[0])
    estimator = clock.step_estimator(warmup_steps=2, measure_steps=4)
    assert isinstance(estimator, StepTimeEstimator)
    state = SimpleNamespace(global_step=10, max_steps=110)  # a run resumed at step 10
    with caplog.at_level(logging.INFO, logger="ckadistill.progress"):
        for _ in range(60):
            state.global_step += 1
            # Slow warm-up steps (11-12) are not counted; the machine slows down from step 20 on.
            now[0] += 5.0 if state.global_step <= 12 else (0.5 if state.global_step < 20 else 1.0)
            estimator.on_step_end(None, state, None)
    reports = [r.getMessage() for r in caplog.records if "per step" in r.getMessage()]
    assert len(reports) == 2
    # Steps 11-13 are warm-up; measured over 14-17, then 93 steps are left at 0.5 s.
    assert reports[0].startswith("[1/2] student: 0.50 s per step, about 0:46 left for 93 more steps (elapsed")
    # Revised at step 35 (a quarter of the 100 steps from 11): 6 steps at 0.5 s and 16 at 1.0 s since step 13.
    assert reports[1].startswith(
        "[1/2] student: 0.86 s per step, about 1:05 left for 75 more steps (revised)"
    )
    assert estimator.seconds_per_step == (6 * 0.5 + 16 * 1.0) / 22
