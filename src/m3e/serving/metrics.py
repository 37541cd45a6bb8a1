"""Prometheus metrics of one server (its own registry, so several apps can live in one process)."""

from __future__ import annotations

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768)


class Metrics:
    """The server's counters, gauges and histograms, rendered for ``GET /metrics``."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "m3e_requests", "HTTP requests by endpoint and status code", ["endpoint", "status"], registry=r
        )
        self.errors = Counter(
            "m3e_request_errors",
            "Requests answered with an error, by status and error code",
            ["status", "code"],
            registry=r,
        )
        self.in_flight = Gauge(
            "m3e_requests_in_flight", "Requests being handled (embeddings, rerank, search)", registry=r
        )
        self.queue_texts = Gauge("m3e_queue_depth", "Texts waiting for the model", registry=r)
        self.queue_requests = Gauge(
            "m3e_queue_requests", "Requests with texts waiting for the model", registry=r
        )
        self.queue_seconds_estimate = Gauge(
            "m3e_queue_seconds_estimate",
            "Estimated time to finish the queued work (measured throughput)",
            registry=r,
        )
        self.texts = Counter("m3e_texts", "Texts embedded, by model", ["model"], registry=r)
        self.tokens = Counter(
            "m3e_tokens", "Tokens embedded (special tokens included), by model", ["model"], registry=r
        )
        self.truncated = Counter(
            "m3e_truncated_inputs", "Inputs truncated at the model's max length", ["model"], registry=r
        )
        self.batch_size = Histogram(
            "m3e_batch_size", "Texts per forward pass", ["model"], buckets=_BATCH_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "m3e_batch_tokens",
            "Padded tokens per forward pass",
            ["model"],
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.forward_seconds = Histogram(
            "m3e_forward_seconds",
            "Duration of one forward pass",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "m3e_queue_wait_seconds",
            "Time from a request's arrival at the batcher to its first forward",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "m3e_request_latency_seconds",
            "Embedding request latency, end to end in the server",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.reranked = Counter(
            "m3e_reranked_documents", "Documents scored by a reranker, by model", ["model"], registry=r
        )
        self.rerank_tokens = Counter(
            "m3e_rerank_tokens",
            "Tokens of the (query, document window) pairs scored, by model",
            ["model"],
            registry=r,
        )
        self.rerank_latency = Histogram(
            "m3e_rerank_latency_seconds",
            "Rerank request latency, end to end in the server",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.search_latency = Histogram(
            "m3e_search_latency_seconds",
            "Search request latency, end to end in the server, by index",
            ["index"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.searches_queued = Gauge("m3e_search_queue", "Search requests waiting or running", registry=r)
        self.ready = Gauge("m3e_ready", "1 once the models are warmed up", registry=r)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def observe_batch(self, model: str, size: int, padded_tokens: int, seconds: float) -> None:
        self.batch_size.labels(model).observe(size)
        self.batch_tokens.labels(model).observe(padded_tokens)
        self.forward_seconds.labels(model).observe(seconds)

    def count_request(self, endpoint: str, status: int, code: str | None = None) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        if status >= 400:
            self.errors.labels(str(status), str(code or "")).inc()
