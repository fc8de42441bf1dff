"""Prometheus metrics of one app: requests, latency, tokens, batches, kNN search time,
datastore sizes and opt-outs.

Each app gets its own `CollectorRegistry` (tests run several apps in one process).
Datastore sizes are read at scrape time from the datastores themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class _DatastoreCollector(Collector):
    """Documents, entries and opt-outs of every loaded datastore, at scrape time."""

    def __init__(self, infos: Callable[[], dict[str, Any]]) -> None:
        self.infos = infos

    def collect(self) -> Iterator[GaugeMetricFamily]:
        docs = GaugeMetricFamily("silo_datastore_documents", "Documents in a datastore.",
                                 labels=["datastore", "state"])
        entries = GaugeMetricFamily("silo_datastore_entries", "kNN entries in a datastore.",
                                    labels=["datastore", "state"])
        optouts = GaugeMetricFamily("silo_datastore_optouts", "Opt-out receipts recorded.",
                                    labels=["datastore"])
        for name, info in self.infos().items():
            docs.add_metric([name, "all"], info.documents)
            docs.add_metric([name, "live"], info.live_documents)
            entries.add_metric([name, "all"], info.entries)
            entries.add_metric([name, "live"], info.live_entries)
            optouts.add_metric([name], info.optouts)
        yield from (docs, entries, optouts)


class Metrics:
    """The service's metrics, registered in a registry of their own."""

    def __init__(self, datastore_infos: Callable[[], dict[str, Any]]) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("silo_requests", "HTTP requests.",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("silo_request_seconds", "Request latency.",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("silo_tokens", "Tokens processed.", ["kind"], registry=r)
        self.knn_seconds = Histogram("silo_knn_search_seconds", "Time of one kNN search.",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("silo_batch_size", "Sequences per model batch.",
                                    ["kind"], buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("silo_queue_depth", "Jobs waiting for the model.",
                                 registry=r)
        self.optouts = Counter("silo_optouts", "Opt-outs acknowledged.", registry=r)
        self.optout_documents = Counter("silo_optout_documents",
                                        "Documents removed by opt-outs.", registry=r)
        r.register(_DatastoreCollector(datastore_infos))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_batch(self, kind: str, size: int) -> None:
        self.batch_size.labels(kind).observe(size)

    def render(self) -> bytes:
        return generate_latest(self.registry)

