"""Prometheus metrics, one registry per app (so tests can build many apps), served at /metrics."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

# Request and stage latencies: from sub-millisecond stages to multi-second tails under overload.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            "alexnet_requests_total",
            "HTTP requests by route template, method and status code",
            ("route", "method", "status"),
            registry=registry,
        )
        self.request_seconds = Histogram(
            "alexnet_request_duration_seconds",
            "HTTP request latency, from the first byte received to the response",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.decode_seconds = Histogram(
            "alexnet_decode_seconds", "Image decode time per image", buckets=LATENCY_BUCKETS, registry=registry
        )
        self.preprocess_seconds = Histogram(
            "alexnet_preprocess_seconds",
            "Resize, crop and normalise time per image",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_seconds = Histogram(
            "alexnet_queue_wait_seconds",
            "Time an image waited for its inference batch to start",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inference_seconds = Histogram(
            "alexnet_inference_seconds",
            "Duration of one batched session.run",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "alexnet_batch_size", "Images per session.run", buckets=BATCH_SIZE_BUCKETS, registry=registry
        )
        self.images = Counter("alexnet_images_total", "Images classified, by outcome", ("outcome",), registry=registry)
        self.explanations = Counter(
            "alexnet_explanations_total", "Occlusion explanations, by outcome", ("outcome",), registry=registry
        )
        self.explain_seconds = Histogram(
            "alexnet_explanation_duration_seconds",
            "Time to explain one image: decode, every occluded copy's inference, and the overlay if asked for",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge("alexnet_in_flight_requests", "HTTP requests being served", registry=registry)
        self.queue_depth = Gauge("alexnet_queue_depth", "Images waiting for an inference batch", registry=registry)
        self.ready = Gauge("alexnet_ready", "1 when the model is warmed up and serving", registry=registry)
        self.memory_in_flight = Gauge(
            "alexnet_memory_in_flight_bytes",
            "Bytes held by requests: bodies being received or waiting, and images being decoded",
            registry=registry,
        )
        self.memory_budget = Gauge(
            "alexnet_memory_budget_bytes",
            "The memory budget for request bodies (ALEXNET_MEMORY_BUDGET_BYTES)",
            registry=registry,
        )
        self.budget_refusals = Counter(
            "alexnet_memory_budget_refusals_total",
            "Requests refused with 503 because their body did not fit the memory budget",
            registry=registry,
        )
        self.body_read_timeouts = Counter(
            "alexnet_body_read_timeouts_total",
            "Requests answered 408 because their body did not arrive within ALEXNET_BODY_READ_TIMEOUT_S",
            registry=registry,
        )
        self.model_info = Info("alexnet_model", "The model being served", registry=registry)

    def describe_model(self, *, name: str, weights: str, trained: bool, provider: str, sha256: str) -> None:
        self.model_info.info(
            {"name": name, "weights": weights, "trained": str(trained).lower(), "provider": provider, "sha256": sha256}
        )

    def track_queue_depth(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(lambda: float(depth()))

    def track_memory(self, limit_bytes: int, in_flight_bytes: Callable[[], int]) -> None:
        self.memory_budget.set(limit_bytes)
        self.memory_in_flight.set_function(lambda: float(in_flight_bytes()))

    def track_readiness(self, ready: Callable[[], bool]) -> None:
        self.ready.set_function(lambda: 1.0 if ready() else 0.0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
