"""The Ray Serve app: one deployment per llm-serve model file behind one OpenAI ingress.

- ``ModelServer`` (one deployment per file, named after its ``model_id``): builds the model
  with the file's settings in each replica and runs a ``LocalBackend``; Serve's health check
  fails once the engine hit a fatal error (Serve then replaces the replica);
- ``OpenAIIngress``: the FastAPI app of ``openai_app.build_app`` whose backends forward every
  call to the model deployments through Serve handles (streams as streaming handle calls;
  leaving a stream cancels the call, which aborts the request in the replica).

``run_ray_serve(files, host=..., port=...)`` starts (or, with ``RAY_ADDRESS``, joins) a Ray
cluster and serves until interrupted; ``build_ray_app(model_files)`` returns the application
for ``serve.run``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from ..runtime.sampling import SamplingParams
from ..utils.errors import ConfigError
from ..utils.logger import logger
from .llm_serve import ModelFile, load_model_file

INGRESS_NAME = "OpenAIIngress"
APP_NAME = "autodeploy"


class ModelServer:
    """One replica of one model file (wrapped by ``serve.deployment`` in ``build_ray_app``)."""

    def __init__(self, model_file: ModelFile):
        from ..runtime.async_llm import AsyncLLM
        from .backend import LocalBackend

        llm = AsyncLLM(**model_file.settings)
        # Multi-token stopping sequences end every request, as in llm-serve: as stop strings.
        self.extra_stops = []
        if model_file.stop_token_sequences and llm.tokenizer is not None:
            self.extra_stops = [llm.tokenizer.decode(i) for i in model_file.stop_token_sequences]
        self.backend = LocalBackend(
            llm,
            model_file.model_id,
            sampling_defaults=model_file.sampling_defaults,
            prompt_format=model_file.prompt_format,
            max_input_words=model_file.max_input_words,
        )

    async def encode(self, prompt: Any = None, messages: Any = None) -> Any:
        return await self.backend.encode(prompt=prompt, messages=messages)

    async def stream(self, encoded: Any, params: SamplingParams) -> Any:
        """Yields None once the request is queued (so errors surface first), then deltas."""
        if self.extra_stops:
            params = dataclasses.replace(params, stop=[*params.stop_strings, *self.extra_stops])
        stream = await self.backend.open(encoded, params)
        try:
            yield None
            async for delta in stream:
                yield delta
        finally:
            stream.abort()

    async def token_texts(self, token_ids: Sequence[int]) -> dict[int, str]:
        return await self.backend.token_texts(token_ids)

    async def health(self) -> str | None:
        return await self.backend.health()

    async def stats(self) -> dict[str, float]:
        return await self.backend.stats()

    def check_health(self) -> None:
        problem = self.backend.llm.fatal_error
        if problem is not None:
            raise RuntimeError(f"the engine of {self.backend.model_id} stopped: {problem}")


class _RayStream:
    """A streaming handle call as a ``DeltaStream``."""

    def __init__(self, generator: Any):
        self._generator = generator

    def __aiter__(self) -> _RayStream:
        return self

    async def __anext__(self) -> Any:
        return await self._generator.__anext__()

    def abort(self) -> None:
        self._generator.cancel()


class RayBackend:
    """A ``ModelBackend`` whose calls go to a ``ModelServer`` deployment."""

    def __init__(self, model_id: str, handle: Any, sampling_defaults: dict[str, Any]):
        self.model_id = model_id
        self.handle = handle
        self.sampling_defaults = sampling_defaults

    async def encode(self, prompt: Any = None, messages: Any = None) -> Any:
        return await self.handle.encode.remote(prompt=prompt, messages=messages)

    async def open(self, encoded: Any, params: SamplingParams) -> _RayStream:
        generator = self.handle.options(stream=True).stream.remote(encoded, params)
        await generator.__anext__()  # the "queued" marker, or the replica's error
        return _RayStream(generator)

    async def token_texts(self, token_ids: Sequence[int]) -> dict[int, str]:
        return await self.handle.token_texts.remote(list(token_ids))

    async def health(self) -> str | None:
        try:
            return await self.handle.health.remote()
        except Exception as exc:  # noqa: BLE001  (an unreachable model is unhealthy)
            return f"{type(exc).__name__}: {exc}"

    async def stats(self) -> dict[str, float]:
        return await self.handle.stats.remote()


class OpenAIIngress:
    """Holds the model handles; Serve calls ``__serve_build_asgi_app__`` in the replica."""

    def __init__(self, model_ids: list[str], defaults: list[dict[str, Any]], *handles: Any):
        self.backends = {
            model_id: RayBackend(model_id, handle, default)
            for model_id, default, handle in zip(model_ids, defaults, handles)
        }

    def __serve_build_asgi_app__(self) -> Any:
        from .openai_app import build_app

        return build_app(self.backends)


def read_model_files(paths: Sequence[str], *, trust_remote_code: bool) -> list[ModelFile]:
    """Parse every file; keep the enabled ones; refuse duplicated model ids."""
    files = [load_model_file(p, trust_remote_code=trust_remote_code) for p in paths]
    enabled = [f for f in files if f.enabled]
    if not enabled:
        raise ConfigError(f"--models: no enabled model in {list(paths)} (enabled: false).")
    seen: dict[str, str] = {}
    for model_file in enabled:
        if model_file.model_id in seen:
            raise ConfigError(
                f"{model_file.path}: model_id {model_file.model_id!r} is also served by "
                f"{seen[model_file.model_id]}; give each file its own model_id (share a checkpoint "
                "through initialization.hf_model_id)."
            )
        seen[model_file.model_id] = model_file.path
    return enabled


def build_ray_app(model_files: Sequence[ModelFile]) -> Any:
    """The Serve application: one ``ModelServer`` deployment per file, one ingress."""
    from ray import serve

    bound = []
    for model_file in model_files:
        deployment = serve.deployment(ModelServer).options(**model_file.deployment_options)
        bound.append(deployment.bind(model_file))
    ingress = serve.deployment(serve.ingress()(OpenAIIngress)).options(
        name=INGRESS_NAME, ray_actor_options={"num_cpus": 0}
    )
    return ingress.bind(
        [m.model_id for m in model_files], [m.sampling_defaults for m in model_files], *bound
    )


def run_ray_serve(
    paths: Sequence[str],
    *,
    host: str,
    port: int,
    trust_remote_code: bool = False,
    num_cpus: int | None = None,
) -> None:
    """Serve the model files until interrupted (see the module docstring)."""
    model_files = read_model_files(paths, trust_remote_code=trust_remote_code)
    import ray
    from ray import serve

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        ray.init(address=address, num_cpus=None if address else num_cpus)
    serve.start(http_options={"host": host, "port": port})
    names = ", ".join(m.model_id for m in model_files)
    logger.info("Ray Serve: %s on http://%s:%d (OpenAI API under /v1)", names, host, port)
    serve.run(build_ray_app(model_files), name=APP_NAME, route_prefix="/", blocking=True)
