"""The systems the benchmark compares, behind one small interface.

- ``hf-eager``: ``transformers`` ``generate`` as it comes (dynamic cache, sdpa attention);
- ``hf-static-compile``: ``generate`` with a ``StaticCache`` that lives as long as the batch size
  (``reset()`` before every call, so its addresses never change), which makes ``transformers``
  compile the decode step itself with its default ``CompileConfig`` (``torch.compile``,
  ``mode="reduce-overhead"``, i.e. CUDA graphs; prefill stays eager). CUDA only;
- ``ours:<attn>+<compile>``: ``autodeploy.LLM`` with that attention and compile backend,
  random weights initialized on the device (``skip_loading_weights``), the paged KV pool sized
  for the largest batch, CUDA graphs for exactly the benchmarked batch sizes.

Every system generates greedily, exactly ``num_tokens`` new tokens per row (end-of-sequence
ignored), and returns the new tokens of every row.
"""

from __future__ import annotations

import gc
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..utils.errors import ConfigError
from ..utils.suggest import did_you_mean
from .bench_presets import build_hf_model

HF_SYSTEMS = ("hf-eager", "hf-static-compile")
OURS = "ours"
CUDA_GRAPH_BACKENDS = ("torch-cudagraph", "torch-opt")
DEFAULT_OURS = {"cuda": ("triton", "torch-cudagraph"), "cpu": ("sdpa", "torch-direct")}


@dataclass(frozen=True)
class SystemSpec:
    kind: str  # "hf-eager", "hf-static-compile" or "ours"
    attn_backend: str | None = None
    compile_backend: str | None = None

    @property
    def name(self) -> str:
        if self.kind != OURS:
            return self.kind
        return f"{OURS}:{self.attn_backend}+{self.compile_backend}"


def parse_systems(text: str, device_type: str) -> list[SystemSpec]:
    """``"hf-eager,ours:triton+torch-cudagraph"`` -> specs; ``ours`` alone is the device's
    default (CUDA: triton+torch-cudagraph, CPU: sdpa+torch-direct)."""
    from ..compile import CompileBackendRegistry
    from ..custom_ops.attention.descriptor import AttentionRegistry

    specs: list[SystemSpec] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item in HF_SYSTEMS:
            if item == "hf-static-compile" and device_type != "cuda":
                raise ConfigError(
                    "--systems: hf-static-compile needs CUDA (transformers compiles the static-"
                    "cache decode step with CUDA graphs); drop it on CPU."
                )
            specs.append(SystemSpec(item))
            continue
        if item == OURS:
            attn, compile_backend = DEFAULT_OURS.get(device_type, DEFAULT_OURS["cpu"])
            specs.append(SystemSpec(OURS, attn, compile_backend))
            continue
        head, _, backends = item.partition(":")
        attn, plus, compile_backend = backends.partition("+")
        if head != OURS or not plus:
            choices = [*HF_SYSTEMS, OURS, "ours:<attn>+<compile>"]
            raise ConfigError(
                f"--systems: unknown system {item!r}.{did_you_mean(item, choices)} Use "
                f"{', '.join(HF_SYSTEMS)}, ours, or ours:<attn_backend>+<compile_backend> "
                "(e.g. ours:triton+torch-cudagraph)."
            )
        for what, name, registry in (
            ("attention backend", attn, AttentionRegistry),
            ("compile backend", compile_backend, CompileBackendRegistry),
        ):
            if not registry.has(name):
                raise ConfigError(
                    f"--systems {item!r}: unknown {what} {name!r}."
                    f"{did_you_mean(name, registry.names())} Known: "
                    f"{', '.join(registry.names())}."
                )
        specs.append(SystemSpec(OURS, attn, compile_backend))
    if not specs:
        raise ConfigError("--systems: name at least one system.")
    names = [spec.name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"--systems: {', '.join(duplicates)} listed twice.")
    return specs


@dataclass
class RunShape:
    """What every system of one model is sized for."""

    model_dir: Path
    dtype: torch.dtype
    device: torch.device
    isl: int
    osl: int
    batch_sizes: list[int]

    @property
    def max_seq_len(self) -> int:
        return self.isl + self.osl

    @property
    def max_batch_size(self) -> int:
        return max(self.batch_sizes)


class BenchSystem(ABC):
    """One system under test; ``build`` once, then ``prepare(batch)`` before each batch size."""

    def __init__(self, spec: SystemSpec, shape: RunShape):
        self.spec = spec
        self.shape = shape

    @abstractmethod
    def build(self) -> None: ...

    def prepare(self, batch_size: int) -> None:
        """Per batch size set-up (before the warm-up); nothing by default."""
        return None

    @abstractmethod
    def generate(self, prompts: torch.Tensor, num_tokens: int) -> list[list[int]]:
        """Greedy, exactly ``num_tokens`` new tokens per row of ``prompts`` [B, isl]."""

    def graph_stats(self) -> dict[str, Any] | None:
        return None

    def reset_graph_stats(self) -> None:
        """Zero the CUDA-graph counters (before the timed runs), if the system has any."""
        return None

    def build_info(self) -> dict[str, Any]:
        """Extra fields for the records (e.g. build problems)."""
        return {}

    def close(self) -> None:
        """Release the model and everything on the device."""
        return None


class HfSystem(BenchSystem):
    def build(self) -> None:
        shape = self.shape
        self.model = build_hf_model(shape.model_dir, shape.dtype, shape.device)
        config = self.model.generation_config
        config.eos_token_id = None  # nothing can stop generation early
        config.pad_token_id = 0
        self.cache: Any = None

    @property
    def static(self) -> bool:
        return self.spec.kind == "hf-static-compile"

    def prepare(self, batch_size: int) -> None:
        if not self.static:
            return
        from transformers import StaticCache

        self.cache = None
        gc.collect()
        self.cache = StaticCache(config=self.model.config, max_cache_len=self.shape.max_seq_len)
        self.cache_used = False

    def generate(self, prompts: torch.Tensor, num_tokens: int) -> list[list[int]]:
        kwargs: dict[str, Any] = {}
        if self.static:
            if self.cache_used:  # zeroed in place: the compiled step keeps its addresses
                self.cache.reset()
            self.cache_used = True
            kwargs["past_key_values"] = self.cache
        out = self.model.generate(  # generate runs under no_grad itself
            prompts,
            attention_mask=torch.ones_like(prompts),
            max_new_tokens=num_tokens,
            min_new_tokens=num_tokens,
            do_sample=False,
            **kwargs,
        )
        return out[:, prompts.shape[1] :].tolist()

    def build_info(self) -> dict[str, Any]:
        if not self.static:
            return {}
        # transformers keeps the compiled decode step here once it compiled one.
        return {"hf_compiled": hasattr(self.model, "_compiled_call")}

    def close(self) -> None:
        self.cache = None
        self.model = None
        if self.static:
            torch._dynamo.reset()  # frees the compiled graphs and their CUDA-graph pools


class OursSystem(BenchSystem):
    def __init__(self, spec: SystemSpec, shape: RunShape, yaml_extra: list[str] | None = None):
        super().__init__(spec, shape)
        self.yaml_extra = list(yaml_extra or [])
        self.llm: Any = None

    def llm_kwargs(self) -> dict[str, Any]:
        shape = self.shape
        page_size = 32
        pages_per_seq = -(-shape.max_seq_len // page_size)
        kwargs: dict[str, Any] = dict(
            device=str(shape.device),
            dtype=str(shape.dtype).removeprefix("torch."),
            skip_loading_weights=True,
            attn_backend=self.spec.attn_backend,
            compile_backend=self.spec.compile_backend,
            max_seq_len=shape.max_seq_len,
            max_batch_size=shape.max_batch_size,
            # One prefill step holds the whole largest batch.
            max_num_tokens=max(shape.max_batch_size * shape.isl, shape.max_seq_len),
            kv_cache_config={
                "tokens_per_block": page_size,
                "max_tokens": shape.max_batch_size * pages_per_seq * page_size,
            },
            yaml_extra=self.yaml_extra,
        )
        if self.spec.compile_backend in CUDA_GRAPH_BACKENDS:
            kwargs["cuda_graph_batch_sizes"] = sorted(set(shape.batch_sizes))
        return kwargs

    def build(self) -> None:
        from ..runtime.llm import LLM

        self.llm = LLM(model=str(self.shape.model_dir), **self.llm_kwargs())

    def generate(self, prompts: torch.Tensor, num_tokens: int) -> list[list[int]]:
        from ..runtime.sampling import SamplingParams

        params = SamplingParams(max_tokens=num_tokens, temperature=0.0, ignore_eos=True)
        outputs = self.llm.generate(prompts.tolist(), params)
        return [list(out.outputs[0].token_ids) for out in outputs]

    def _stats(self) -> Any:
        return getattr(self.llm.model, "cuda_graph_stats", None) if self.llm else None

    def graph_stats(self) -> dict[str, Any] | None:
        stats = self._stats()
        return stats.as_dict() if stats is not None else None

    def reset_graph_stats(self) -> None:
        stats = self._stats()
        if stats is not None:
            stats.reset()

    def build_info(self) -> dict[str, Any]:
        from ..transforms.optimizer import META_KEY

        model = self.llm.model
        gm = next((m for m in model.modules() if META_KEY in getattr(m, "meta", {})), None)
        meta = gm.meta[META_KEY] if gm is not None else {}
        return {
            "build_problems": [p.message for p in meta.get("problems", [])],
            "transforms": {
                row["transform"]: row["matches"]
                for row in meta.get("summary", [])
                if row["stage"] in ("post_load_fusion", "cache_init", "compile")
                and row["status"] == "ran"
            },
        }

    def engine_stats(self) -> Any:
        return self.llm.engine.stats

    def close(self) -> None:
        if self.llm is not None:
            self.llm.shutdown()
        self.llm = None


def make_system(
    spec: SystemSpec,
    shape: RunShape,
    *,
    yaml_extra: list[str] | None = None,
) -> BenchSystem:
    if spec.kind in HF_SYSTEMS:
        return HfSystem(spec, shape)
    return OursSystem(spec, shape, yaml_extra)
