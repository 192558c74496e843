"""The ``generation`` and ``deployment_config`` sections of llm-serve model files.

Their mapping is in the table of ``llm_serve.py``; this module holds the two section readers so
the file reader stays small.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..utils.suggest import did_you_mean
from .prompt_format import PromptFormat

if TYPE_CHECKING:
    from .llm_serve import ModelFile, ModelFileReader

_GENERATE_KWARGS = {  # llm-serve / HF name -> SamplingParams field
    "max_new_tokens": "max_tokens",
    "max_tokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "repetition_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "min_new_tokens": "min_tokens",
    "seed": "seed",
    "ignore_eos": "ignore_eos",
    "do_sample": None,  # handled: false -> temperature 0
    "return_token_type_ids": None,  # a tokenizer call option of the old pipelines: no effect
}
_AUTOSCALING_RENAMES = {"target_num_ongoing_requests_per_replica": "target_ongoing_requests"}
_AUTOSCALING_KEYS = {
    "min_replicas",
    "initial_replicas",
    "max_replicas",
    "target_ongoing_requests",
    "metrics_interval_s",
    "look_back_period_s",
    "smoothing_factor",
    "upscale_smoothing_factor",
    "downscale_smoothing_factor",
    "upscaling_factor",
    "downscaling_factor",
    "downscale_delay_s",
    "upscale_delay_s",
}


def generation_section(reader: ModelFileReader, value: Any, where: str, spec: ModelFile) -> None:
    generation = reader.section(
        value,
        where,
        {
            "prompt_format",
            "generate_kwargs",
            "stopping_sequences",
            "max_batch_size",
            "max_total_tokens",
            "max_batch_prefill_tokens",
            "max_batch_total_tokens",
        },
    )
    renames = {
        "max_batch_size": ("max_batch_size",),
        "max_total_tokens": ("max_seq_len",),
        "max_batch_prefill_tokens": ("max_num_tokens",),
        "max_batch_total_tokens": ("kv_cache_config", "max_tokens"),
    }
    for key, target in renames.items():
        if key in generation:
            place = spec.settings
            for part in target[:-1]:
                place = place.setdefault(part, {})
            place[target[-1]] = generation[key]
    if generation.get("prompt_format") is not None:
        spec.prompt_format = PromptFormat.parse(
            generation["prompt_format"], f"{where}.prompt_format"
        )
    kwargs = reader.section(
        generation.get("generate_kwargs"), f"{where}.generate_kwargs", set(_GENERATE_KWARGS)
    )
    for key, value in kwargs.items():
        target = _GENERATE_KWARGS[key]
        if target is not None:
            spec.sampling_defaults[target] = value
    if kwargs.get("do_sample") is False:
        spec.sampling_defaults["temperature"] = 0.0
    if spec.sampling_defaults.get("top_k") == 0:
        spec.sampling_defaults["top_k"] = None
    _stops(reader, generation.get("stopping_sequences"), f"{where}.stopping_sequences", spec)


def _stops(reader: ModelFileReader, value: Any, where: str, spec: ModelFile) -> None:
    strings: list[str] = []
    token_ids: list[int] = []
    for index, item in enumerate(value or []):
        if isinstance(item, str) and item.strip().isdigit():
            token_ids.append(int(item))
        elif isinstance(item, str) and item:
            strings.append(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            token_ids.append(item)
        elif isinstance(item, list) and item:
            ids = [int(x) if isinstance(x, str) and x.isdigit() else x for x in item]
            if not all(isinstance(x, int) for x in ids):
                raise reader.error(f"{where}[{index}]", "must list token ids (ints)")
            if len(ids) == 1:
                token_ids.append(ids[0])
            else:
                spec.stop_token_sequences.append(ids)
        else:
            raise reader.error(
                f"{where}[{index}]", f"{item!r}: give a string, a token id or a list of ids"
            )
    if strings:
        spec.sampling_defaults["stop"] = strings
    if token_ids:
        spec.sampling_defaults["stop_token_ids"] = token_ids


def deployment_options(
    reader: ModelFileReader, value: Any, scaling: dict[str, Any], spec: ModelFile
) -> dict[str, Any]:
    config = reader.section(
        value,
        "deployment_config",
        {"autoscaling_config", "max_concurrent_queries", "ray_actor_options"},
    )
    options: dict[str, Any] = {"name": spec.deployment_name}
    if "autoscaling_config" in config:
        autoscaling = {
            _AUTOSCALING_RENAMES.get(k, k): v
            for k, v in (config["autoscaling_config"] or {}).items()
        }
        unknown = sorted(set(autoscaling) - _AUTOSCALING_KEYS)
        if unknown:
            raise reader.error(
                "deployment_config.autoscaling_config",
                f"has unknown keys {unknown}{did_you_mean(unknown[0], _AUTOSCALING_KEYS)}",
            )
        options["autoscaling_config"] = autoscaling
    if "max_concurrent_queries" in config:
        options["max_ongoing_requests"] = int(config["max_concurrent_queries"])
    actor = dict(config.get("ray_actor_options") or {})
    world_size = int(spec.settings.get("world_size", 1))
    cpus = float(scaling.get("num_cpus_per_worker", 1)) * int(scaling.get("num_workers", 1))
    gpus_per_worker = float(scaling.get("num_gpus_per_worker", 1))  # llm-serve's default
    gpus = max(
        gpus_per_worker * int(scaling.get("num_workers", 1)), float(world_size > 1) * world_size
    )
    resources = dict(scaling.get("resources_per_worker") or {})
    actor.setdefault("num_cpus", cpus)
    if gpus:
        actor.setdefault("num_gpus", gpus)
    if resources:
        actor.setdefault("resources", {}).update(resources)
    options["ray_actor_options"] = actor
    if world_size > 1:  # all ranks of a replica on one node, with world_size GPUs
        bundle = {"CPU": actor["num_cpus"], "GPU": float(world_size), **resources}
        options["placement_group_bundles"] = [bundle]
        options["placement_group_strategy"] = scaling.get("placement_strategy", "STRICT_PACK")
    return options
