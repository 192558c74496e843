"""llm-serve / RayLLM model files -> our settings, sampling defaults and Ray Serve options.

A file is one model: ``{deployment_config, model_config | engine_config, scaling_config,
enabled}``. Every key is either mapped, accepted with a logged note (it has no meaning for a
continuous-batching engine), or an error that names it; nothing is dropped silently.

=================================================  ==============================================
file key                                           ours
=================================================  ==============================================
``model_config.model_id``                          the served ``model`` name
``model_config.max_input_words``                   longer prompts get a 400 naming both counts
``initialization.hf_model_id`` (default model_id)  setting ``model`` (local dir, cached hub id,
                                                   ``builtin:<name>``)
``initializer.type`` SingleDevice / DeviceMap /    ``world_size`` 1 / the replica's GPUs /
DeepSpeed                                          ``scaling_config.num_workers``
``initializer.dtype``                              ``dtype`` (int8: error)
``initializer.torch_compile``                      ``compile_backend: torch-compile`` (inductor)
``initializer.from_pretrained_kwargs``             ``trust_remote_code`` (needs
                                                   ``--trust-remote-code``), ``torch_dtype`` ->
                                                   ``dtype``
``generation.max_batch_size``                      ``max_batch_size``
``generation.generate_kwargs``                     default ``SamplingParams`` (``max_new_tokens``
                                                   -> ``max_tokens``, ``do_sample: false`` ->
                                                   ``temperature: 0``, ...)
``generation.prompt_format`` (string / mapping)    ``PromptFormat``
``generation.stopping_sequences``                  stop strings; ints and numeric strings: stop
                                                   token ids; id lists: decoded to strings
``max_total_tokens`` / ``max_batch_prefill_tokens``  ``max_seq_len`` / ``max_num_tokens``
/ ``max_batch_total_tokens``                       / ``kv_cache_config.max_tokens``
``model_config.autodeploy`` (ours)                 any further setting (``attn_backend``, ...)
``deployment_config.autoscaling_config``           Serve ``autoscaling_config``
                                                   (``target_num_ongoing_requests_per_replica``
                                                   -> ``target_ongoing_requests``)
``deployment_config.max_concurrent_queries``       Serve ``max_ongoing_requests``
``deployment_config.ray_actor_options``            Serve ``ray_actor_options``
``scaling_config.num_cpus_per_worker`` /           the replica's CPUs / GPUs / custom resources;
``num_gpus_per_worker`` / ``resources_per_worker``  ``world_size`` > 1: a placement group
/ ``placement_strategy``                           bundle with ``world_size`` GPUs
``engine_config`` (ray-llm v0.3)                   as ``model_config``; ``engine_kwargs``:
                                                   ``max_num_seqs``, ``max_num_batched_tokens``,
                                                   ``tensor_parallel_size``, ``max_model_len``,
                                                   ``gpu_memory_utilization``, ``dtype``,
                                                   ``trust_remote_code``
=================================================  ==============================================

Errors: ``s3_mirror_config``, ``runtime_env``, ``LlamaCpp`` / ``TextGenerationInference``
initializers and pipelines, ``use_bettertransformer``, DeepSpeed kernel options, and any key not
listed above.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..utils.errors import ConfigError
from ..utils.logger import logger
from ..utils.suggest import did_you_mean
from .llm_serve_sections import deployment_options, generation_section
from .prompt_format import PromptFormat

_UNSUPPORTED = {
    "s3_mirror_config": "autodeploy never downloads; copy the model to a local directory and "
    "point initialization.hf_model_id at it",
    "runtime_env": "install packages into the environment before starting Ray instead",
    "env_vars_to_propogate": "set the variables in the environment that starts Ray",
    "multiplex_config": "model multiplexing is not supported; serve one model per file",
    "use_bettertransformer": "the graph compiler replaces it; remove the key",
    "use_kernel": "DeepSpeed kernels are not used; remove the key",
    "use_meta_tensor": "DeepSpeed kernels are not used; remove the key",
    "ds_inference_kwargs": "DeepSpeed is not used; world_size comes from scaling_config",
    "max_tokens": "a DeepSpeed option; use generation.max_total_tokens for max_seq_len",
    "model_filename": "llama.cpp files are not supported; give a Hugging Face checkpoint",
    "model_init_kwargs": "llama.cpp / TGI options are not supported",
}
_NOTED = {  # accepted, with a note: they describe a model or tune a different batching scheme
    "model_url",
    "model_description",
    "batching",
    "batch_wait_timeout_s",
    "full_warmup",
    "max_input_length",
    "max_waiting_tokens",
    "waiting_served_ratio",
    "pg_timeout_s",
}


@dataclass
class ModelFile:
    """One parsed model file (see the module docstring)."""

    path: str
    model_id: str
    enabled: bool = True
    settings: dict[str, Any] = field(default_factory=dict)  # LlmArgs keyword arguments
    sampling_defaults: dict[str, Any] = field(default_factory=dict)  # SamplingParams fields
    stop_token_sequences: list[list[int]] = field(default_factory=list)  # decoded in the replica
    prompt_format: PromptFormat | None = None
    max_input_words: int | None = None  # longer prompts are refused (400)
    deployment_options: dict[str, Any] = field(default_factory=dict)  # serve.deployment(...)

    @property
    def deployment_name(self) -> str:
        return self.model_id.replace("/", "--").replace(".", "_")


class ModelFileReader:
    """Walks one file, remembering where each value came from for error messages."""

    def __init__(self, path: str, trust_remote_code: bool):
        self.path = path
        self.trust_remote_code = trust_remote_code

    def section(self, value: Any, where: str, known: set[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(where, f"must be a mapping, got {type(value).__name__}")
        for key in value:
            name = f"{where}.{key}" if where else str(key)
            if key in _UNSUPPORTED:
                raise self.error(name, f"is not supported: {_UNSUPPORTED[key]}")
            if key in _NOTED:
                logger.info("%s: %s has no effect in autodeploy (noted, not used)", self.path, name)
                continue
            if key not in known:
                raise self.error(
                    name,
                    f"is not a known key.{did_you_mean(str(key), known)} Known: {sorted(known)}",
                )
        return {k: v for k, v in value.items() if k not in _NOTED}

    def error(self, where: str, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: {where} {message}")


def load_model_file(path: str | Path, *, trust_remote_code: bool = False) -> ModelFile:
    """Parse one llm-serve model file (see the module docstring)."""
    text = Path(path).read_text() if Path(path).is_file() else None
    if text is None:
        raise ConfigError(f"--models: {path} is not a file (give the path of a model YAML file).")
    data = yaml.safe_load(text)
    return parse_model_file(data, str(path), trust_remote_code=trust_remote_code)


def parse_model_file(data: Any, path: str, *, trust_remote_code: bool = False) -> ModelFile:
    reader = ModelFileReader(path, trust_remote_code)
    top = reader.section(
        data,
        "",
        {"deployment_config", "model_config", "engine_config", "scaling_config", "enabled"},
    )
    if ("model_config" in top) == ("engine_config" in top):
        raise reader.error("model_config", "or engine_config: give exactly one of them")
    scaling = reader.section(
        top.get("scaling_config"),
        "scaling_config",
        {
            "num_workers",
            "num_gpus_per_worker",
            "num_cpus_per_worker",
            "resources_per_worker",
            "placement_strategy",
        },
    )
    if "model_config" in top:
        spec = _model_config(reader, top["model_config"], scaling)
    else:
        spec = _engine_config(reader, top["engine_config"])
    spec.enabled = bool(top.get("enabled", True))
    spec.deployment_options = deployment_options(
        reader, top.get("deployment_config"), scaling, spec
    )
    return spec


def _model_config(reader: ModelFileReader, value: Any, scaling: dict[str, Any]) -> ModelFile:
    config = reader.section(
        value,
        "model_config",
        {"model_id", "initialization", "generation", "autodeploy", "max_input_words"},
    )
    model_id = _model_id(reader, config, "model_config")
    spec = ModelFile(reader.path, model_id)
    words = config.get("max_input_words")
    if words is not None:
        if isinstance(words, bool) or not isinstance(words, int) or words < 1:
            raise reader.error("model_config.max_input_words", f"{words!r}: give a positive int")
        spec.max_input_words = words
    init = reader.section(
        config.get("initialization"),
        "model_config.initialization",
        {"initializer", "pipeline", "hf_model_id"},
    )
    spec.settings["model"] = init.get("hf_model_id", model_id)
    pipeline = init.get("pipeline", "transformers")
    if pipeline not in ("transformers", "default"):
        raise reader.error(
            "model_config.initialization.pipeline",
            f"{pipeline!r} is not supported; use transformers (the autodeploy runtime serves it)",
        )
    _initializer(reader, init.get("initializer"), scaling, spec)
    generation_section(reader, config.get("generation"), "model_config.generation", spec)
    _our_settings(reader, config.get("autodeploy"), "model_config.autodeploy", spec)
    return spec


def _engine_config(reader: ModelFileReader, value: Any) -> ModelFile:
    config = reader.section(
        value,
        "engine_config",
        {
            "type",
            "model_id",
            "hf_model_id",
            "engine_kwargs",
            "max_total_tokens",
            "generation",
            "autodeploy",
        },
    )
    if "type" in config:  # VLLMEngine, ...: whichever engine the file named, autodeploy runs it
        logger.info(
            "%s: engine_config.type %s is served by autodeploy", reader.path, config["type"]
        )
    spec = ModelFile(reader.path, _model_id(reader, config, "engine_config"))
    spec.settings["model"] = config.get("hf_model_id", spec.model_id)
    if "max_total_tokens" in config:
        spec.settings["max_seq_len"] = config["max_total_tokens"]
    renames = {
        "max_num_seqs": "max_batch_size",
        "max_num_batched_tokens": "max_num_tokens",
        "tensor_parallel_size": "world_size",
        "max_model_len": "max_seq_len",
        "dtype": "dtype",
    }
    kwargs = reader.section(
        config.get("engine_kwargs"),
        "engine_config.engine_kwargs",
        {*renames, "gpu_memory_utilization", "trust_remote_code"},
    )
    for key, value in kwargs.items():
        if key in renames:
            spec.settings[renames[key]] = value
        elif key == "gpu_memory_utilization":
            spec.settings.setdefault("kv_cache_config", {})["free_gpu_memory_fraction"] = value
        else:
            _trust(reader, value, "engine_config.engine_kwargs.trust_remote_code", spec)
    generation_section(reader, config.get("generation"), "engine_config.generation", spec)
    _our_settings(reader, config.get("autodeploy"), "engine_config.autodeploy", spec)
    return spec


def _model_id(reader: ModelFileReader, config: dict[str, Any], where: str) -> str:
    model_id = config.get("model_id")
    if not isinstance(model_id, str) or not model_id:
        raise reader.error(f"{where}.model_id", "is required (the name clients ask for)")
    return model_id


def _initializer(
    reader: ModelFileReader, value: Any, scaling: dict[str, Any], spec: ModelFile
) -> None:
    where = "model_config.initialization.initializer"
    init = reader.section(
        value, where, {"dtype", "torch_compile", "from_pretrained_kwargs", "type"} | {"type"}
    )
    kind = (value or {}).get("type", "SingleDevice")
    workers = int(scaling.get("num_workers", 1))
    gpus = float(
        scaling.get("num_gpus_per_worker", 1 if "num_gpus_per_worker" not in scaling else 0)
    )
    if kind == "SingleDevice":
        spec.settings["world_size"] = 1
    elif kind == "DeviceMap":
        spec.settings["world_size"] = max(1, int(round(workers * gpus)))
    elif kind == "DeepSpeed":
        spec.settings["world_size"] = max(1, workers)
    else:
        raise reader.error(
            f"{where}.type",
            f"{kind!r} is not supported; use SingleDevice, DeviceMap or DeepSpeed (mapped onto "
            "world_size)",
        )
    if "dtype" in init:
        spec.settings["dtype"] = _dtype(reader, init["dtype"], f"{where}.dtype")
    if "torch_compile" in init:
        options = reader.section(
            init["torch_compile"],
            f"{where}.torch_compile",
            {"backend", "mode", "fullgraph", "dynamic", "options"},
        )
        if options.get("backend", "inductor") != "inductor":
            raise reader.error(
                f"{where}.torch_compile.backend", "must be inductor (torch-compile backend)"
            )
        spec.settings["compile_backend"] = "torch-compile"
    kwargs = reader.section(
        init.get("from_pretrained_kwargs"),
        f"{where}.from_pretrained_kwargs",
        {"trust_remote_code", "torch_dtype", "low_cpu_mem_usage", "use_cache"},
    )
    if "torch_dtype" in kwargs:
        spec.settings["dtype"] = _dtype(reader, kwargs["torch_dtype"], f"{where}.torch_dtype")
    if "trust_remote_code" in kwargs:
        _trust(reader, kwargs["trust_remote_code"], f"{where}.from_pretrained_kwargs", spec)


def _dtype(reader: ModelFileReader, value: Any, where: str) -> str:
    if value in ("float16", "bfloat16", "float32", "auto"):
        return str(value)
    raise reader.error(where, f"{value!r} is not supported; use float16, bfloat16 or float32")


def _trust(reader: ModelFileReader, value: Any, where: str, spec: ModelFile) -> None:
    if value is True and not reader.trust_remote_code:
        raise reader.error(
            f"{where}.trust_remote_code",
            "is true, but remote code runs only when the command line also says "
            "--trust-remote-code.",
        )
    spec.settings["trust_remote_code"] = bool(value)


def _our_settings(reader: ModelFileReader, value: Any, where: str, spec: ModelFile) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise reader.error(where, "must be a mapping of autodeploy settings")
    if value.get("trust_remote_code") is True:
        _trust(reader, True, where, spec)
    spec.settings.update(value)
