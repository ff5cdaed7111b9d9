"""Sweeps in one controller app: the request's checks, the search (grid, random, TPE), the
parallelism limit and queue fairness, pruning, the best-model alias, cancel, idempotency, and
that a trial is asked for and told once only. The scheduler is ticked by hand (its leader
round runs the sweep engine); the trainer's side is played through the job store."""

from __future__ import annotations

import itertools
import math
from typing import Any

from flask.testing import FlaskClient

from cnnswarm.controller.context import ControllerContext
from cnnswarm.store.job_records import JobSpec
from cnnswarm.store.jobs import JobState
from cnnswarm.store.sweeps import TrialState
from sweep_support import report_epochs, succeed

SPACE: dict[str, Any] = {
    "lr": {"float": [1e-3, 0.3], "log": True},
    "batch_size": {"choice": [32, 64, 128]},
    "weight_decay": {"float": [0, 1e-3]},
    "num_epochs": {"int": [5, 20]},
}


def submit(client: FlaskClient, **fields: Any) -> dict[str, Any]:
    body = {"dataset": "digits", "model_type": "SmallConvNet", "space": SPACE, "seed": 7}
    body.update(fields)
    answer = client.post("/api/v1/sweeps", json=body)
    assert answer.status_code == 202, answer.json
    return dict(answer.get_json())


def show(client: FlaskClient, sweep_id: str) -> dict[str, Any]:
    answer = client.get(f"/api/v1/sweeps/{sweep_id}")
    assert answer.status_code == 200, answer.json
    return dict(answer.get_json())


def live(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    return [trial for trial in sweep["trials"] if trial["state"] == "running"]


def test_bad_requests_are_refused_by_name(client: FlaskClient) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"space": {"lr": {"float": [0, 0.3], "log": True}}}, "log range must start above 0"),
        ({"space": {"lr": {"float": [0.3, 0.1]}}}, "empty"),
        ({"space": {"lr": {"float": [0.1, 30]}}}, "lr should be less than or equal to 10"),
        ({"space": {"batch_size": {"choice": [0, 32]}}}, "batch_size should be greater"),
        ({"space": {"num_epochs": {"float": [1, 3]}}}, "num_epochs should be a valid integer"),
        ({"space": {"seed": {"int": [0, 3]}}}, "not a tunable train_opts key"),
        ({"space": {"lrr": {"float": [0.1, 0.2]}}}, "not a tunable train_opts key"),
        ({"space": {"lr": {"range": [0.1, 0.2]}}}, "a dimension is"),
        ({"space": {"lr": {"float": [0.1, 0.2]}}, "sampler": "grid"}, "a grid takes choices"),
        ({"space": {"lr": {"choice": [0.1, 0.2]}}, "sampler": "grid", "max_trials": 3}, "grid's"),
        ({"space": {}}, "space"),
        ({"space": SPACE, "pruner": "asha"}, "pruner"),
        ({"space": SPACE, "max_parallel": 0}, "max_parallel"),
    ]
    for fields, message in cases:
        body = {"dataset": "digits", **fields}
        answer = client.post("/api/v1/sweeps", json=body)
        assert answer.status_code == 400 or answer.status_code == 422, (fields, answer.json)
        assert message in answer.get_json()["error"], (fields, answer.get_json())


def test_grid_covers_exactly_its_grid(client: FlaskClient, context: ControllerContext) -> None:
    space = {"lr": {"choice": [0.01, 0.1]}, "batch_size": {"choice": [16, 32, 64]}}
    sweep = submit(client, space=space, sampler="grid", max_parallel=4)
    assert sweep["max_trials"] == 6
    seen: list[tuple[float, int]] = []
    for _ in range(10):
        context.scheduler.tick()
        for trial in live(show(client, sweep["id"])):
            seen.append((trial["params"]["lr"], trial["params"]["batch_size"]))
            succeed(context, trial["job_id"], [0.5])
    assert sorted(seen) == sorted(itertools.product([0.01, 0.1], [16, 32, 64]))
    assert show(client, sweep["id"])["state"] == "succeeded"


def check_in_space(params: dict[str, Any]) -> None:
    assert isinstance(params["lr"], float) and 1e-3 <= params["lr"] <= 0.3
    assert params["batch_size"] in (32, 64, 128)
    assert isinstance(params["weight_decay"], float) and 0 <= params["weight_decay"] <= 1e-3
    assert isinstance(params["num_epochs"], int) and 5 <= params["num_epochs"] <= 20


def test_random_search_respects_bounds_types_and_log(
    client: FlaskClient, context: ControllerContext
) -> None:
    sweep = submit(client, sampler="random", max_trials=40, max_parallel=40)
    context.scheduler.tick()
    trials = show(client, sweep["id"])["trials"]
    assert len(trials) == 40
    for trial in trials:
        check_in_space(trial["params"])
    # Log-uniform on [1e-3, 0.3]: about 40 % below 0.01 (uniform would put 3 % there).
    below = sum(trial["params"]["lr"] < 0.01 for trial in trials)
    assert below >= 8, [trial["params"]["lr"] for trial in trials]
    jobs = [context.stores.jobs.get(trial["job_id"]) for trial in trials]
    assert all(job.sweep_id == sweep["id"] for job in jobs)
    assert all(
        job.train_opts["lr"] == trial["params"]["lr"]
        for job, trial in zip(jobs, trials, strict=True)
    )


def test_tpe_respects_bounds_and_types_after_its_startup_trials(
    client: FlaskClient, context: ControllerContext
) -> None:
    sweep = submit(client, sampler="tpe", max_trials=12, max_parallel=2)
    for _ in range(8):
        context.scheduler.tick()
        for trial in live(show(client, sweep["id"])):
            # The better the larger the lr: TPE should be led there.
            succeed(context, trial["job_id"], [min(0.99, math.log10(trial["params"]["lr"]) + 3.5)])
    trials = show(client, sweep["id"])["trials"]
    assert len(trials) == 12
    for trial in trials:
        check_in_space(trial["params"])


def test_max_parallel_is_never_exceeded_and_later_jobs_are_not_starved(
    client: FlaskClient, context: ControllerContext
) -> None:
    sweep = submit(client, sampler="random", max_trials=8, max_parallel=2)
    context.scheduler.tick()
    ordinary = client.post("/api/v1/jobs", json={"dataset": "digits"}).get_json()
    for _ in range(12):
        context.scheduler.tick()
        current = show(client, sweep["id"])
        assert len(live(current)) <= 2
        assert current["counts"]["queued"] + current["counts"]["running"] <= 2
        for trial in live(current)[:1]:  # one finishes per round
            succeed(context, trial["job_id"], [0.5])
    trials = show(client, sweep["id"])["trials"]
    assert len(trials) == 8
    # The ordinary job, submitted after the sweep's first two trials, is ahead of the others.
    ordinary_seq = context.stores.jobs.get(ordinary["id"]).seq
    later = [context.stores.jobs.get(t["job_id"]).seq for t in trials[2:]]
    assert all(seq > ordinary_seq for seq in later)


def test_a_hopeless_trial_is_pruned_at_the_epoch_the_pruner_decides(
    client: FlaskClient, context: ControllerContext
) -> None:
    sweep = submit(client, sampler="random", max_trials=5, max_parallel=1, pruner="median")
    for _ in range(3):  # the median pruner's startup trials finish
        context.scheduler.tick()
        (trial,) = live(show(client, sweep["id"]))
        succeed(context, trial["job_id"], [0.6, 0.7, 0.8])
    context.scheduler.tick()
    (hopeless,) = live(show(client, sweep["id"]))
    report_epochs(context, hopeless["job_id"], [0.65])  # above the median: it goes on
    context.scheduler.tick()
    assert context.stores.jobs.get(hopeless["job_id"]).state == JobState.RUNNING
    report_epochs(context, hopeless["job_id"], [0.65, 0.1])  # far below: pruned at once
    context.scheduler.tick()
    job = context.stores.jobs.get(hopeless["job_id"])
    assert job.state == JobState.CANCELLED and job.error == "pruned" and job.epoch == 2
    current = show(client, sweep["id"])
    assert current["trials"][hopeless["number"]]["state"] == "pruned"
    assert current["counts"]["pruned"] == 1 and current["counts"]["failed"] == 0
    assert len(current["trials"]) == 5  # the freed slot went to the next trial


def test_the_best_alias_follows_better_trials(
    client: FlaskClient, context: ControllerContext
) -> None:
    sweep = submit(client, sampler="random", max_trials=3, max_parallel=1)
    alias = f"{sweep['id']}-best"
    for accuracy, best in ((0.5, 0), (0.8, 1), (0.6, 1)):
        context.scheduler.tick()
        (trial,) = live(show(client, sweep["id"]))
        succeed(context, trial["job_id"], [accuracy])
        context.scheduler.tick()
        assert context.stores.catalog.resolve(alias) == f"{sweep['id']}-t{best}"
    done = show(client, sweep["id"])
    assert done["state"] == "succeeded" and done["best_trial"]["number"] == 1
    assert done["best_model"] == alias


def test_cancel_stops_the_sweep_and_its_live_trials(
    client: FlaskClient, context: ControllerContext
) -> None:
    sweep = submit(client, sampler="random", max_trials=6, max_parallel=2)
    context.scheduler.tick()
    first, second = live(show(client, sweep["id"]))
    report_epochs(context, first["job_id"], [0.5])
    answer = client.post(f"/api/v1/sweeps/{sweep['id']}/cancel")
    assert answer.status_code == 200 and answer.get_json()["state"] == "cancelled"
    for trial in (first, second):
        job = context.stores.jobs.get(trial["job_id"])
        assert job.state == JobState.CANCELLED and job.error == "sweep cancelled"
    context.scheduler.tick()
    done = show(client, sweep["id"])
    assert len(done["trials"]) == 2 and done["counts"]["cancelled"] == 2
    assert client.post(f"/api/v1/sweeps/{sweep['id']}/cancel").status_code == 200  # no-op


def test_idempotent_submit(client: FlaskClient) -> None:
    body = {"dataset": "digits", "space": {"lr": {"float": [0.01, 0.1]}}, "max_trials": 2}
    key = {"Idempotency-Key": "sweep-key-1"}
    first = client.post("/api/v1/sweeps", json=body, headers=key)
    again = client.post("/api/v1/sweeps", json=body, headers=key)
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.get_json()["id"] == again.get_json()["id"]
    other = client.post("/api/v1/sweeps", json={**body, "max_trials": 3}, headers=key)
    assert other.status_code == 422
    assert len(client.get("/api/v1/sweeps").get_json()["sweeps"]) == 1


def test_a_slot_cannot_be_asked_twice_nor_a_result_told_twice(
    client: FlaskClient, context: ControllerContext
) -> None:
    sweep = submit(client, sampler="random", max_trials=4, max_parallel=1)
    context.scheduler.tick()
    (trial,) = show(client, sweep["id"])["trials"]
    store = context.stores.sweeps
    # A stale leader asking for slot 0 again inserts neither a trial nor a job.
    spec = JobSpec("x-model", "digits", "SmallConvNet", None, {"num_epochs": 1})
    assert store.add_trial(sweep["id"], 0, {"lr": 0.05}, {}, spec) is None
    assert context.stores.jobs.count_by_state()["queued"] == 1
    # A second engine whose view predates the first ask: its ask for slot 0 is refused.
    stale = context.scheduler.sweeps
    swept = store.get(sweep["id"])
    assert stale._ask(swept, []) == []
    assert len(show(client, sweep["id"])["trials"]) == 1
    # Told once: the second tell of the same result changes nothing.
    succeed(context, trial["job_id"], [0.5])
    assert store.tell(sweep["id"], 0, TrialState.SUCCEEDED, 0.5)
    assert not store.tell(sweep["id"], 0, TrialState.FAILED, None)
    context.scheduler.tick()  # the engine's own tell finds it told
    told = show(client, sweep["id"])["trials"][0]
    assert told["state"] == "succeeded" and told["value"] == 0.5


def test_trials_are_jobs_listed_with_their_sweep(
    client: FlaskClient, context: ControllerContext
) -> None:
    sweep = submit(client, sampler="random", max_trials=2, max_parallel=2)
    context.scheduler.tick()
    jobs = client.get("/api/v1/jobs").get_json()["jobs"]
    assert sorted(job["sweep"] for job in jobs) == [sweep["id"]] * 2
    listed = client.get("/api/v1/sweeps").get_json()["sweeps"]
    assert [s["id"] for s in listed] == [sweep["id"]] and "trials" not in listed[0]
    assert listed[0]["counts"]["queued"] == 2


def test_hyperband_prunes_and_its_rung_records_survive_the_round(
    client: FlaskClient, context: ControllerContext
) -> None:
    sweep = submit(
        client,
        space={"lr": {"float": [0.001, 0.1]}},
        train_opts={"num_epochs": 9},
        sampler="random",
        max_trials=8,
        max_parallel=1,
        pruner="hyperband",
    )
    for number in range(8):
        context.scheduler.tick()
        (trial,) = live(show(client, sweep["id"]))
        accuracy = 0.9 - 0.1 * number  # every trial worse than the ones before it
        for epoch in range(1, 10):
            report_epochs(context, trial["job_id"], [accuracy] * epoch)
            context.scheduler.tick()
            if context.stores.jobs.get(trial["job_id"]).state == JobState.CANCELLED:
                break
        else:
            succeed(context, trial["job_id"], [accuracy] * 9)
    context.scheduler.tick()
    done = show(client, sweep["id"])
    assert done["state"] == "succeeded" and done["counts"]["pruned"] >= 1, done["counts"]
    rows = context.stores.sweeps.trials([sweep["id"]])[sweep["id"]]
    assert any(key.startswith("completed_rung_") for row in rows for key in row.system_attrs)
