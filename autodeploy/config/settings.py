"""LlmArgs: every user-facing setting of a build, resolved from all configuration layers.

``LlmArgs(**kwargs)`` applies every layer (see ``layers.py``): default.yaml, registry layers,
``yaml_extra`` files, ``AUTODEPLOY_*`` environment variables, then the keyword arguments.
``LlmArgs.from_cli(overrides, **kwargs)`` adds the command line on top. ``args.provenance()``
says which layer set each value. ``LlmArgs.model_validate(data)`` (and LlmArgs as a field of
another model) goes through the same ``__init__``: ``data`` is the keyword-argument layer.

Keys written for TensorRT-LLM AutoDeploy are translated in every layer before the merge
(``upstream.py``: mapped onto ours, or reported as not used; an error with ``strict``);
``args.upstream_notes()`` lists them. ``LlmArgs.from_cli(cli, experiment_layers)`` also takes
the ``args`` sections of experiment files (``experiment.py``).

Derived values: ``max_num_tokens=None`` becomes ``max(max_seq_len, 2048)`` (provenance
"derived"); the shortcuts ``attn_backend``/``compile_backend`` are synced with their transforms
(see ``shortcuts.py``).
"""

from __future__ import annotations

import contextvars
import importlib
import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ..utils.devices import check_device_available
from ..utils.errors import ConfigError
from ..utils.suggest import did_you_mean
from .layers import Layer, Provenance, build_layers, iter_leaves, merge_layers, normalize_path_list
from .model_registry import register_registry_layers
from .shortcuts import apply_shortcuts, fill_from_defaults
from .source_checks import check_tokenizer_source, warn_remote_code
from .upstream import UpstreamNote, format_upstream_notes, translate_layers
from .validation import (
    annotate_transform_error,
    check_top_level_keys,
    describe_validation_error,
)

DEFAULT_MAX_NUM_TOKENS = 2048
_CLI_KEY = "_cli_overrides"
_EXPERIMENT_KEY = "_experiment_layers"
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
# The provenance of the LlmArgs being built; set by __init__ around pydantic's validation.
_BUILDING: contextvars.ContextVar[Provenance | None] = contextvars.ContextVar(
    "autodeploy_llm_args_provenance", default=None
)

DtypeName = Literal["auto", "float32", "float16", "bfloat16"]
KvDtypeName = Literal["auto", "float16", "bfloat16", "float32"]


class KvCacheConfig(BaseModel):
    """The paged KV cache: page size and how much memory the pool takes."""

    model_config = ConfigDict(extra="forbid")

    tokens_per_block: int = Field(
        default=32, ge=1, description="Tokens per cache page (the page size of the paged cache)."
    )
    free_gpu_memory_fraction: float = Field(
        default=0.9,
        gt=0.0,
        le=1.0,
        description="Fraction of the GPU memory still free after the build that the cache pool "
        "may take (0 < fraction <= 1).",
    )
    max_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Fixed pool size in tokens. Used when set, and on CPU (where free memory is "
        "not measured); None sizes the pool from free_gpu_memory_fraction.",
    )
    dtype: KvDtypeName = Field(
        default="auto", description="Cache element type; 'auto' uses the model's dtype."
    )
    mamba_ssm_cache_dtype: KvDtypeName = Field(
        default="float32",
        description="Element type of the Mamba SSM state cache ([slots, heads, head_dim, "
        "state]); 'auto' uses the model's dtype. float32 keeps the recurrence exact over long "
        "sequences.",
    )


register_registry_layers()  # the registry layers sit between default.yaml and yaml_extra


class LlmArgs(BaseSettings):
    """All settings of one autodeploy build and run (see the module docstring for the layers)."""

    model_config = SettingsConfigDict(
        extra="forbid", env_prefix="AUTODEPLOY_", env_nested_delimiter="__"
    )

    model: str = Field(
        default="builtin:tiny-llama",
        description="Hugging Face model id, local checkpoint directory, or 'builtin:<name>'.",
    )
    model_factory: str = Field(
        default="AutoModelForCausalLM",
        description="Registered ModelFactory that builds the model and loads its weights.",
    )
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of the Hugging Face model config, merged key by key "
        "(e.g. {num_hidden_layers: 2}).",
    )
    tokenizer: str | None = Field(
        default=None, description="Tokenizer id or directory; None uses the model's."
    )
    tokenizer_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra keyword arguments for loading the tokenizer."
    )
    skip_loading_weights: bool = Field(
        default=False, description="Initialize weights randomly instead of loading a checkpoint."
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Allow running Python code shipped with a Hugging Face model. Off by "
        "default: only turn it on for sources you trust.",
    )
    check_weights: bool = Field(
        default=True,
        description="Reject checkpoint tensors holding NaN or Inf when they load (one cheap "
        "reduction per tensor); false loads them unchecked.",
    )
    dtype: DtypeName = Field(
        default="auto", description="Model dtype; 'auto' takes it from the model config."
    )
    device: str = Field(
        default="auto",
        description="'auto' (cuda if available, else cpu), 'cpu', 'cuda' or 'cuda:N'.",
    )
    world_size: int = Field(default=1, ge=1, description="Number of ranks to shard the model over.")
    max_seq_len: int = Field(
        default=2048, ge=1, description="Longest sequence (prompt + output) in tokens."
    )
    max_batch_size: int = Field(default=8, ge=1, description="Most sequences in one step.")
    max_num_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Most tokens in one step (all sequences together); at least max_seq_len "
        f"unless enable_chunked_prefill. None means max(max_seq_len, {DEFAULT_MAX_NUM_TOKENS}).",
    )
    enable_chunked_prefill: bool = Field(
        default=False,
        description="Allow a step budget (max_num_tokens) smaller than max_seq_len: a longer "
        "prompt is prefilled over several steps. Off, the budget must hold a longest prompt; "
        "the scheduler still splits a prompt when several share one step's budget.",
    )
    max_waiting_requests: int | None = Field(
        default=None,
        ge=1,
        description="Serving: most requests waiting for admission; the server answers 503 with "
        "Retry-After beyond it. None: unbounded.",
    )
    attn_backend: str | None = Field(
        default=None,
        description="Shortcut for transforms.insert_cached_attention.backend; when set "
        "explicitly it overrides the transform config, otherwise it shows the transform's value.",
    )
    compile_backend: str | None = Field(
        default=None,
        description="Shortcut for transforms.compile_model.backend (same rule as attn_backend).",
    )
    kv_cache_config: KvCacheConfig = Field(
        default_factory=KvCacheConfig, description="Paged KV cache settings."
    )
    cuda_graph_batch_sizes: list[int] | None = Field(
        default=None,
        description="Decode batch sizes to capture CUDA graphs for (sorted, duplicates removed); "
        "None lets the compile backend choose.",
    )
    transforms: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="The pipeline: transform name -> its config ({stage: ..., enabled: ..., "
        "...}). Validated against the transform registry.",
    )
    yaml_extra: list[str] = Field(
        default_factory=list,
        description="YAML files merged over default.yaml, in order (a later file wins).",
    )
    use_registry: bool = Field(
        default=False,
        description="Apply the model registry's settings for `model` (found by name, or by its "
        "config's architecture): its config files go between default.yaml and yaml_extra, so "
        "your own files and arguments still win. See autodeploy/config/model_registry.",
    )
    strict_registry: bool = Field(
        default=False,
        description="With use_registry: a model the registry does not know, a disabled entry or "
        "a (world_size, max_seq_len, max_batch_size) it does not list is an error, not a warning.",
    )
    registry_config_id: str | None = Field(
        default=None,
        description="With use_registry: the variant (config_id) of the model's registry entry; "
        "None takes the 'default' one.",
    )
    strict: bool = Field(
        default=False,
        description="Turn build problems (skipped or failed transforms, fallbacks) into errors.",
    )

    _provenance: Provenance | None = PrivateAttr(default=None)
    _layer_sources: list[str] = PrivateAttr(default_factory=list)
    _upstream_notes: list[UpstreamNote] = PrivateAttr(default_factory=list)

    def __init__(self, **kwargs: Any) -> None:
        cli = kwargs.pop(_CLI_KEY, None)
        experiment = kwargs.pop(_EXPERIMENT_KEY, ())
        layers = build_layers(type(self), kwargs, cli, experiment=experiment)
        layers, notes = translate_layers(layers, type(self).model_fields)
        merged, provenance = merge_layers(layers)
        check_top_level_keys(merged, provenance, type(self))
        token = _BUILDING.set(provenance)
        try:
            super().__init__(**merged)
        except ValidationError as exc:
            raise describe_validation_error(exc, provenance, type(self)) from None
        finally:
            _BUILDING.reset(token)
        self._provenance = provenance
        self._layer_sources = [layer.source for layer in layers]
        self._upstream_notes = notes
        unused = [note for note in notes if not note.used]
        if self.strict and unused:
            raise ConfigError(
                "strict=True: settings written for TensorRT-LLM AutoDeploy that autodeploy does "
                "not use (remove them, or turn strict off to have them reported only):\n  "
                + "\n  ".join(format_upstream_notes(unused))
            )

    @classmethod
    def from_cli(
        cls,
        cli_overrides: dict[str, Any] | None = None,
        experiment_layers: list[Layer] | None = None,
        **kwargs: Any,
    ) -> LlmArgs:
        """Like ``LlmArgs(**kwargs)`` with the command-line overrides (``parse_cli(...)["args"]``)
        as the highest layer, recorded as "cli". ``experiment_layers``: the ``args`` sections
        of experiment files (``experiment.py``), just above the ``yaml_extra`` files."""
        extra = {_EXPERIMENT_KEY: list(experiment_layers or [])}
        return cls(**kwargs, **{_CLI_KEY: dict(cli_overrides or {})}, **extra)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # __init__ has already merged every layer (environment included, with provenance).
        return (init_settings,)

    # ------------------------------------------------------------------ validation

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError("device must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return value

    @field_validator("dtype", mode="before")
    @classmethod
    def _torch_dtype_as_name(cls, value: Any) -> Any:
        text = str(value)  # accept torch.bfloat16 as "bfloat16" without importing torch here
        if type(value).__name__ == "dtype" and text.startswith("torch."):
            return text[len("torch.") :]
        return value

    @field_validator("yaml_extra", mode="before")
    @classmethod
    def _paths_as_list(cls, value: Any) -> list[str]:
        return normalize_path_list(value, "yaml_extra")

    @field_validator("cuda_graph_batch_sizes", mode="before")
    @classmethod
    def _sizes_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("cuda_graph_batch_sizes")
    @classmethod
    def _check_sizes(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return None
        if any(size < 1 for size in value):
            raise ValueError("every CUDA graph batch size must be >= 1")
        return sorted(set(value))

    @model_validator(mode="after")
    def _resolve(self) -> LlmArgs:
        provenance = _BUILDING.get() or Provenance()  # set by __init__, which always runs
        self._check_model_factory(provenance)
        check_tokenizer_source(self.tokenizer, f"tokenizer{provenance.describe(('tokenizer',))}")
        if self.trust_remote_code:
            warn_remote_code(self.model, provenance.describe(("trust_remote_code",)))
        self._resolve_max_num_tokens(provenance)
        self._resolve_transforms(provenance)
        return self

    def _check_model_factory(self, provenance: Provenance) -> None:
        try:
            module = importlib.import_module("autodeploy.models.factory")
        except ModuleNotFoundError as exc:
            if exc.name in ("autodeploy.models.factory", "autodeploy.models"):
                return  # the factory package is not part of this build: nothing to check against
            raise ConfigError(
                f"Cannot check model_factory={self.model_factory!r}: importing "
                f"autodeploy.models.factory failed ({exc}). Install the missing package."
            ) from exc
        registry = getattr(module, "ModelFactoryRegistry", None)
        if registry is None or registry.has(self.model_factory):
            return
        source = provenance.describe(("model_factory",))
        raise ConfigError(
            f"model_factory: unknown model factory {self.model_factory!r}{source}."
            f"{did_you_mean(self.model_factory, registry.names())} "
            f"Registered: {', '.join(registry.names()) or '(none)'}."
        )

    def _resolve_max_num_tokens(self, provenance: Provenance) -> None:
        if self.max_num_tokens is None:
            self.max_num_tokens = max(self.max_seq_len, DEFAULT_MAX_NUM_TOKENS)
            provenance.set(("max_num_tokens",), "derived")
        elif self.max_num_tokens < self.max_seq_len and not self.enable_chunked_prefill:
            where = provenance.describe(("max_num_tokens",))
            raise ConfigError(
                f"max_num_tokens={self.max_num_tokens}{where} is smaller than max_seq_len="
                f"{self.max_seq_len}{provenance.describe(('max_seq_len',))}: a prompt of the "
                f"longest allowed length must fit into one step. Raise max_num_tokens to at "
                f"least {self.max_seq_len}, lower max_seq_len, leave max_num_tokens unset, or set "
                "enable_chunked_prefill: true (a long prompt is then prefilled over several "
                "steps)."
            )

    def _resolve_transforms(self, provenance: Provenance) -> None:
        from ..transforms.registry import validate_pipeline  # lazy: transforms import config

        pending = apply_shortcuts(self, provenance)
        try:  # settings, declared stages and the facts of the whole pipeline, before any run
            parsed = dict(validate_pipeline(self.transforms))
        except ConfigError as exc:
            raise annotate_transform_error(exc, provenance) from None
        for name, config in parsed.items():  # a layer may leave out a transform's declared stage
            if "stage" not in self.transforms[name]:
                self.transforms[name]["stage"] = config.stage.value
                provenance.set(("transforms", name, "stage"), "default")
        fill_from_defaults(pending, self, parsed, provenance)

    # ------------------------------------------------------------------ queries

    def resolved_device(self) -> str:
        """The device to use: 'auto' becomes 'cuda' when CUDA is available, else 'cpu'.

        An explicit CUDA device on a machine without one is a ``ConfigError`` naming where the
        setting came from."""
        if self.device != "auto":
            where = f"device{(self._provenance or Provenance()).describe(('device',))}"
            check_device_available(self.device, where)
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration as plain dicts, lists and scalars (JSON/YAML-safe)."""
        return self.model_dump(mode="json")

    def provenance(self) -> dict[str, str]:
        """Dotted key path -> where its value came from, for every leaf of ``to_dict()``.

        Sources: "default" (field or transform-config default), "default.yaml",
        "registry:<...>", "yaml_extra:<path>", "env:AUTODEPLOY_<...>", "kwargs", "cli", and
        "derived" (computed from other values, e.g. max_num_tokens).
        """
        recorded = self._provenance or Provenance()
        return {
            ".".join(str(p) for p in path): recorded.source(path) or "default"
            for path, _ in iter_leaves(self.to_dict())
        }

    def upstream_notes(self) -> list[UpstreamNote]:
        """Upstream (TensorRT-LLM AutoDeploy) keys met in the layers: mapped or not used."""
        return list(self._upstream_notes)

    def layer_sources(self) -> list[str]:
        """The layers that were applied, lowest first."""
        return list(self._layer_sources)
