"""The sweep store against a real SQLite file and a real PostgreSQL server: one trial per slot
however many askers race for it, one tell per trial, and a jobs table of an earlier version
gaining ``sweep_id`` in place."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cnnswarm.store import Stores, db, open_stores
from cnnswarm.store.jobs import JobSpec
from cnnswarm.store.sweeps import SweepState, TrialState

REQUEST = {"max_trials": 4, "max_parallel": 2, "metric": "test_accuracy", "direction": "maximize"}


@pytest.fixture
def stores(database_url: str, tmp_path: Path) -> Stores:
    s = open_stores(database_url, tmp_path / "home")
    yield s  # type: ignore[misc]
    s.close()


def spec(model_id: str) -> JobSpec:
    return JobSpec(model_id, "digits", "SmallConvNet", None, {"num_epochs": 1})


def test_racing_askers_of_one_slot_insert_one_trial_and_one_job(stores: Stores) -> None:
    sweep, _ = stores.sweeps.submit(REQUEST, request_hash="h")

    def ask(index: int) -> str | None:
        return stores.sweeps.add_trial(sweep.id, 0, {"lr": index}, {}, spec(f"m-{index}"))

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(16)))
    winners = [job_id for job_id in answers if job_id is not None]
    assert len(winners) == 1
    (trial,) = stores.sweeps.trials([sweep.id])[sweep.id]
    assert trial.job.id == winners[0] and trial.job.sweep_id == sweep.id
    assert sum(stores.jobs.count_by_state().values()) == 1


def test_a_trial_is_told_once_and_a_stopped_sweep_takes_no_trial(stores: Stores) -> None:
    sweep, _ = stores.sweeps.submit(REQUEST, request_hash="h")
    assert stores.sweeps.add_trial(sweep.id, 0, {}, {}, spec("m-0")) is not None
    with ThreadPoolExecutor(8) as pool:
        told = list(
            pool.map(lambda _: stores.sweeps.tell(sweep.id, 0, TrialState.SUCCEEDED, 0.5), range(8))
        )
    assert told.count(True) == 1
    assert stores.sweeps.cancel(sweep.id).state == SweepState.CANCELLED
    assert stores.sweeps.add_trial(sweep.id, 1, {}, {}, spec("m-1")) is None
    assert not stores.sweeps.finish(sweep.id, SweepState.SUCCEEDED)  # cancelled stays


def test_an_earlier_jobs_table_gains_sweep_id_in_place(stores: Stores) -> None:
    job, _ = stores.jobs.submit(spec("old-job"))
    with stores.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE jobs DROP COLUMN sweep_id")
    db.create_schema(stores.engine)
    db.create_schema(stores.engine)  # idempotent
    assert stores.jobs.get(job.id).sweep_id is None
    sweep, _ = stores.sweeps.submit(REQUEST, request_hash="h")
    job_id = stores.sweeps.add_trial(sweep.id, 0, {}, {}, spec("new-job"))
    assert job_id is not None and stores.jobs.get(job_id).sweep_id == sweep.id
