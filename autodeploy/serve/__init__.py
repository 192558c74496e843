"""Serving: an OpenAI-compatible HTTP server and a Ray Serve app over ``AsyncLLM``.

- ``protocol``: the request bodies of /v1/completions and /v1/chat/completions, and their
  mapping onto ``SamplingParams``;
- ``errors``: OpenAI-style error bodies and the HTTP status of every error;
- ``backend``: what a route needs of a model (``LocalBackend`` runs an ``AsyncLLM`` in-process);
- ``openai_app``: ``build_app(backends)``, the FastAPI application (routes, SSE, disconnects);
- ``metrics``: the Prometheus metrics of /metrics;
- ``llm_serve``: llm-serve / RayLLM model files -> our settings; ``ray_app``: the Ray Serve app.

The routes sit on the backend interface, never on engine internals (DESIGN.md, Serving).
"""
