"""The trainer ↔ controller messages: what one side builds the other reads back, and what does
not fit the declaration is refused by name in the usual error shape."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from cnnswarm.errors import InvalidInput
from cnnswarm.protocol import (
    MAX_COUNTER,
    MAX_ERROR_CHARS,
    Dispatch,
    Drop,
    FailureReport,
    Heartbeat,
    HeartbeatAnswer,
    JobReport,
    JobWrite,
    Message,
    check_example_idxs,
    check_id,
    parse,
    seed_status_entry,
)

DISPATCH = Dispatch(
    job_id="job-1",
    attempt=2,
    model_id="m1",
    model_type="SmallConvNet",
    dataset="digits",
    example_idxs=[0, 100],
    train_opts={"num_epochs": 2, "lr": 0.01, "seed": None},
)
HEARTBEAT = Heartbeat(
    trainer_id="t1",
    url="http://10.0.0.7:48516",
    slots=2,
    jobs=[
        JobReport(
            job_id="job-1",
            attempt=2,
            progress=0.5,
            epoch=1,
            metrics=[{"epoch": 1, "train_loss": 0.25, "images_per_s": None}],
        )
    ],
)
ANSWER = HeartbeatAnswer(
    drop=[Drop(job_id="job-2", attempt=1, reason="job is cancelled")],
    lease_timeout_s=10.0,
    heartbeat_interval_s=1.0,
)
FAILURE = FailureReport(attempt=1, error="ValueError: x", retryable=True)
MESSAGES: list[Message] = [DISPATCH, HEARTBEAT, ANSWER, FAILURE, JobWrite(attempt=3)]


def wire(message: Message) -> Any:
    """The message as the other side receives it: JSON text, decoded."""
    return json.loads(json.dumps(message.model_dump(mode="json")))


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_what_one_side_sends_the_other_reads_back(message: Message) -> None:
    assert parse(type(message), wire(message)) == message


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_an_unknown_key_is_refused_by_name(message: Message) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse(type(message), {**wire(message), "surprise": 1})
    assert refused.value.field == "surprise"
    assert refused.value.status == 400


def test_an_unknown_key_of_a_job_report_is_named_in_full() -> None:
    body = wire(HEARTBEAT)
    body["jobs"][0]["surprise"] = 1
    with pytest.raises(InvalidInput) as refused:
        parse(Heartbeat, body)
    assert refused.value.field == "jobs[0].surprise"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"job_id": ""}, "job_id"),
        ({"job_id": "../etc"}, "job_id"),
        ({"job_id": "a" * 129}, "job_id"),
        ({"attempt": 0}, "attempt"),
        ({"attempt": MAX_COUNTER + 1}, "attempt"),
        ({"attempt": True}, "attempt"),  # strict: true is not 1
        ({"attempt": "2"}, "attempt"),  # nor is "2"
        ({"attempt": 2.0}, "attempt"),
        ({"model_type": ""}, "model_type"),
        ({"model_type": "x" * 65}, "model_type"),
        ({"dataset": ["digits"]}, "dataset"),
        ({"example_idxs": [5, 2]}, "example_idxs"),
        ({"example_idxs": [-1, 2]}, "example_idxs"),
        ({"example_idxs": [1]}, "example_idxs"),
        ({"example_idxs": [0, True]}, "example_idxs"),
        ({"train_opts": "fast"}, "train_opts"),
    ],
)
def test_a_dispatch_out_of_bounds_is_refused_by_name(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse(Dispatch, {**wire(DISPATCH), **change})
    assert refused.value.field == field
    assert refused.value.to_json()["exception"] == "InvalidInputArg"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"trainer_id": "a b"}, "trainer_id"),
        ({"url": "ftp://t"}, "url"),
        ({"slots": 0}, "slots"),
        ({"slots": 1025}, "slots"),
        ({"slots": math.nan}, "slots"),
        ({"jobs": 3}, "jobs"),
        ({"jobs": [{"job_id": "j", "attempt": 10**30}]}, "jobs[0].attempt"),
        ({"jobs": [{"job_id": "j", "attempt": math.inf}]}, "jobs[0].attempt"),
        ({"jobs": [{"job_id": "j", "attempt": 1, "epoch": -1}]}, "jobs[0].epoch"),
        ({"jobs": [{"attempt": 1}]}, "jobs[0].job_id"),
    ],
)
def test_a_heartbeat_out_of_bounds_is_refused_by_name(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse(Heartbeat, {**wire(HEARTBEAT), **change})
    assert refused.value.field == field


def test_a_progress_report_that_does_not_fit_is_ignored_not_refused() -> None:
    # The lease renewal a report rides on matters more than one odd figure.
    report = parse(JobReport, {"job_id": "j", "attempt": 1, "progress": 7, "metrics": "x"})
    assert (report.progress, report.metrics) == (None, None)
    # A diverged run's NaN loss is a metric like any other.
    nan = parse(JobReport, {"job_id": "j", "attempt": 1, "metrics": [{"loss": math.nan}]})
    assert nan.metrics is not None and math.isnan(nan.metrics[0]["loss"])  # type: ignore[arg-type]


def test_a_metric_keeps_its_integers() -> None:
    assert wire(HEARTBEAT)["jobs"][0]["metrics"] == [
        {"epoch": 1, "train_loss": 0.25, "images_per_s": None}
    ]


@pytest.mark.parametrize("raw", ["0", "-1", "x", "inf", "1.5", str(10**30), None])
def test_a_write_names_a_valid_attempt(raw: str | None) -> None:
    with pytest.raises(InvalidInput) as refused:
        JobWrite.from_query({} if raw is None else {"attempt": raw})
    assert refused.value.field == "attempt"
    assert JobWrite.from_query({"attempt": "7"}).attempt == 7


def test_a_failure_report_is_cut_to_its_bound() -> None:
    report = FailureReport.of(1, "x" * (MAX_ERROR_CHARS + 5), retryable=False)
    assert len(report.error) == MAX_ERROR_CHARS
    with pytest.raises(InvalidInput) as refused:
        parse(FailureReport, {"attempt": 1, "error": "x" * (MAX_ERROR_CHARS + 1)})
    assert refused.value.field == "error"
    assert parse(FailureReport, {"attempt": 1}).retryable is False


def test_the_answer_needs_positive_timings() -> None:
    with pytest.raises(InvalidInput) as refused:
        parse(HeartbeatAnswer, {**wire(ANSWER), "lease_timeout_s": 0})
    assert refused.value.field == "lease_timeout_s"


def test_one_example_idxs_rule() -> None:
    assert check_example_idxs([2, 7]) == [2, 7]
    assert check_example_idxs((2, 7), train_size=7) == [2, 7]
    for bad in ([7, 2], [0, True], [0, 2.5], "0,2", [1, 2, 3], None):
        with pytest.raises(InvalidInput, match=r"^example_idxs must be null or \[start, end\]"):
            check_example_idxs(bad)
    with pytest.raises(InvalidInput, match=r"<= 5 \(training set size\)"):
        check_example_idxs([2, 7], train_size=5)
    # The pydantic field says what the function says.
    with pytest.raises(InvalidInput) as by_field:
        parse(Dispatch, {**wire(DISPATCH), "example_idxs": [7, 2]})
    with pytest.raises(InvalidInput) as by_function:
        check_example_idxs([7, 2])
    assert by_field.value.message == by_function.value.message


def test_one_id_rule() -> None:
    assert check_id("model-1.v2_x", "model_id") == "model-1.v2_x"
    for bad in ("", "../x", "a..b", "-x", "a/b", "a" * 129, 5):
        with pytest.raises(InvalidInput) as refused:
            check_id(bad, "model_id")
        assert refused.value.field == "model_id"


def test_the_seed_status_entry() -> None:
    running = seed_status_entry(
        duration_s=1.23456, progress=0.5, complete=False, state="running", attempt=1, model_id="m"
    )
    assert running == {
        "duration": 1.235,
        "progress": 50.0,
        "complete": False,
        "state": "running",
        "attempt": 1,
        "model_id": "m",
    }
    failed = seed_status_entry(
        duration_s=-0.5,  # two controllers' clocks
        progress=0.25,
        complete=True,
        state="failed",
        attempt=2,
        model_id="m",
        epoch=3,
        error="ValueError: x",
    )
    assert (failed["duration"], failed["epoch"], failed["error"]) == (0.0, 3, "ValueError: x")


def test_a_dispatch_crosses_a_process_boundary() -> None:
    # The runner hands it to the job's process by pickle.
    import pickle

    assert pickle.loads(pickle.dumps(DISPATCH)) == DISPATCH
