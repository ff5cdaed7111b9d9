"""A trainer's Prometheus series: epochs, attempts, training throughput, slots.

A trainer is one gunicorn worker; its jobs run in child processes that report to that worker
(``runner``), so every series lives in the worker and needs no multiprocess mode. Events (epochs
completed, attempts ended) are counted as the runner drains its children's messages; the rest is
read from the runner when ``/metrics`` is scraped. Series carry no job ids:
``cnnswarm_trainer_info`` maps a scrape target to its trainer id.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from cnnswarm.exposition import ScrapeCollector

if TYPE_CHECKING:
    from cnnswarm.trainer.app import TrainerService


class TrainerMetrics:
    """A trainer's event series in ``registry``; with ``enabled`` false every method returns at
    once."""

    def __init__(self, registry: CollectorRegistry, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.epochs = Counter(
            "cnnswarm_trainer_epochs_total",
            "Training epochs completed by this trainer's jobs",
            registry=registry,
        )
        self.attempts_ended = Counter(
            "cnnswarm_trainer_attempts_ended_total",
            "Job attempts ended on this trainer, by how: succeeded, failed, cancelled, dropped "
            "(the controller said so) or fenced (the attempt lost its lease)",
            ["phase"],
            registry=registry,
        )

    def epochs_completed(self, count: int) -> None:
        """A job reported ``count`` more finished epochs."""
        if self.enabled and count > 0:
            self.epochs.inc(count)

    def attempt_ended(self, phase: str) -> None:
        """A job's child ended in final ``phase``."""
        if self.enabled:
            self.attempts_ended.labels(phase).inc()


def metrics_off() -> TrainerMetrics:
    """Metrics that record nothing (a runner built without its app's)."""
    return TrainerMetrics(CollectorRegistry(), enabled=False)


def service_collector(service: TrainerService) -> ScrapeCollector:
    """Scrape-time series read from the trainer's runner and heartbeat agent."""

    def collect() -> Iterable[Metric]:
        runner = service.runner
        info = GaugeMetricFamily(
            "cnnswarm_trainer_info", "This trainer's id (value 1)", labels=["trainer_id"]
        )
        info.add_metric([service.trainer_id], 1)
        phases = GaugeMetricFamily(
            "cnnswarm_trainer_jobs",
            "Job attempts here by phase (running, stopping)",
            labels=["phase"],
        )
        for phase, count in runner.active_phases().items():
            phases.add_metric([phase], count)
        return [
            info,
            phases,
            GaugeMetricFamily(
                "cnnswarm_trainer_images_per_second",
                "Training images per second: the last epoch's rate of each running job, summed",
                value=runner.training_images_per_s(),
            ),
            GaugeMetricFamily("cnnswarm_trainer_slots", "Job slots", value=runner.slots),
            GaugeMetricFamily(
                "cnnswarm_trainer_free_slots", "Job slots free now", value=runner.free_slots()
            ),
            GaugeMetricFamily(
                "cnnswarm_trainer_controller_reachable",
                "1 when the last heartbeat reached the controller",
                value=1 if service.agent.controller_reachable else 0,
            ),
        ]

    return ScrapeCollector(collect)
