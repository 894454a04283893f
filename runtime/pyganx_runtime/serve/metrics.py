"""The service's Prometheus metrics (docs/serve.md lists them), in a registry of its own."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .models import Model


class Metrics:
    """Request counts, errors and latency per model and status, batch sizes and queue
    depths per model."""

    def __init__(self, models: dict[str, Model]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("pyganx_requests", "Translation requests answered, by model and HTTP status",
                                ["model", "code"], registry=r)
        self.errors = Counter("pyganx_request_errors", "Translation requests answered with an error status",
                              ["model", "code"], registry=r)
        self.latency = Histogram("pyganx_request_latency_seconds", "Time from request to answer, translations",
                                 ["model"], registry=r,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
        self.batch = Histogram("pyganx_batch_size", "Images per model run", ["model"], registry=r,
                               buckets=(1, 2, 4, 8, 16, 32, 64))
        queue = Gauge("pyganx_queue_depth", "Requests waiting for a model run", ["model"], registry=r)
        for name, m in models.items():
            queue.labels(name).set_function(m.batcher.queued)
            m.batcher.on_batch = self.batch.labels(name).observe

    def answered(self, model: str, code: int, seconds: float) -> None:
        """Counts one translation request of ``model`` answered with ``code``."""
        self.requests.labels(model, str(code)).inc()
        if code >= 400:
            self.errors.labels(model, str(code)).inc()
        self.latency.labels(model).observe(seconds)


__all__ = ["Metrics"]
