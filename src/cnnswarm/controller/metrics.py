"""The controller's Prometheus series: jobs, trainers, predict and the model cache.

Every series is named here once; routes, the scheduler and the predictor record through the
one-line methods of ``ControllerMetrics`` (each a no-op with metrics off).

Which controller reports what (several replicas, each with several gunicorn workers):
- *Events* (job attempts, requeues, ends; predictions) are counted by the one process where they
  happened: a job transition is a compare-and-set in the database that one process wins, a
  predict request is answered by one worker. Each replica reports its share, and ``sum`` over
  replicas is the cluster's total, with nothing counted twice.
- *State* from the database (``cnnswarm_jobs``, ``cnnswarm_trainers``, slots) is read at scrape
  time by whichever replica is scraped: each replica reports the same cluster-wide value, so
  aggregate with ``max``, never ``sum``.
- The model cache is per process: ``cnnswarm_predict_models_cached`` is the sum over the live
  workers of one replica.

Labels are bounded: job states, trainer states, requeue reasons, HTTP statuses, and ``model``:
the id of a published model (the catalog's size), empty when the request named no model that
exists, so made-up names in requests never become series.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from werkzeug.exceptions import HTTPException

from cnnswarm.errors import CnnSwarmError
from cnnswarm.exposition import AppMetrics, ScrapeCollector
from cnnswarm.store import Stores
from cnnswarm.store.jobs import Job

log = logging.getLogger(__name__)

# Seconds a job trains: a tiny test job to a day-long run.
JOB_DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
                        21600.0, 86400.0)  # fmt: skip
QUEUE_WAIT_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)
PREDICT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PREDICT_QUEUE_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class RequeueReason(StrEnum):
    """Why a running job went back to the queue."""

    LEASE_EXPIRED = "lease_expired"  # its trainer stopped renewing the lease (lost, partitioned)
    TRAINER_FAILURE = "trainer_failure"  # its trainer reported a retryable failure (process killed)


@dataclass
class PredictOutcome:
    """What a predict route learns while it runs: the model it resolved (else empty)."""

    model: str = ""


class ControllerMetrics:
    """The controller's event series, in ``app_metrics``' registry; with metrics off every
    method returns at once."""

    def __init__(self, app_metrics: AppMetrics) -> None:
        self.enabled = app_metrics.enabled
        registry = app_metrics.registry
        self.job_attempts = Counter(
            "cnnswarm_job_attempts_total",
            "Job attempts started (a job claimed and dispatched to a trainer)",
            registry=registry,
        )
        self.job_requeues = Counter(
            "cnnswarm_job_requeues_total",
            "Running jobs put back in the queue, by reason",
            ["reason"],
            registry=registry,
        )
        self.jobs_ended = Counter(
            "cnnswarm_jobs_ended_total",
            "Jobs that reached succeeded or failed here (cancellations: cnnswarm_jobs)",
            ["state"],
            registry=registry,
        )
        self.job_duration = Histogram(
            "cnnswarm_job_duration_seconds",
            "From a job's first start to its end, by final state (succeeded, failed)",
            ["state"],
            buckets=JOB_DURATION_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "cnnswarm_job_queue_wait_seconds",
            "How long a job waited in the queue before an attempt started (since it last "
            "entered the queue)",
            buckets=QUEUE_WAIT_BUCKETS,
            registry=registry,
        )
        # Recorded by every predict: buffered (``cnnswarm.metric_buffers``).
        self.predict_requests = app_metrics.buffered_counter(
            Counter(
                "cnnswarm_predict_requests_total",
                "Predict requests answered, by model and HTTP status",
                ["model", "status"],
                registry=registry,
            )
        )
        self.predict_latency = app_metrics.buffered_histogram(
            Histogram(
                "cnnswarm_predict_duration_seconds",
                "Time to answer a successful predict request (decode, queue, forward, answer body)",
                buckets=PREDICT_BUCKETS,
                registry=registry,
            )
        )
        self.predict_queue_wait = app_metrics.buffered_histogram(
            Histogram(
                "cnnswarm_predict_queue_seconds",
                "Time a predict request's inputs waited for the model's forward pass",
                buckets=PREDICT_QUEUE_BUCKETS,
                registry=registry,
            )
        )
        self.predict_batch_size = app_metrics.buffered_histogram(
            Histogram(
                "cnnswarm_predict_batch_size",
                "Input rows per forward pass (requests merged into one batch)",
                buckets=BATCH_SIZE_BUCKETS,
                registry=registry,
            )
        )
        self.predict_rejected = Counter(
            "cnnswarm_predict_rejected_total",
            "Predict requests refused with 503 (their queue wait would pass PREDICT_MAX_QUEUE_S)",
            registry=registry,
        )
        self.models_cached = Gauge(
            "cnnswarm_predict_models_cached",
            "Models loaded in the predict caches (summed over this replica's live workers)",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.model_loads = Counter(
            "cnnswarm_predict_model_loads_total",
            "Models loaded into a predict cache (a miss: first use, eviction or a new version)",
            registry=registry,
        )

    # -- jobs -------------------------------------------------------------------------------

    def attempt_started(self, queued: Job, claimed: Job) -> None:
        """``queued`` (as the scheduler read it) was claimed as ``claimed`` and dispatched."""
        if not self.enabled:
            return
        self.job_attempts.inc()
        self.queue_wait.observe(max(0.0, claimed.updated_at - queued.updated_at))

    def job_requeued(self, reason: RequeueReason) -> None:
        """A running job went back to the queue."""
        if self.enabled:
            self.job_requeues.labels(reason.value).inc()

    def job_ended(self, job: Job) -> None:
        """``job`` reached a final state through this process (only succeeded and failed are
        recorded)."""
        if not self.enabled or job.state.value not in ("succeeded", "failed"):
            return
        self.jobs_ended.labels(job.state.value).inc()
        if job.started_at is not None and job.finished_at is not None:
            self.job_duration.labels(job.state.value).observe(job.finished_at - job.started_at)

    # -- predict ----------------------------------------------------------------------------

    @contextmanager
    def predict_request(self, started: float | None = None) -> Iterator[PredictOutcome]:
        """Count the predict request run in the block by model and status (the status of the
        error it raises, else 200) and time it when it succeeds: from ``started``
        (``time.perf_counter()``) when given, else from the block's start."""
        outcome = PredictOutcome()
        if not self.enabled:
            yield outcome
            return
        started = time.perf_counter() if started is None else started
        try:
            yield outcome
        except CnnSwarmError as error:
            self.predict_requests.inc(outcome.model, str(error.status))
            raise
        except HTTPException as error:
            self.predict_requests.inc(outcome.model, str(error.code or 500))
            raise
        except Exception:
            self.predict_requests.inc(outcome.model, "500")
            raise
        self.predict_latency.observe(time.perf_counter() - started)
        self.predict_requests.inc(outcome.model, "200")

    def observe_queue_wait(self, seconds: float) -> None:
        """A predict request's inputs waited ``seconds`` before their forward pass started."""
        if self.enabled:
            self.predict_queue_wait.observe(seconds)

    def observe_batch(self, rows: int) -> None:
        """A forward pass ran ``rows`` input rows."""
        if self.enabled:
            self.predict_batch_size.observe(rows)

    def count_rejected(self) -> None:
        """A predict request was refused with 503 (its queue wait passed PREDICT_MAX_QUEUE_S)."""
        if self.enabled:
            self.predict_rejected.inc()

    def model_loaded(self, cached_now: int) -> None:
        """A model was loaded; this process's cache now holds ``cached_now`` models."""
        if self.enabled:
            self.model_loads.inc()
            self.models_cached.set(cached_now)

    def cache_size(self, cached_now: int) -> None:
        """This process's cache now holds ``cached_now`` models (after a removal)."""
        if self.enabled:
            self.models_cached.set(cached_now)


def database_collector(stores: Stores, lost_after_s: float) -> ScrapeCollector:
    """Scrape-time series read from the database: jobs by state, trainers by state (a trainer
    silent for ``lost_after_s`` is ``lost``) and live slots; ``cnnswarm_database_up`` is 0 and
    the others absent when the database does not answer."""

    def collect() -> Iterable[Metric]:
        up = GaugeMetricFamily("cnnswarm_database_up", "1 when the job database answered")
        try:
            families = list(_database_families(stores, lost_after_s))
        except Exception:
            log.exception("metrics: the database did not answer")
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        return [up, *families]

    return ScrapeCollector(collect)


def _database_families(stores: Stores, lost_after_s: float) -> Iterator[Metric]:
    jobs = GaugeMetricFamily(
        "cnnswarm_jobs", "Jobs by state (cluster-wide: aggregate with max)", labels=["state"]
    )
    for state, count in stores.jobs.count_by_state().items():
        jobs.add_metric([state], count)
    yield jobs
    running = stores.jobs.running_per_trainer()
    by_state = {"idle": 0, "busy": 0, "lost": 0}
    slots = free = 0
    for trainer in stores.trainers.all():
        running_now = running.get(trainer.id, 0)
        state = trainer.state(lost_after_s, running_now)
        by_state[state] += 1
        if state != "lost":
            slots += trainer.slots
            free += trainer.free_slots(running_now)
    trainers = GaugeMetricFamily(
        "cnnswarm_trainers",
        "Trainers by state: idle (a free slot), busy, lost (no heartbeat within the lease)",
        labels=["state"],
    )
    for state, count in by_state.items():
        trainers.add_metric([state], count)
    yield trainers
    yield GaugeMetricFamily("cnnswarm_cluster_slots", "Slots of the live trainers", value=slots)
    yield GaugeMetricFamily(
        "cnnswarm_cluster_free_slots", "Free slots of the live trainers", value=free
    )
