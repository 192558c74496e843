"""The Hugging Face ``AutoModelForCausalLM`` factory."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.export import Dim

from ..utils.errors import AutoDeployError, ConfigError, UnsupportedModelError
from ..utils.logger import logger
from ..utils.suggest import did_you_mean
from ..utils.unsupported import advice, first_line, module_from_traceback
from .checkpoint import find_checkpoint_files, load_checkpoint, materialize_on_device, random_init
from .factory import ModelFactory, ModelFactoryRegistry
from .hf_attention import ATTN_IMPLEMENTATION, register_hf_attention
from .hf_key_mapping import hf_key_conversions
from .hf_moe import check_moe_support
from .meta_init import parameters_on_meta
from .moe_checkpoint import stack_experts_on_load
from .sources import BUILTIN_PREFIX, resolve_model_dir

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# model_kwargs entries that configure how the model is built rather than the HF config.
_BUILD_OPTIONS = ("attn_implementation",)
_EXAMPLE_BATCH, _EXAMPLE_SEQ = 2, 4  # ≥ 2 each, so export does not specialize the dims


@ModelFactoryRegistry.register("AutoModelForCausalLM")
class AutoModelForCausalLMFactory(ModelFactory):
    """Builds ``transformers.AutoModelForCausalLM`` from a local or cached Hub-style directory.

    ``model_kwargs`` deep-override the HF config (``{"num_hidden_layers": 2}``, nested configs
    as nested dicts); the special key ``attn_implementation`` picks how attention is exported
    (default ``"autodeploy"``: straight to the canonical op; ``"sdpa"``/``"eager"``: HF's code,
    turned canonical by the pattern matchers).
    """

    @functools.cached_property
    def model_dir(self) -> Path:
        return resolve_model_dir(self.model)

    @property
    def is_builtin(self) -> bool:
        return self.model.startswith(BUILTIN_PREFIX)

    @property
    def attn_implementation(self) -> str:
        return str(self.model_kwargs.get("attn_implementation", ATTN_IMPLEMENTATION))

    @functools.cached_property
    def model_config(self) -> Any:
        from transformers import AutoConfig

        base = AutoConfig.from_pretrained(
            str(self.model_dir), trust_remote_code=self.trust_remote_code
        )
        overrides = {k: v for k, v in self.model_kwargs.items() if k not in _BUILD_OPTIONS}
        if not overrides:
            return base
        merged = _deep_override(base.to_dict(), overrides, type(base)(), "model_kwargs")
        config = type(base).from_dict(merged)
        logger.info("model config overrides: %s", overrides)
        return config

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype != "auto":
            return _DTYPES[self.dtype]
        stored = getattr(self.model_config, "dtype", None) or getattr(
            self.model_config, "torch_dtype", None
        )
        if isinstance(stored, str):
            stored = _DTYPES.get(stored)
        return stored if isinstance(stored, torch.dtype) else torch.float32

    def build_model(self, device: str | torch.device = "meta") -> nn.Module:
        from transformers import AutoModelForCausalLM

        register_hf_attention()
        config = self.model_config
        config.use_cache = False  # the KV cache is ours; HF must not build its own
        kwargs = dict(
            attn_implementation=self.attn_implementation,
            dtype=self.torch_dtype,
            trust_remote_code=self.trust_remote_code,
        )
        try:
            if str(device) == "meta":
                with parameters_on_meta():
                    model = AutoModelForCausalLM.from_config(config, **kwargs)
            else:
                with torch.device(device):
                    model = AutoModelForCausalLM.from_config(config, **kwargs)
        except AutoDeployError:
            raise
        except Exception as exc:
            raise _build_failure(config, exc) from exc
        check_moe_support(model)
        self._key_renamer, self._expert_converters = hf_key_conversions(model)
        return model.eval()

    def get_example_inputs(self) -> dict[str, torch.Tensor]:
        vocab = int(self.vocab_size or 2)
        input_ids = torch.randint(0, vocab, (_EXAMPLE_BATCH, _EXAMPLE_SEQ), dtype=torch.long)
        position_ids = torch.arange(_EXAMPLE_SEQ, dtype=torch.long).repeat(_EXAMPLE_BATCH, 1)
        return {"input_ids": input_ids, "position_ids": position_ids}

    def get_dynamic_shapes(self) -> dict[str, Any]:
        dims = {0: Dim.DYNAMIC, 1: Dim.DYNAMIC}
        return {"input_ids": dims, "position_ids": dict(dims)}

    def load_or_random_init(self, model: nn.Module, device: str | torch.device) -> None:
        device = torch.device(device)
        materialize_on_device(model, device, self.torch_dtype)
        files = [] if self.skip_loading_weights else find_checkpoint_files(self.model_dir)
        if files:
            rename = getattr(self, "_key_renamer", None)
            converters = getattr(self, "_expert_converters", [])
            with stack_experts_on_load(model, converters, rename) as stacker:
                skip = stacker.held_elsewhere if stacker is not None else None
                load_checkpoint(model, files, rename, self.check_weights, skip)
            return
        if not self.skip_loading_weights and not self.is_builtin:
            raise ConfigError(
                f"No checkpoint files (*.safetensors or pytorch_model.bin) in "
                f"{str(self.model_dir)!r}. Set `skip_loading_weights: true` to run with random "
                "weights."
            )
        logger.info("random weights (seed %d): no checkpoint is loaded", self.seed)
        random_init(
            model, self.seed, std=float(getattr(self.model_config, "initializer_range", 0.02))
        )

    def init_tokenizer(self) -> Any | None:
        from transformers import AutoTokenizer

        source = self.tokenizer or str(self.model_dir)
        try:
            return AutoTokenizer.from_pretrained(
                source, trust_remote_code=self.trust_remote_code, **self.tokenizer_kwargs
            )
        except (OSError, ValueError) as exc:
            if self.tokenizer:  # asked for explicitly: that must work
                raise ConfigError(f"Cannot load tokenizer {self.tokenizer!r}: {exc}") from exc
            logger.warning("no tokenizer in %s (%s); prompts must be token ids", source, exc)
            return None

    def get_sharding_config(self) -> dict[str, Any]:
        plan = getattr(self.model_config, "base_model_tp_plan", None)
        return {"source": "huggingface", "tp_plan": dict(plan or {})}


def _deep_override(base: dict, overrides: dict, defaults: Any, path: str) -> dict:
    """Merge ``overrides`` into ``base``; unknown keys are errors (typos must not pass)."""
    merged = dict(base)
    for key, value in overrides.items():
        where = f"{path}.{key}"
        known = key in base or hasattr(defaults, key)
        if not known:
            raise ConfigError(
                f"{where}: the model config has no field {key!r}.{did_you_mean(key, list(base))}"
            )
        current = base.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            nested_defaults = getattr(defaults, key, None)
            merged[key] = _deep_override(current, value, nested_defaults, where)
        else:
            merged[key] = value
    return merged


def _build_failure(config: Any, exc: Exception) -> AutoDeployError:
    """Building the model failed: name the module whose constructor failed, if one did."""
    arch = ", ".join(getattr(config, "architectures", None) or [type(config).__name__])
    module = module_from_traceback(exc)
    what = f"{type(exc).__name__}: {first_line(exc)}"
    if module is None:
        return ConfigError(
            f"Hugging Face could not build {arch} from its config: {what}. Check the config "
            "(and `model_kwargs`) against the model's documentation."
        )
    hint = (
        advice(module, exc)
        if module.kind != "other"
        else "Check the config (and `model_kwargs`) for this module, or file an issue with the "
        "model name."
    )
    return UnsupportedModelError(f"Building {arch} failed in {module.describe()}: {what}. {hint}")
