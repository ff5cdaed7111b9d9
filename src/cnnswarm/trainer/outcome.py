"""How a job ends on this trainer: its phases, why the runner stops one, and the pure decision
of a finished child's outcome from what it said, why it was stopped and how its process exited.

One lifecycle, one set of names: a stop reason names the phase it ends the job in, and a final
message (``messages.MessageKind``) that is not overruled by a stop ends the job in the phase of
the same name (``succeeded``, ``failed``, ``cancelled``, ``fenced``).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from enum import StrEnum

from cnnswarm.trainer.messages import FinalMessage, MessageKind


class JobPhase(StrEnum):
    """Where a job stands on this trainer.

    ``running`` → ``stopping`` (stop requested) → one of the final phases; ``running`` may also
    end directly in ``succeeded`` or ``failed``.
    """

    RUNNING = "running"
    STOPPING = "stopping"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"  # stopped by a cancel request
    DROPPED = "dropped"  # stopped because the controller said so (cancelled or reassigned)
    FENCED = "fenced"  # stopped because this attempt lost its lease (409 or self-fencing)

    @property
    def is_final(self) -> bool:
        """True when the job's child has ended."""
        return self not in (JobPhase.RUNNING, JobPhase.STOPPING)


class StopReason(StrEnum):
    """Why the runner stops a job; each reason is named after the final phase it leads to."""

    CANCELLED = "cancelled"
    DROPPED = "dropped"
    FENCED = "fenced"

    @property
    def phase(self) -> JobPhase:
        """The phase a job stopped for this reason ends in."""
        return JobPhase(self.value)


@dataclass(frozen=True)
class Outcome:
    """How a finished child's job ended, and whether the controller must hear of a failure."""

    phase: JobPhase
    error: str | None = None
    # Only failures are reported: the controller learns of successes from the result upload,
    # and a job stopped on purpose was stopped by (or for) the controller.
    report_failure: bool = False
    retryable: bool = False


def describe_exit(exit_code: int | None) -> str:
    """A human description of a child's exit code (negative = killed by a signal)."""
    if exit_code is not None and exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        return f"killed by {name} (exit code {exit_code})"
    return f"exit code {exit_code}"


def decide_outcome(
    final_message: FinalMessage | None, stop_reason: StopReason | None, exit_code: int | None
) -> Outcome:
    """The outcome of a job whose child has ended; the first matching row decides.

    ==================  ===========  =========  ====================  ===========  ================
    final message       stop reason  exit code  phase                 error        failure report
    ==================  ===========  =========  ====================  ===========  ================
    succeeded           any          any        succeeded             none         no
    fenced              none         any        fenced                the 409's    no
    any or none         R            any        R's phase             none         no
    cancelled           none         any        cancelled             none         no
    failed              none         any        failed                the child's  yes, the child's
                                                                                   ``retryable``
    none                none         c          failed                "died ...c"  yes, retryable
                                                                                   if c < 0
    ==================  ===========  =========  ====================  ===========  ================

    A result delivered wins over a stop that came too late to matter. With a stop requested, the
    409 that fenced the child is that stop's echo (a cancel marks the job cancelled in the
    controller first), so the stop's reason is the phase. A child killed by a signal (typically
    the OOM killer) may well succeed on another try; one that exited by itself would not.
    """
    if final_message is not None and final_message["kind"] == MessageKind.SUCCEEDED:
        return Outcome(JobPhase.SUCCEEDED)
    if (
        final_message is not None
        and final_message["kind"] == MessageKind.FENCED
        and stop_reason is None
    ):
        return Outcome(JobPhase.FENCED, error=final_message["error"])
    if stop_reason is not None:
        return Outcome(stop_reason.phase)
    if final_message is not None and final_message["kind"] == MessageKind.CANCELLED:
        return Outcome(JobPhase.CANCELLED)
    if final_message is not None and final_message["kind"] == MessageKind.FAILED:
        return Outcome(
            JobPhase.FAILED,
            error=final_message["error"],
            report_failure=True,
            retryable=final_message["retryable"],
        )
    error = f"the job's process died without a report: {describe_exit(exit_code)}"
    return Outcome(
        JobPhase.FAILED,
        error=error,
        report_failure=True,
        retryable=exit_code is not None and exit_code < 0,
    )
