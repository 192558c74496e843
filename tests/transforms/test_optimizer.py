"""The pass manager: ordering, validation, skip/strict, history, lazy cleanup, dumps."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from pydantic import Field
from torch.fx import GraphModule, symbolic_trace

from autodeploy.transforms import (
    BaseTransform,
    InferenceOptimizer,
    SharedConfig,
    TransformConfig,
    TransformInfo,
    TransformRegistry,
)
from autodeploy.transforms import base as base_module
from autodeploy.transforms.instruments import GraphDumpInstrument
from autodeploy.transforms.optimizer import META_KEY
from autodeploy.utils.errors import BuildError, ConfigError, TransformError

CALLS: list[str] = []


class _RecordConfig(TransformConfig):
    tag: str = Field(default="", description="Label written to the call log.")
    dirty: bool = Field(default=False, description="Report the graph as not clean.")


class _Record(BaseTransform):
    """Appends its name to CALLS; optionally reports a dirty graph."""

    @classmethod
    def get_config_class(cls):
        return _RecordConfig

    def _apply(self, gm, cm, factory, shared_config):
        CALLS.append(self.config.tag or self.name)
        clean = not self.config.dirty
        return gm, TransformInfo(num_matches=1, is_clean=clean, has_valid_shapes=clean)


for _name in ("_opt_a", "_opt_b", "_opt_c"):
    TransformRegistry.register(_name)(type(f"Record{_name}", (_Record,), {}))


@TransformRegistry.register("_opt_fail")
class _Fail(BaseTransform):
    """Always raises."""

    def _apply(self, gm, cm, factory, shared_config):
        raise RuntimeError("boom")


@TransformRegistry.register("_opt_problem")
class _Problem(BaseTransform):
    """Reports a problem (like a matcher that found nothing where it should)."""

    def _apply(self, gm, cm, factory, shared_config):
        self.report_problem(shared_config, "matched 0 of 2 layers")
        return gm, TransformInfo(skipped=True, is_clean=True, has_valid_shapes=True)


@TransformRegistry.register("_opt_shapes")
class _NeedsShapes(BaseTransform):
    """Checks that shape metadata is present when it runs."""

    def _apply(self, gm, cm, factory, shared_config):
        vals = [n.meta.get("val") for n in gm.graph.nodes if n.op == "call_function"]
        CALLS.append("shapes-ok" if all(v is not None for v in vals) else "shapes-missing")
        return gm, TransformInfo(is_clean=True, has_valid_shapes=True)


class _Tiny(nn.Module):
    def forward(self, x):
        return torch.relu(x) + 1


@pytest.fixture
def gm() -> GraphModule:
    CALLS.clear()
    return symbolic_trace(_Tiny())


def run(config, gm, **kwargs):
    return InferenceOptimizer(None, config, instruments=[], **kwargs)(None, gm)


def test_orders_by_stage_and_keeps_mapping_order_within_a_stage(gm):
    config = {
        "_opt_c": {"stage": "compile"},
        "_opt_b": {"stage": "post_export", "tag": "b"},
        "_opt_a": {"stage": "post_export", "tag": "a"},
    }
    run(config, gm)
    assert CALLS == ["b", "a", "_opt_c"]


def test_history_and_summary_are_recorded(gm):
    out = run({"_opt_a": {"stage": "export"}, "_opt_b": {"stage": "compile", "enabled": False}}, gm)
    meta = out.meta[META_KEY]
    assert list(meta["transform_history"]) == ["_opt_a", "_opt_b"]
    assert meta["transform_history"]["_opt_a"].num_matches == 1
    rows = {r["transform"]: r for r in meta["summary"]}
    assert rows["_opt_a"]["status"] == "ran" and rows["_opt_b"]["status"] == "disabled"
    assert CALLS == ["_opt_a"]


def test_whole_config_is_validated_before_anything_runs(gm):
    config = {
        "_opt_a": {"stage": "export"},
        "_opt_bb": {"stage": "export"},
        "_opt_c": {"stage": "export", "tagg": "x"},
    }
    with pytest.raises(ConfigError) as err:
        run(config, gm)
    message = str(err.value)
    assert "transforms._opt_bb: unknown transform" in message and "'_opt_b'" in message
    assert "transforms._opt_c.tagg: unknown key. Did you mean 'tag'" in message
    assert CALLS == []


def test_missing_stage_and_wrong_type_are_config_errors(gm):
    with pytest.raises(ConfigError, match=r"transforms\._opt_a: missing 'stage'"):
        run({"_opt_a": {}}, gm)
    with pytest.raises(ConfigError, match=r"transforms\._opt_a\.dirty"):
        run({"_opt_a": {"stage": "export", "dirty": "very"}}, gm)
    with pytest.raises(ConfigError, match=r"transforms\._opt_a\.stage"):
        run({"_opt_a": {"stage": "exprot"}}, gm)


def test_failure_is_wrapped_with_location_and_fix(gm):
    with pytest.raises(
        TransformError,
        match=r"'_opt_fail' \(stage post_export\) failed: "
        r"RuntimeError: boom.*enabled: false",
    ):
        run({"_opt_fail": {"stage": "post_export"}}, gm)


def test_skip_on_error_continues_and_reports(gm):
    out = run(
        {
            "_opt_fail": {"stage": "post_export", "skip_on_error": True},
            "_opt_a": {"stage": "compile"},
        },
        gm,
    )
    assert CALLS == ["_opt_a"]
    problems = out.meta[META_KEY]["problems"]
    assert len(problems) == 1 and "boom" in problems[0].message
    assert problems[0].transform == "_opt_fail"
    row = out.meta[META_KEY]["summary"][0]
    assert row["status"] == "failed" and row["skipped"]


def test_strict_turns_skips_and_problems_into_errors(gm):
    with pytest.raises(BuildError, match="boom"):
        run({"_opt_fail": {"stage": "post_export", "skip_on_error": True}}, gm, strict=True)
    with pytest.raises(BuildError, match="matched 0 of 2 layers.*strict"):
        run({"_opt_problem": {"stage": "pattern_matcher"}}, gm, strict=True)
    out = run({"_opt_problem": {"stage": "pattern_matcher"}}, gm)
    assert [p.message for p in out.meta[META_KEY]["problems"]] == ["matched 0 of 2 layers"]


def test_cleanup_and_shape_prop_run_only_when_needed(gm, monkeypatch):
    calls = {"clean": 0, "shapes": 0}
    real_clean = base_module.canonicalize_graph

    def counting_clean(g):
        calls["clean"] += 1
        real_clean(g)

    def counting_shapes(g):
        calls["shapes"] += 1
        for node in g.graph.nodes:  # symbolic_trace gives no fake values: fill simple ones
            if node.op in ("placeholder", "call_function", "call_method"):
                node.meta["val"] = torch.empty(2)

    monkeypatch.setattr(base_module, "canonicalize_graph", counting_clean)
    monkeypatch.setattr(base_module, "run_shape_prop", counting_shapes)
    # Clean transforms back to back: one cleanup at the start (the input graph is not known
    # to be clean), none after.
    run({"_opt_a": {"stage": "export"}, "_opt_b": {"stage": "export"}}, gm)
    assert calls == {"clean": 1, "shapes": 0}
    # A dirty transform triggers the post-cleanup; the next one then needs nothing.
    calls.update(clean=0, shapes=0)
    run({"_opt_a": {"stage": "export", "dirty": True}, "_opt_b": {"stage": "export"}}, gm)
    assert calls == {"clean": 2, "shapes": 0}
    # A transform that needs shapes gets them (once), and sees them.
    calls.update(clean=0, shapes=0)
    CALLS.clear()
    run(
        {
            "_opt_a": {"stage": "export", "dirty": True},
            "_opt_shapes": {"stage": "export", "requires_shape_prop": True},
        },
        gm,
    )
    assert calls["shapes"] == 1 and CALLS[-1] == "shapes-ok"


def test_graph_dumps_are_written(gm, tmp_path):
    dump = GraphDumpInstrument(tmp_path / "dumps")
    InferenceOptimizer(
        None, {"_opt_a": {"stage": "export"}, "_opt_b": {"stage": "compile"}}, instruments=[dump]
    )(None, gm)
    files = sorted(p.name for p in (tmp_path / "dumps").iterdir())
    assert files == [".autodeploy-dump-manifest", "001__opt_a.txt", "002__opt_b.txt", "config.yaml"]
    text = (tmp_path / "dumps" / "001__opt_a.txt").read_text()
    assert "transform=_opt_a" in text and "def forward" in text and "relu" in text
    assert "_opt_b" in (tmp_path / "dumps" / "config.yaml").read_text()


def test_dump_dir_from_environment(gm, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTODEPLOY_DUMP_GRAPHS_DIR", str(tmp_path / "env_dumps"))
    InferenceOptimizer(None, {"_opt_a": {"stage": "export"}})(None, gm)
    assert (tmp_path / "env_dumps" / "001__opt_a.txt").is_file()


@pytest.mark.filterwarnings("ignore:Attempted to insert a get_attr")
def test_verification_catches_a_broken_graph(gm, monkeypatch):
    @TransformRegistry.register("_opt_breaks_graph")
    class _Breaks(BaseTransform):
        """Leaves a get_attr to a missing attribute and claims the graph is clean."""

        def _apply(self, g, cm, factory, shared_config):
            with g.graph.inserting_before(next(iter(g.graph.nodes))):
                g.graph.get_attr("does_not_exist")
            return g, TransformInfo(is_clean=True, has_valid_shapes=True)

    monkeypatch.setenv("AUTODEPLOY_VERIFY_GRAPHS", "1")
    with pytest.raises(
        RuntimeError, match="verification failed after transform '_opt_breaks_graph'"
    ):
        InferenceOptimizer(None, {"_opt_breaks_graph": {"stage": "export"}})(None, gm)


def test_shared_config_carries_rank_and_state(gm):
    shared = SharedConfig(rank=1, local_rank=1, world_size=2)
    opt = InferenceOptimizer(
        None, {"_opt_a": {"stage": "export"}}, shared_config=shared, instruments=[]
    )
    opt(None, gm)
    assert opt.shared_config.world_size == 2 and opt.shared_config.local_rank == 1
    assert opt.shared_config.rank == 1 and opt.shared_config.sharding_plan is None
    shared.sharding_plan = {"x": 1}  # the typed slot the sharding transforms hand over
    assert shared.sharding_plan == {"x": 1}


def test_shared_config_is_typed_and_closed():
    from pydantic import ValidationError

    shared = SharedConfig()
    with pytest.raises(ValueError, match="sharding_pln"):
        shared.sharding_pln = {}  # a misspelled channel is an error, not a new attribute
    with pytest.raises(ValidationError, match="extra"):
        SharedConfig(tp_size=2)
    with pytest.raises(ValidationError, match="rank=2 is not below world_size=2"):
        SharedConfig(rank=2, world_size=2)
    with pytest.raises(ValidationError):
        SharedConfig(world_size=0)


@TransformRegistry.register("_opt_required_fail")
class _RequiredFail(BaseTransform):
    """A transform the build cannot do without; half-rewrites the graph, then raises."""

    optional = False
    failure_hint = "Check the frobnicator settings."

    def _apply(self, gm, cm, factory, shared_config):
        for node in list(gm.graph.nodes):
            if node.op == "call_function" and node.target is torch.relu:
                node.target = torch.sigmoid  # the dump must still show the graph before this
        raise RuntimeError("kaput")


def test_a_required_transform_failure_gives_its_own_hint_not_the_generic_advice(gm):
    with pytest.raises(TransformError) as err:
        run({"_opt_required_fail": {"stage": "post_export"}}, gm)
    message = str(err.value)
    assert "RuntimeError: kaput. Check the frobnicator settings." in message
    assert "_opt_required_fail is required" in message
    assert "enabled: false" not in message and "skip_on_error" not in message
    assert "AUTODEPLOY_DUMP_GRAPHS_DIR" in message  # how to get the graph next time


def test_an_optional_transform_failure_keeps_the_generic_advice(gm):
    with pytest.raises(TransformError) as err:
        run({"_opt_fail": {"stage": "post_export"}}, gm)
    assert "enabled: false" in str(err.value) and "skip_on_error: true" in str(err.value)


def test_a_failure_dumps_the_graph_before_it_and_the_configuration(gm, tmp_path):
    dump = GraphDumpInstrument(tmp_path / "dumps")
    config = {"_opt_a": {"stage": "export"}, "_opt_required_fail": {"stage": "post_export"}}
    with pytest.raises(TransformError) as err:
        InferenceOptimizer(None, config, instruments=[dump])(None, gm)
    failed = tmp_path / "dumps" / "002__opt_required_fail.FAILED.txt"
    assert str(failed) in str(err.value) and str(tmp_path / "dumps" / "config.yaml") in str(
        err.value
    )
    text = failed.read_text()
    assert text.startswith("# transform=_opt_required_fail stage=post_export FAILED\n")
    assert "# RuntimeError: kaput" in text
    assert "relu" in text and "sigmoid" not in text  # before the half-done rewrite
    assert "_opt_required_fail" in (tmp_path / "dumps" / "config.yaml").read_text()


def test_our_own_errors_pass_through_unchanged_but_still_leave_a_dump(gm, tmp_path):
    @TransformRegistry.register("_opt_config_fail")
    class _ConfigFail(BaseTransform):
        """Raises an error of ours, which already says what to do."""

        def _apply(self, g, cm, factory, shared_config):
            raise ConfigError("set `frob: 2` instead")

    dump = GraphDumpInstrument(tmp_path / "dumps")
    config = {"_opt_config_fail": {"stage": "export"}}
    with pytest.raises(ConfigError, match=r"^set `frob: 2` instead$"):
        InferenceOptimizer(None, config, instruments=[dump])(None, gm)
    text = (tmp_path / "dumps" / "001__opt_config_fail.FAILED.txt").read_text()
    assert "# ConfigError: set `frob: 2` instead" in text and "relu" in text


def test_a_corrupt_checkpoint_points_at_the_checkpoint_not_at_disabling_load_weights(tmp_path):
    from tiny_models import save_tiny

    from autodeploy.models import ModelFactoryRegistry

    save_tiny(tmp_path, "llama", seed=0)
    (checkpoint,) = tmp_path.glob("*.safetensors")
    checkpoint.write_bytes(checkpoint.read_bytes()[:200])  # truncated download
    factory = ModelFactoryRegistry.get("AutoModelForCausalLM")(str(tmp_path))
    config = {"build_model": {}, "load_weights": {}}  # export is not needed to load
    # The checkpoint reader names the file itself (a ConfigError passes through unchanged).
    with pytest.raises(ConfigError) as err:
        InferenceOptimizer(factory, config, instruments=[])(None)
    message = str(err.value)
    assert str(checkpoint) in message and "truncated or corrupt" in message
    assert "enabled: false" not in message


def test_registering_a_name_twice_is_an_error():
    from autodeploy.utils.errors import RegistryError

    with pytest.raises(RegistryError, match="'_opt_a' is already registered"):
        TransformRegistry.register("_opt_a")(type("Other", (_Record,), {}))


def test_stage_comparisons_follow_pipeline_order_not_the_alphabet():
    from autodeploy.transforms import Stages

    stages = list(Stages)
    for a in stages:
        for b in stages:
            assert (a < b) == (a.order < b.order) and (a <= b) == (a.order <= b.order)
            assert (a > b) == (a.order > b.order) and (a >= b) == (a.order >= b.order)
    assert not Stages.CACHE_INIT <= Stages.WEIGHT_LOAD  # alphabetically "c" < "w"
