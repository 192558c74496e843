"""YAML reading and the merge rules (OmegaConf semantics, literal values, key order)."""

from __future__ import annotations

import pytest

from autodeploy.config import deep_merge, parse_scalar, parse_yaml_text
from autodeploy.config.layers import Layer, merge_layers
from autodeploy.config.yaml_loader import dump_yaml_value, load_yaml_mapping
from autodeploy.utils.errors import ConfigError

# ----------------------------------------------------------------------------- merge rules


def test_dicts_merge_per_key_and_later_wins():
    base = {"a": {"x": 1, "y": 2}, "b": 1}
    merged = deep_merge(base, {"a": {"y": 20, "z": 30}}, {"b": 2})
    assert merged == {"a": {"x": 1, "y": 20, "z": 30}, "b": 2}
    assert base == {"a": {"x": 1, "y": 2}, "b": 1}  # inputs are not modified


def test_lists_are_replaced_not_appended():
    assert deep_merge({"l": [1, 2, 3]}, {"l": [9]}) == {"l": [9]}
    assert deep_merge({"d": {"l": [1]}}, {"d": {"l": []}}) == {"d": {"l": []}}


def test_key_order_existing_keys_stay_new_keys_append():
    base = {"t": {"first": {"s": 1}, "second": {"s": 1}, "third": {"s": 1}}}
    merged = deep_merge(base, {"t": {"new": {"s": 2}, "first": {"s": 3}}})
    assert list(merged["t"]) == ["first", "second", "third", "new"]
    assert merged["t"]["first"] == {"s": 3}


def test_scalar_and_none_replace_a_mapping_and_vice_versa():
    assert deep_merge({"a": {"x": 1}}, {"a": None}) == {"a": None}
    assert deep_merge({"a": 1}, {"a": {"x": 1}}) == {"a": {"x": 1}}


def test_interpolation_syntax_is_kept_literally():
    merged = deep_merge({"a": "${b}", "b": 1}, {"c": "${a}-${oc.env:HOME}"})
    assert merged == {"a": "${b}", "b": 1, "c": "${a}-${oc.env:HOME}"}
    data, _ = parse_yaml_text("x: ${y}\ny: 2\nz: ???\n", "t.yaml")
    assert data == {"x": "${y}", "y": 2, "z": "???"}


def test_merge_layers_records_the_source_of_every_leaf():
    layers = [
        Layer("default.yaml", {"a": {"x": 1, "y": 2}, "l": [1]}),
        Layer("kwargs", {"a": {"y": 3}, "l": [2, 3]}),
    ]
    merged, provenance = merge_layers(layers)
    assert merged == {"a": {"x": 1, "y": 3}, "l": [2, 3]}
    assert provenance.source(("a", "x")) == "default.yaml"
    assert provenance.source(("a", "y")) == "kwargs"
    assert provenance.source(("l",)) == "kwargs"
    assert provenance.rank("kwargs") > provenance.rank("default.yaml") > provenance.rank(None)


def test_replacing_a_subtree_forgets_its_old_sources():
    layers = [Layer("default.yaml", {"a": {"x": 1}}), Layer("kwargs", {"a": 5})]
    merged, provenance = merge_layers(layers)
    assert merged == {"a": 5}
    assert provenance.paths == {("a",): "kwargs"}


# ----------------------------------------------------------------------------- YAML reading


def test_yaml_scalars_follow_yaml_1_2():
    data, _ = parse_yaml_text(
        "a: yes\nb: off\nc: 1e-5\nd: 1:30\ne: 2024-01-01\nf: 010\ng: true\nh: 3\ni: .5\n", "t"
    )
    assert data == {
        "a": "yes",
        "b": "off",
        "c": 1e-5,
        "d": "1:30",
        "e": "2024-01-01",
        "f": "010",
        "g": True,
        "h": 3,
        "i": 0.5,
    }


def test_yaml_records_key_lines():
    _, lines = parse_yaml_text("a: 1\nb:\n  c: 2\n", "t")
    assert lines == {("a",): 1, ("b",): 2, ("b", "c"): 3}


def test_malformed_yaml_names_file_and_line(write_yaml):
    path = write_yaml("bad.yaml", "max_seq_len: 1\ntransforms:\n  a: [1,\n  b: 2\nx: 3\n")
    with pytest.raises(ConfigError, match=r"Malformed YAML in bad\.yaml, line \d+, column \d+"):
        load_yaml_mapping(path)
    path = write_yaml("bad2.yaml", "a: 1\n b: 2\n")
    with pytest.raises(ConfigError, match=r"bad2\.yaml, line 2, column 3: mapping values"):
        load_yaml_mapping(path)


def test_duplicate_key_is_an_error_with_both_lines(write_yaml):
    path = write_yaml("dup.yaml", "a: 1\nt:\n  x: 1\n  x: 2\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml, line 4: duplicate key 't\.x' .*line 3"):
        load_yaml_mapping(path)


def test_yaml_anchors_and_merge_keys_work():
    data, _ = parse_yaml_text("base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  y: 3\n", "t")
    assert data["d"] == {"x": 1, "y": 3}


def test_top_level_must_be_a_mapping(write_yaml):
    path = write_yaml("list.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: the top level must be a mapping"):
        load_yaml_mapping(path)
    assert load_yaml_mapping(write_yaml("empty.yaml", "# nothing\n")) == ({}, {})


def test_missing_file_is_named():
    with pytest.raises(ConfigError, match=r"YAML file 'nope\.yaml' not found"):
        load_yaml_mapping("nope.yaml")


@pytest.mark.parametrize(
    "text, value",
    [
        ("2", 2),
        ("-1", -1),
        ("0.5", 0.5),
        ("true", True),
        ("False", False),
        ("null", None),
        ("[1,2]", [1, 2]),
        ("[a, b]", ["a", "b"]),
        ("{a: 1}", {"a": 1}),
        ("bfloat16", "bfloat16"),
        ("builtin:tiny-llama", "builtin:tiny-llama"),
        ("a: b", "a: b"),
        ("on", "on"),
        ("", ""),
        ("[1,", "[1,"),
        ("${x}", "${x}"),
    ],
)
def test_parse_scalar(text, value):
    assert parse_scalar(text) == value


@pytest.mark.parametrize(
    "value", ["yes", "1e-5", "010", "${a}", "", "a: b", 1, 2.5, True, None, [1, "on"], {"k": [1]}]
)
def test_dumped_values_read_back_identically(value):
    assert parse_yaml_text(f"v: {dump_yaml_value(value)}", "t")[0]["v"] == value
