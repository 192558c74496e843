"""Serve models over an OpenAI-compatible HTTP API.

::

    python -m autodeploy.tools.serve --model M [--host H] [--port P] [--served-model-name NAME]
        [every setting: --max-batch-size 16 --max-waiting-requests 64 --args.X.Y=V ...]
    python -m autodeploy.tools.serve --models A.yaml [B.yaml ...] [--host H] [--port P]
        [--trust-remote-code] [--num-cpus N]

The first form builds one model in this process and serves it with uvicorn (FastAPI):
``POST /v1/completions``, ``POST /v1/chat/completions`` (``stream: true`` for server-sent
events), ``GET /v1/models``, ``GET /health``, ``GET /metrics``. Clients name the model by
``--served-model-name`` (default: the ``model`` setting).

The second form reads llm-serve / RayLLM model files, starts a local Ray cluster (or joins the
one named by ``RAY_ADDRESS``) and runs one Ray Serve deployment per file behind the same
routes; clients name a model by its file's ``model_id``. ``trust_remote_code`` in a file is
honoured only with ``--trust-remote-code``.
"""

from __future__ import annotations

import sys
from typing import Any

from ..config import LlmArgs, cli_help_text, parse_cli
from ..utils.errors import AutoDeployError, ConfigError
from ..utils.logger import logger

PROG = "python -m autodeploy.tools.serve"
FLAGS = ("host", "port", "models", "trust_remote_code", "served_model_name", "num_cpus")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def make_local_app(args: LlmArgs, served_model_name: str | None = None) -> Any:
    """Build the model of ``args`` and the FastAPI app serving it (``app.state.backends``)."""
    from ..runtime.async_llm import AsyncLLM
    from ..runtime.llm import LLM
    from ..serve.backend import LocalBackend
    from ..serve.openai_app import build_app

    llm = AsyncLLM.from_llm(LLM.from_args(args))
    model_id = served_model_name or args.model
    return build_app({model_id: LocalBackend(llm, model_id)})


def run_uvicorn(app: Any, host: str, port: int) -> None:
    import uvicorn

    logger.info("serving on http://%s:%d (OpenAI API under /v1)", host, port)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)


def _flag(parsed: dict[str, Any], name: str, default: Any) -> Any:
    return parsed.get(name, default)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        parsed = parse_cli(argv, flags=FLAGS)
        if parsed.get("help"):
            print(f"usage: {PROG} [options]\n\n{__doc__}\n{cli_help_text((), FLAGS)}")
            return 0
        host = str(_flag(parsed, "host", DEFAULT_HOST))
        port = _flag(parsed, "port", DEFAULT_PORT)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
            raise ConfigError(f"--port {port!r}: give a port number in 0..65535.")
        models = parsed.get("models")
        if models is not None:
            files = [models] if isinstance(models, str) else list(models)
            if parsed["args"]:
                raise ConfigError(
                    f"--models: settings on the command line ({sorted(parsed['args'])}) do not "
                    "apply to model files; put them in the files' model_config."
                )
            from ..serve.ray_app import run_ray_serve

            run_ray_serve(
                [str(f) for f in files],
                host=host,
                port=port,
                trust_remote_code=bool(parsed.get("trust_remote_code", False)),
                num_cpus=parsed.get("num_cpus"),
            )
            return 0
        if parsed.get("trust_remote_code"):
            parsed["args"]["trust_remote_code"] = True
        args = LlmArgs.from_cli(parsed["args"])
        name = parsed.get("served_model_name")
        app = make_local_app(args, None if name is None else str(name))
        try:
            run_uvicorn(app, host, port)
        finally:
            for backend in app.state.backends.values():
                backend.shutdown()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except AutoDeployError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
