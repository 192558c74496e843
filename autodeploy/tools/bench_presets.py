"""Model shape presets for the benchmark and the accuracy tests (``autodeploy/models/presets``).

A preset is a YAML file ``<name>.yaml`` with a ``description`` and a Hugging Face ``config``
(the content of a ``config.json``). No weights: every system initializes them randomly.

- ``preset_names()`` / ``load_preset(name)``;
- ``write_model_dir(preset, directory)``: a Hugging Face style directory (``config.json`` only)
  that both ``transformers`` and ``autodeploy.LLM(model=directory, skip_loading_weights=True)``
  read;
- ``build_hf_model(model_dir, dtype, device)``: the ``transformers`` model with the random
  weights autodeploy gives the same config (parameters materialized directly on ``device``, then
  ``random_init`` with the factory's seed, in the same parameter order), so the baselines and
  autodeploy run the same weights;
- ``weight_bytes_per_step(config, dtype)``: what one decode step must read from memory (for an
  MoE model at batch 1: the top-k experts of each layer, not all of them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from ..utils.errors import ConfigError
from ..utils.suggest import did_you_mean

PRESET_DIR = Path(__file__).resolve().parent.parent / "models" / "presets"
# The seed of ModelFactory's random init (its default); the baselines use the same one.
WEIGHT_SEED = 0
# Config keys that hold the number of experts each token is routed to.
_TOP_K_KEYS = ("num_experts_per_tok", "moe_k", "moe_topk")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    config: dict[str, Any]

    @property
    def vocab_size(self) -> int:
        return int(self.config["vocab_size"])


def preset_names() -> list[str]:
    return sorted(path.stem for path in PRESET_DIR.glob("*.yaml"))


def load_preset(name: str) -> Preset:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        known = preset_names()
        raise ConfigError(
            f"Unknown preset {name!r}.{did_you_mean(name, known)} Presets (in {PRESET_DIR}): "
            f"{', '.join(known)}."
        )
    data = yaml.safe_load(path.read_text()) or {}
    config = data.get("config")
    if not isinstance(config, dict) or "vocab_size" not in config:
        raise ConfigError(
            f"Preset file {str(path)!r} needs a `config:` mapping (a Hugging Face config.json "
            "with at least vocab_size)."
        )
    return Preset(name=name, description=str(data.get("description", "")), config=config)


def write_model_dir(preset: Preset, directory: str | Path) -> Path:
    """Write ``config.json`` for ``preset`` into ``directory`` (created) and return it."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(preset.config, indent=2))
    return path


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"dtype {name!r}: use one of {', '.join(DTYPES)}.")
    return DTYPES[name]


def build_hf_model(
    model_dir: str | Path,
    dtype: torch.dtype,
    device: str | torch.device,
    attn_implementation: str = "sdpa",
) -> Any:
    """The ``transformers`` model of ``model_dir`` with autodeploy's random weights, in eval mode.

    Parameters are created on meta and materialized on ``device`` (no CPU copy of the weights,
    no Hugging Face init pass), then filled by the same ``random_init`` the model factory uses.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..models.checkpoint import materialize_on_device, random_init
    from ..models.meta_init import parameters_on_meta

    config = AutoConfig.from_pretrained(str(model_dir))
    with parameters_on_meta():
        model = AutoModelForCausalLM.from_config(
            config, dtype=dtype, attn_implementation=attn_implementation
        )
    materialize_on_device(model, torch.device(device), dtype)
    random_init(model, WEIGHT_SEED, std=float(getattr(config, "initializer_range", 0.02)))
    return model.eval()


def weight_bytes_per_step(config: dict[str, Any], dtype: torch.dtype) -> int:
    """Bytes of weights one decode step reads: every parameter except the input embedding table,
    with the output head counted even when it is tied to that table (it is read as a GEMM).
    Stacked MoE expert weights count for the top-k experts a token is routed to (batch 1)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..models.hf_moe import is_pluggable_experts
    from ..models.meta_init import parameters_on_meta

    hf_config = AutoConfig.for_model(**config)
    with parameters_on_meta():
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    unique = {id(p): p for p in model.parameters()}
    total = sum(p.numel() * p.element_size() for key, p in unique.items() if key != id(embedding))
    top_k = next((config[k] for k in _TOP_K_KEYS if config.get(k)), None)
    for module in model.modules():
        if top_k and is_pluggable_experts(module):
            for param in module.parameters(recurse=False):  # [E, ...]: only top_k are read
                unread = param.shape[0] - min(int(top_k), param.shape[0])
                total -= unread * param[0].numel() * param.element_size()
    if head is not None and head.weight is embedding:
        total += embedding.numel() * embedding.element_size()
    return total
