"""Buffered metrics write what direct ``prometheus_client`` calls would: the same buckets, sum
and counts, once flushed (and nothing before)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from cnnswarm.metric_buffers import BufferedCounter, BufferedHistogram

BUCKETS = (0.5, 1.0, 2.0)
# Values on, between and beyond the bounds.
VALUES = [0.0, 0.5, 0.50001, 1.0, 1.5, 2.0, 2.5, 100.0, 0.5]


def samples(registry: CollectorRegistry) -> list[str]:
    """The exposition's sample lines, without the creation time (which differs)."""
    lines = generate_latest(registry).decode().splitlines()
    return [line for line in lines if not line.startswith("#") and "_created" not in line]


def test_a_flushed_histogram_equals_one_observed_directly() -> None:
    direct_registry, buffered_registry = CollectorRegistry(), CollectorRegistry()
    direct = Histogram("h", "h", buckets=BUCKETS, registry=direct_registry)
    buffered = BufferedHistogram(Histogram("h", "h", buckets=BUCKETS, registry=buffered_registry))
    empty = samples(buffered_registry)
    for value in VALUES:
        direct.observe(value)
        buffered.observe(value)
    assert samples(buffered_registry) == empty  # queued, not written yet
    buffered.flush()
    assert samples(buffered_registry) == samples(direct_registry)
    assert 'h_bucket{le="0.5"} 3.0' in samples(direct_registry)


def test_a_flushed_counter_counts_each_label_set() -> None:
    registry = CollectorRegistry()
    counter = Counter("c", "c", ["route", "status"], registry=registry)
    buffered = BufferedCounter(counter)
    for labels in [("/a", "200")] * 3 + [("/b", "404")]:
        buffered.inc(*labels)
    buffered.flush()
    buffered.flush()  # nothing left: counts once
    assert registry.get_sample_value("c_total", {"route": "/a", "status": "200"}) == 3
    assert registry.get_sample_value("c_total", {"route": "/b", "status": "404"}) == 1

    plain = BufferedCounter(Counter("p", "p", registry=registry))
    plain.inc()
    plain.inc()
    plain.flush()
    assert registry.get_sample_value("p_total") == 2
