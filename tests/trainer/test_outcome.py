"""decide_outcome and the child→parent vocabulary, without processes: every case of the table."""

from __future__ import annotations

import itertools
import pickle

import pytest

from cnnswarm.trainer.messages import (
    FinalMessage,
    MessageKind,
    cancelled,
    failed,
    fenced,
    progress_message,
    succeeded,
)
from cnnswarm.trainer.outcome import JobPhase, Outcome, StopReason, decide_outcome

FINAL_MESSAGES: list[FinalMessage | None] = [
    None,
    succeeded(),
    failed("ValueError: boom", retryable=False),
    failed("OSError: disk full", retryable=True),
    cancelled(),
    fenced("409: attempt 1 is stale"),
]
STOP_REASONS: list[StopReason | None] = [None, *StopReason]
EXIT_CODES: list[int | None] = [0, 1, 70, -9, -15, None]
# How each exit code reads in the error of a child that died without a final message.
EXITS = {
    0: "exit code 0",
    1: "exit code 1",
    70: "exit code 70",
    None: "exit code None",
    -9: "killed by SIGKILL (exit code -9)",
    -15: "killed by SIGTERM (exit code -15)",
}
STOP_PHASES = {
    "cancelled": JobPhase.CANCELLED,
    "dropped": JobPhase.DROPPED,
    "fenced": JobPhase.FENCED,
}


def expected(final: FinalMessage | None, stop: StopReason | None, exit_code: int | None) -> Outcome:
    """The docstring's table, row by row (first match wins), written out independently."""
    kind = None if final is None else final["kind"]
    if kind == "succeeded":
        return Outcome(JobPhase.SUCCEEDED)
    if kind == "fenced" and stop is None:
        assert final is not None and final["kind"] == MessageKind.FENCED
        return Outcome(JobPhase.FENCED, error="409: attempt 1 is stale")
    if stop is not None:
        return Outcome(STOP_PHASES[stop.value])
    if kind == "cancelled":
        return Outcome(JobPhase.CANCELLED)
    if kind == "failed":
        assert final is not None and final["kind"] == MessageKind.FAILED
        return Outcome(
            JobPhase.FAILED, final["error"], report_failure=True, retryable=final["retryable"]
        )
    assert final is None
    return Outcome(
        JobPhase.FAILED,
        f"the job's process died without a report: {EXITS[exit_code]}",
        report_failure=True,
        retryable=exit_code is not None and exit_code < 0,
    )


@pytest.mark.parametrize(
    ("final", "stop", "exit_code"),
    list(itertools.product(FINAL_MESSAGES, STOP_REASONS, EXIT_CODES)),
)
def test_every_combination_follows_the_table(
    final: FinalMessage | None, stop: StopReason | None, exit_code: int | None
) -> None:
    outcome = decide_outcome(final, stop, exit_code)
    assert outcome == expected(final, stop, exit_code)
    assert outcome.phase.is_final
    # Only failures reach the controller, and each carries its error.
    assert outcome.report_failure == (outcome.phase is JobPhase.FAILED)
    carries_error = outcome.phase in (JobPhase.FAILED, JobPhase.FENCED) and stop is None
    assert (outcome.error is not None) == carries_error


def test_a_delivered_result_wins_over_a_late_stop() -> None:
    for stop in STOP_REASONS:
        assert decide_outcome(succeeded(), stop, 0) == Outcome(JobPhase.SUCCEEDED)


def test_a_fence_during_a_stop_is_the_stops_echo() -> None:
    outcome = decide_outcome(fenced("409"), StopReason.CANCELLED, 0)
    assert outcome == Outcome(JobPhase.CANCELLED)


def test_a_stopped_job_is_never_reported_as_failed() -> None:
    for final, stop, exit_code in itertools.product(FINAL_MESSAGES, StopReason, EXIT_CODES):
        if final is None or final["kind"] != MessageKind.SUCCEEDED:
            outcome = decide_outcome(final, stop, exit_code)
            assert outcome == Outcome(stop.phase), (final, stop, exit_code)


def test_a_silent_death_is_retryable_only_when_killed_by_a_signal() -> None:
    killed = decide_outcome(None, None, -9)
    assert killed.report_failure and killed.retryable
    assert killed.error is not None and "SIGKILL" in killed.error
    exited = decide_outcome(None, None, 1)
    assert exited.report_failure and not exited.retryable
    unknown_signal = decide_outcome(None, None, -1000)
    assert (
        unknown_signal.error is not None and "signal 1000 (exit code -1000)" in unknown_signal.error
    )


def test_each_stop_reason_names_its_final_phase() -> None:
    for reason in StopReason:
        assert reason.phase.value == reason.value and reason.phase.is_final


def test_final_message_kinds_are_final_phases() -> None:
    for kind in MessageKind:
        if kind is not MessageKind.PROGRESS:
            assert JobPhase(kind.value).is_final


def test_messages_keep_their_wire_shape_across_a_pickle() -> None:
    # What crosses the child's queue; the runner's tests compare against these plain dicts.
    assert pickle.loads(pickle.dumps(cancelled())) == {"kind": "cancelled"}
    assert pickle.loads(pickle.dumps(succeeded())) == {"kind": "succeeded"}
    assert fenced("no") == {"kind": "fenced", "error": "no"}
    assert failed("E: x") == {"kind": "failed", "error": "E: x", "retryable": False}
    metrics = [{"epoch": 1, "loss": 0.5}]
    message = progress_message(0.25, 1, metrics)
    assert message == {"kind": "progress", "progress": 0.25, "epoch": 1, "metrics": metrics}
    assert message["metrics"][0] is not metrics[0]  # copied, not shared
    assert pickle.loads(pickle.dumps(message))["kind"] is MessageKind.PROGRESS
