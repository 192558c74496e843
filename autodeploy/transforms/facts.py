"""Facts: named properties of the build that transforms require, use, provide or invalidate.

A transform class declares its facts (see ``BaseTransform``); ``pipeline_check`` checks the
whole ordered pipeline against them when the configuration loads, before anything runs.

Two kinds:

- *input facts* come from the caller, never from a transform: a model factory
  (``InferenceOptimizer(factory, cfg)``) and a cache interface (``optimizer(cm)``);
- every other fact is provided by a transform of the pipeline. A fact that no transform of the
  pipeline provides (not even a disabled one) is taken to hold for the module the caller
  passes in, so a partial pipeline can run on a prepared graph.

Facts are open: a new transform (or a plugin) may define its own with ``Fact(name, meaning)``;
the facts below are the ones the built-in pipeline and the planned MoE, SSM and sharding
transforms share.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Fact:
    """One property of the module being built (compared by name)."""

    name: str
    meaning: str = dataclasses.field(compare=False)
    # Input facts only: how a caller supplies it (used in the error when it is missing).
    how_to_supply: str = dataclasses.field(default="", compare=False)

    @property
    def is_input(self) -> bool:
        return bool(self.how_to_supply)

    def __str__(self) -> str:
        return repr(self.name)

    def missing(self, who: str) -> str:
        """The error text when input fact ``self`` was not supplied to ``who``."""
        return f"{who} needs a {self.name} ({self.meaning}): {self.how_to_supply}."


# ---- input facts: given by the caller ------------------------------------------------------
MODEL_FACTORY = Fact(
    "model factory",
    "a ModelFactory that builds the model and knows its checkpoint",
    how_to_supply="pass one as InferenceOptimizer(factory, cfg)",
)
CACHE_INTERFACE = Fact(
    "cache interface",
    "a CachedSequenceInterface with the batch metadata and caches",
    how_to_supply="call InferenceOptimizer(factory, cfg)(cm) with one",
)
INPUT_FACTS = (MODEL_FACTORY, CACHE_INTERFACE)

# ---- the module ----------------------------------------------------------------------------
MODEL_BUILT = Fact("model built", "the source nn.Module exists (parameters may be on meta)")
EXPORTED_GRAPH = Fact(
    "exported graph", "the module is a torch.fx GraphModule that transforms can rewrite"
)
WEIGHTS_LOADED = Fact("weights loaded", "parameters hold real weights on the run device")
INPUTS_ON_DEVICE = Fact(
    "inputs on device",
    "the batch buffers and the graph inputs' example values are on the run device",
)

# ---- canonical ops (pattern_matcher) ---------------------------------------------------------
CANONICAL_ATTENTION = Fact("canonical attention", "attention is auto_deploy.torch_attention")
REPEAT_KV_OP = Fact("repeat_kv op", "GQA head repetition is torch_attention_repeat_kv")
ATTENTION_LAYOUT = Fact("attention layout", "attention runs in the configured attn_layout")
CANONICAL_ROPE = Fact("canonical rope", "RoPE is one torch_rope_* op per (query, key) pair")
ROPE_LAYOUT = Fact("rope layout", "RoPE ops take q/k in the configured layout")
CANONICAL_RMSNORM = Fact("canonical rmsnorm", "RMSNorm is auto_deploy.torch_rmsnorm")
CANONICAL_L2NORM = Fact("canonical l2norm", "L2 normalization is auto_deploy.torch_l2norm")
CANONICAL_SWIGLU = Fact("canonical swiglu", "SwiGLU MLPs are auto_deploy.torch_swiglu_mlp")
CANONICAL_MOE = Fact("canonical moe", "mixture-of-experts blocks are auto_deploy.torch_moe")
CANONICAL_SSM = Fact("canonical ssm", "Mamba state-space scans are auto_deploy.torch_ssm")
CANONICAL_CAUSAL_CONV = Fact(
    "canonical causal conv", "Mamba causal convolutions are auto_deploy.torch_causal_conv1d"
)

# ---- sharding ------------------------------------------------------------------------------
SHARDING_PLAN = Fact("sharding plan", "SharedConfig.sharding_plan says how to split the graph")
WEIGHTS_SHARDED = Fact(
    "weights sharded", "the graph is split for this rank (load hooks slice the checkpoint)"
)

# ---- caches (cache_init) -------------------------------------------------------------------
CACHE_RESOURCES = Fact(
    "cache resources registered", "cached ops are in the graph; their caches are registered on cm"
)
CACHES_ALLOCATED = Fact("caches allocated", "cm holds a tensor for every registered cache")
