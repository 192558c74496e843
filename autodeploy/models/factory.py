"""ModelFactory: how a model is built (on meta), exported, loaded and tokenized."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn as nn

from ..utils.registry import Registry


class ModelFactory(ABC):
    """Builds one model. The forward contract of what it builds:

    ``model(input_ids=[b, s] long, position_ids=[b, s] long) -> logits [b, s, vocab]``
    (as the first output). Parameter names must equal the checkpoint's keys.
    """

    def __init__(
        self,
        model: str,
        *,
        model_kwargs: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        tokenizer_kwargs: dict[str, Any] | None = None,
        skip_loading_weights: bool = False,
        dtype: str = "auto",
        max_seq_len: int = 2048,
        trust_remote_code: bool = False,
        seed: int = 0,
        check_weights: bool = True,
    ):
        self.model = model
        self.model_kwargs = dict(model_kwargs or {})
        self.tokenizer = tokenizer
        self.tokenizer_kwargs = dict(tokenizer_kwargs or {})
        self.skip_loading_weights = skip_loading_weights
        self.dtype = dtype
        self.max_seq_len = max_seq_len
        self.trust_remote_code = trust_remote_code
        self.seed = seed
        self.check_weights = check_weights  # reject NaN/Inf checkpoint tensors at load

    @abstractmethod
    def build_model(self, device: str | torch.device = "meta") -> nn.Module:
        """Build the model; parameters on ``device`` (meta: no memory), buffers real."""

    @abstractmethod
    def load_or_random_init(self, model: nn.Module, device: str | torch.device) -> None:
        """Materialize parameters on ``device``: from the checkpoint through
        ``model.load_state_dict`` (so load hooks fire), or random when skipping weights."""

    @abstractmethod
    def get_example_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword inputs for export (batch ≥ 2 and seq ≥ 2, so export keeps dims dynamic)."""

    @abstractmethod
    def get_dynamic_shapes(self) -> dict[str, Any]:
        """``torch.export`` dynamic-shape spec matching ``get_example_inputs``."""

    def init_tokenizer(self) -> Any | None:
        """The tokenizer, or ``None`` if the model has none."""
        return None

    @property
    def model_config(self) -> Any | None:
        """The architecture config (a ``transformers.PretrainedConfig`` for HF models)."""
        return None

    @property
    def vocab_size(self) -> int | None:
        return getattr(self.model_config, "vocab_size", None)

    @property
    def torch_dtype(self) -> torch.dtype:
        """The dtype the model runs in after resolving ``"auto"``."""
        return torch.float32

    def get_sharding_config(self) -> dict[str, Any]:
        """Sharding hints from the model (e.g. HF ``base_model_tp_plan``)."""
        return {}

    def describe(self) -> str:
        return f"{type(self).__name__}({self.model!r})"


ModelFactoryRegistry: Registry[type[ModelFactory]] = Registry(
    "model factory", lookup_hint="Set `model_factory` to one of the known names"
)


def create_factory(args: Any) -> ModelFactory:
    """The factory an ``LlmArgs`` asks for (``model_factory``), configured from its fields."""
    factory_cls = ModelFactoryRegistry.get(args.model_factory)
    return factory_cls(
        args.model,
        model_kwargs=args.model_kwargs,
        tokenizer=args.tokenizer,
        tokenizer_kwargs=args.tokenizer_kwargs,
        skip_loading_weights=args.skip_loading_weights,
        dtype=args.dtype,
        max_seq_len=args.max_seq_len,
        trust_remote_code=args.trust_remote_code,
        check_weights=getattr(args, "check_weights", True),
    )
