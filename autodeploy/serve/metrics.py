"""Prometheus metrics of the server (GET /metrics), in a registry of their own per app.

Counters: ``autodeploy_requests_total{model, status}`` (HTTP status), ``autodeploy_prompt_tokens_
total{model}``, ``autodeploy_generation_tokens_total{model}``. Histograms: ``autodeploy_time_to_
first_token_seconds{model}``, ``autodeploy_time_per_output_token_seconds{model}``. Gauges, read
from each backend when scraped: ``autodeploy_requests_running``, ``autodeploy_requests_waiting``,
``autodeploy_kv_cache_usage_ratio``, ``autodeploy_slot_usage_ratio`` (all ``{model}``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_GAUGES = {
    "running": ("autodeploy_requests_running", "Requests in the running batch."),
    "waiting": ("autodeploy_requests_waiting", "Requests waiting for admission."),
    "kv_cache_usage": ("autodeploy_kv_cache_usage_ratio", "Reserved share of the KV cache."),
    "slot_usage": ("autodeploy_slot_usage_ratio", "Share of the max_batch_size slots in use."),
}


class ServerMetrics:
    """The collectors of one app (see the module docstring)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "autodeploy_requests", "Finished HTTP requests.", ["model", "status"], registry=registry
        )
        self.prompt_tokens = Counter(
            "autodeploy_prompt_tokens", "Prompt tokens processed.", ["model"], registry=registry
        )
        self.generation_tokens = Counter(
            "autodeploy_generation_tokens", "Tokens generated.", ["model"], registry=registry
        )
        self.time_to_first_token = Histogram(
            "autodeploy_time_to_first_token_seconds",
            "Time from arrival to the first generated token.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.time_per_output_token = Histogram(
            "autodeploy_time_per_output_token_seconds",
            "Mean time between generated tokens after the first, per request.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.gauges = {
            key: Gauge(name, doc, ["model"], registry=registry)
            for key, (name, doc) in _GAUGES.items()
        }

    def observe_request(
        self,
        model: str,
        prompt_tokens: int,
        output_tokens: int,
        ttft_s: float | None,
        total_s: float,
    ) -> None:
        self.prompt_tokens.labels(model).inc(prompt_tokens)
        self.generation_tokens.labels(model).inc(output_tokens)
        if ttft_s is not None:
            self.time_to_first_token.labels(model).observe(ttft_s)
            if output_tokens > 1:
                per_token = (total_s - ttft_s) / (output_tokens - 1)
                self.time_per_output_token.labels(model).observe(per_token)

    def set_load(self, model: str, stats: dict[str, float]) -> None:
        for key, gauge in self.gauges.items():
            if key in stats:
                gauge.labels(model).set(stats[key])

    def render(self) -> bytes:
        return generate_latest(self.registry)
