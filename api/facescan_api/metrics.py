"""The API's Prometheus metrics: requests by route and status, latency, pool saturation.

Made once per app (a registry of its own, so two apps in one process do not clash) and
fed by the middleware in ``facescan_api.app``; the pool's gauges are read when
/metrics is scraped.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from facescan_api.pool import PoolStats

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class ApiMetrics:
    def __init__(self, stats: Callable[[], PoolStats]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "facescan_api_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "facescan_api_request_duration_seconds",
            "Seconds from a request's arrival to its answer, by route template.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rejected = Counter(
            "facescan_api_pool_rejected",
            "Uploads refused with 503 because every worker was busy and the queue full.",
            registry=self.registry,
        )
        gauges = {
            "workers": "Detector worker processes configured.",
            "ready": "Detector workers with their model loaded.",
            "busy": "Detector workers detecting now.",
            "waiting": "Admitted uploads waiting for a worker.",
            "capacity": "Uploads admitted at most (workers plus queue).",
        }
        for name, doc in gauges.items():
            gauge = Gauge(f"facescan_api_pool_{name}", doc, registry=self.registry)
            gauge.set_function(_reader(stats, name))
        Gauge(
            "facescan_api_pool_saturation",
            "Admitted uploads over capacity (1: the next one is refused).",
            registry=self.registry,
        ).set_function(lambda: _saturation(stats()))

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _reader(stats: Callable[[], PoolStats], name: str) -> Callable[[], float]:
    def read() -> float:
        return float(getattr(stats(), name))

    return read


def _saturation(stats: PoolStats) -> float:
    return (stats.busy + stats.waiting) / stats.capacity if stats.capacity else 1.0
