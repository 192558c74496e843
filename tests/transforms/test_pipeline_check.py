"""pipeline_check: declared stages and facts are checked for the whole pipeline before any run."""

from __future__ import annotations

import pytest
import torch.nn as nn

from autodeploy.config import LlmArgs
from autodeploy.transforms import BaseTransform, InferenceOptimizer, Stages, TransformInfo
from autodeploy.transforms import TransformRegistry as Registry
from autodeploy.transforms.facts import (
    CACHE_INTERFACE,
    CACHE_RESOURCES,
    CANONICAL_SSM,
    EXPORTED_GRAPH,
    SHARDING_PLAN,
    WEIGHTS_LOADED,
    WEIGHTS_SHARDED,
    Fact,
)
from autodeploy.transforms.pipeline_check import PipelineStep, check_facts
from autodeploy.transforms.registry import validate_pipeline
from autodeploy.utils.errors import ConfigError

RAN: list[str] = []
GREETING = Fact("greeting", "a test fact")


class _Declared(BaseTransform):
    def _apply(self, gm, cm, factory, shared_config):
        RAN.append(self.name)
        return gm, TransformInfo(skipped=True, is_clean=True, has_valid_shapes=True)


def _declare(name: str, **declarations) -> type[BaseTransform]:
    cls = type(f"Declared{name}", (_Declared,), {"__doc__": "Test transform.", **declarations})
    return Registry.register(name)(cls)


_declare("_pc_hello", provides=(GREETING,))
_declare("_pc_needs_hello", requires=(GREETING,))
_declare("_pc_likes_hello", uses=(GREETING,))
_declare("_pc_forget", invalidates=(GREETING,))
_declare("_pc_chicken", requires=(Fact("egg", "test"),), provides=(Fact("chicken", "test"),))
_declare("_pc_egg", requires=(Fact("chicken", "test"),), provides=(Fact("egg", "test"),))
_declare("_pc_refine_hello", requires=(GREETING,), provides=(GREETING,))
_declare("_pc_graph_pass", requires=(EXPORTED_GRAPH,))
_declare("_pc_needs_cm", requires=(CACHE_INTERFACE,))
_declare("_pc_declared_stage", stage=Stages.POST_EXPORT)
# A sharding pair that only declares facts: no transform of the package names them.
_declare(
    "_pc_detect_sharding",
    stage=Stages.SHARDING,
    requires=(EXPORTED_GRAPH,),
    provides=(SHARDING_PLAN,),
)
_declare(
    "_pc_insert_cached_ssm",
    stage=Stages.CACHE_INIT,
    requires=(EXPORTED_GRAPH, CACHE_INTERFACE, WEIGHTS_LOADED, CANONICAL_SSM),
    provides=(CACHE_RESOURCES,),
    optional=False,
)
_declare(
    "_pc_shard_executor", requires=(SHARDING_PLAN,), provides=(WEIGHTS_SHARDED,), optional=False
)


def _check(config: dict) -> None:
    validate_pipeline(config)


def _order(config: dict) -> list[str]:
    return [name for name, _ in validate_pipeline(config)]


def test_within_a_stage_a_provider_moves_before_the_transforms_that_need_it():
    config = {
        "_pc_needs_hello": {"stage": "post_export"},
        "_pc_graph_pass": {"stage": "post_export"},
        "_pc_hello": {"stage": "post_export"},
    }
    assert _order(config) == ["_pc_graph_pass", "_pc_hello", "_pc_needs_hello"]
    config["_pc_hello"]["enabled"] = False  # disabled: no constraint, and then refused
    with pytest.raises(ConfigError, match="only _pc_hello provides, and it is disabled"):
        _order(config)


def test_a_cycle_within_a_stage_is_reported_naming_both():
    config = {"_pc_chicken": {"stage": "export"}, "_pc_egg": {"stage": "export"}}
    with pytest.raises(ConfigError) as err:
        _order(config)
    message = str(err.value)
    assert "transforms._pc_chicken: _pc_chicken (stage export) requires 'egg'" in message
    assert "_pc_egg (stage export) provides" in message and "form a cycle" in message


def test_a_consumer_in_an_earlier_stage_is_told_which_stage():
    config = {"_pc_hello": {"stage": "sharding"}, "_pc_needs_hello": {"stage": "post_export"}}
    with pytest.raises(ConfigError, match="_pc_needs_hello belongs in a stage after sharding"):
        _check(config)


def test_disabled_providers_provide_nothing_but_unprovided_facts_come_from_the_input():
    config = {
        "_pc_hello": {"stage": "post_export", "enabled": False},
        "_pc_needs_hello": {"stage": "compile"},
    }
    with pytest.raises(ConfigError, match=r"which only _pc_hello provides, and it is disabled"):
        _check(config)
    # No transform of the pipeline provides the fact: the module passed in is trusted with it.
    _check({"_pc_needs_hello": {"stage": "compile"}})
    # Disabling the consumer too is fine.
    config["_pc_needs_hello"]["enabled"] = False
    _check(config)


def test_used_facts_order_the_pipeline_but_may_be_missing():
    _check(
        {
            "_pc_hello": {"stage": "export", "enabled": False},
            "_pc_likes_hello": {"stage": "compile"},
        }
    )
    with pytest.raises(ConfigError, match="_pc_likes_hello .* uses 'greeting'.*runs after"):
        _check({"_pc_likes_hello": {"stage": "export"}, "_pc_hello": {"stage": "compile"}})


def test_a_transform_that_refines_a_fact_needs_it_from_an_earlier_provider_or_the_input():
    _check({"_pc_refine_hello": {"stage": "export"}})  # only it provides it: from the input
    _check({"_pc_hello": {"stage": "export"}, "_pc_refine_hello": {"stage": "compile"}})
    with pytest.raises(ConfigError, match="_pc_refine_hello must run after _pc_hello"):
        _check({"_pc_refine_hello": {"stage": "export"}, "_pc_hello": {"stage": "compile"}})
    with pytest.raises(ConfigError, match="which only _pc_hello provides, and it is disabled"):
        _check(
            {
                "_pc_hello": {"stage": "export", "enabled": False},
                "_pc_refine_hello": {"stage": "compile"},
            }
        )


def test_an_invalidated_fact_names_the_transform_that_destroyed_it():
    config = {
        "_pc_hello": {"stage": "export"},
        "_pc_forget": {"stage": "post_export"},
        "_pc_needs_hello": {"stage": "compile"},
    }
    with pytest.raises(ConfigError, match=r"_pc_forget \(stage post_export\) invalidates it"):
        _check(config)
    config["_pc_forget"]["enabled"] = False  # a disabled transform invalidates nothing either
    _check(config)


def test_a_graph_pass_after_compile_model_is_refused():
    config = {"compile_model": {}, "_pc_graph_pass": {"stage": "compile"}}
    with pytest.raises(ConfigError) as err:
        _check(config)
    assert "'exported graph'" in str(err.value) and "compile_model (stage compile)" in str(
        err.value
    )


def test_new_transforms_only_declare_facts_and_are_ordered_against_the_pipeline():
    pipeline = {
        "export_to_gm": {},
        "_pc_detect_sharding": {},
        "_pc_shard_executor": {"stage": "sharding"},
        "load_weights": {},
        "insert_cached_attention": {},
    }
    _check(pipeline)
    late = {**pipeline, "_pc_shard_executor": {"stage": "post_load_fusion"}}
    with pytest.raises(ConfigError) as err:
        _check(late)
    message = str(err.value)
    assert (
        "transforms.load_weights: load_weights (stage weight_load) uses 'weights sharded'"
        in message
    )
    assert "_pc_shard_executor (stage post_load_fusion) provides" in message
    without_plan = {**pipeline, "_pc_detect_sharding": {"enabled": False}}
    with pytest.raises(ConfigError, match="only _pc_detect_sharding provides, and it is disabled"):
        _check(without_plan)


def test_a_second_cached_op_family_added_at_the_end_of_cache_init_registers_before_allocation():
    # A layer that adds a transform appends it at the end of its stage: after initialize_cache.
    config = {"initialize_cache": {}, "resize_kv_cache": {}, "_pc_insert_cached_ssm": {}}
    assert _order(config) == ["_pc_insert_cached_ssm", "initialize_cache", "resize_kv_cache"]
    default = LlmArgs(transforms={"_pc_insert_cached_ssm": {}}).transforms
    run_order = [name for name, cfg in validate_pipeline(default) if cfg.stage == Stages.CACHE_INIT]
    # every cache-registering transform (the default ones and the added one) runs before the
    # allocation, in YAML order otherwise
    assert run_order == [
        "insert_cached_attention",
        "insert_cached_ssm_attention",
        "insert_cached_causal_conv",
        "_pc_insert_cached_ssm",
        "initialize_cache",
        "resize_kv_cache",
    ]


def test_declared_stage_may_be_left_out_but_not_contradicted():
    assert validate_pipeline({"_pc_declared_stage": {}})[0][1].stage is Stages.POST_EXPORT
    with pytest.raises(ConfigError) as err:
        _check({"_pc_declared_stage": {"stage": "compile"}})
    assert (
        "transforms._pc_declared_stage.stage: _pc_declared_stage runs in stage 'post_export' "
        "(declared by the transform), not 'compile'. Set `stage: post_export`" in str(err.value)
    )
    with pytest.raises(ConfigError, match=r"transforms\._pc_hello: missing 'stage'"):
        _check({"_pc_hello": {}})  # undeclared: the YAML must say


def test_moving_cached_attention_before_weight_loading_names_both_transforms():
    pipeline = {"load_weights": {}, "insert_cached_attention": {"stage": "post_export"}}
    with pytest.raises(ConfigError) as err:
        _check(pipeline)
    message = str(err.value)
    assert "insert_cached_attention runs in stage 'cache_init'" in message
    assert "requires 'weights loaded'" in message and "load_weights (stage weight_load)" in message


def test_skip_on_error_is_refused_for_a_transform_the_build_needs():
    with pytest.raises(ConfigError, match="load_weights is not optional.*Remove `skip_on_error`"):
        _check({"load_weights": {"skip_on_error": True}})
    _check({"fuse_gemms": {"skip_on_error": True}})


def test_missing_inputs_fail_before_anything_runs():
    gm = nn.Module()
    RAN.clear()
    config = {"_pc_hello": {"stage": "export"}, "_pc_needs_cm": {"stage": "cache_init"}}
    with pytest.raises(ConfigError, match="_pc_needs_cm .* needs a cache interface"):
        InferenceOptimizer(None, config, instruments=[])(None, gm)
    assert RAN == []
    InferenceOptimizer(None, config, instruments=[])(object(), gm)
    assert RAN == ["_pc_hello", "_pc_needs_cm"]


def test_a_transform_called_directly_checks_its_inputs_too():
    from autodeploy.transforms import SharedConfig

    initialize = Registry.get("initialize_cache").from_kwargs()
    with pytest.raises(ConfigError, match="initialize_cache needs a cache interface"):
        initialize(nn.Module(), None, None, SharedConfig(), TransformInfo())
    build = Registry.get("build_model").from_kwargs()
    with pytest.raises(ConfigError, match="build_model needs a model factory"):
        build(nn.Module(), None, None, SharedConfig(), TransformInfo())


def test_check_facts_reports_every_problem_at_once():
    steps = [
        PipelineStep("a", Registry.get("_pc_needs_hello"), Stages.EXPORT, True),
        PipelineStep("b", Registry.get("_pc_hello"), Stages.EXPORT, True),
        PipelineStep("c", Registry.get("_pc_needs_cm"), Stages.EXPORT, True),
    ]
    lines = check_facts(steps, given=())
    assert [line.split(":")[0] for line in lines] == ["transforms.a", "transforms.c"]
    assert check_facts(steps[1:], given=(CACHE_INTERFACE,)) == []


def test_every_library_transform_declares_its_stage_and_its_facts_are_consistent():
    from autodeploy.transforms.facts import INPUT_FACTS

    library = [
        (name, Registry.get(name))
        for name in Registry.names()
        if Registry.get(name).__module__.startswith("autodeploy.transforms.library")
    ]
    assert len(library) >= 28
    provided = {f for _, cls in library for f in cls.provides}
    for name, cls in library:
        assert isinstance(cls.stage, Stages), f"{name} declares no stage"
        assert not set(cls.provides) & set(cls.requires), name
        assert all(isinstance(f, Fact) for f in (*cls.requires, *cls.uses, *cls.provides)), name
        assert not set(cls.provides) & set(INPUT_FACTS), f"{name} provides an input fact"
    assert WEIGHTS_LOADED in provided and EXPORTED_GRAPH in provided
