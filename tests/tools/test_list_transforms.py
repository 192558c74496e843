"""list_transforms prints every transform with stage, summary, sketch and fields."""

import json
import subprocess
import sys

from autodeploy.transforms import TransformRegistry


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "autodeploy.tools.list_transforms", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_lists_every_registered_transform_with_its_docs():
    result = run("--json")
    assert result.returncode == 0, result.stderr
    entries = {e["name"]: e for e in json.loads(result.stdout)}
    # The package's transforms (test plugins registered in this process are not in the child).
    expected = {
        n for n in TransformRegistry.names() if TransformRegistry.origin(n).startswith("autodeploy")
    }
    assert expected <= set(entries)
    export = entries["export_to_gm"]
    assert export["stage"] == "export" and export["summary"]
    assert "before:" in export["details"] and "after:" in export["details"]
    assert {f["name"] for f in export["fields"]} >= {"strict", "patches"}
    assert all(e["summary"] for e in entries.values()), "every transform needs a docstring"
    cached = entries["insert_cached_attention"]
    assert cached["stage"] == "cache_init" and cached["optional"] is False
    assert "weights loaded" in cached["requires"] and cached["provides"] == [
        "cache resources registered"
    ]
    assert entries["compile_model"]["invalidates"] == ["exported graph"]


def test_text_output_and_unknown_name():
    result = run("export_to_gm")
    assert result.returncode == 0
    assert (
        "export_to_gm  [stage: export]" in result.stdout and "strict: bool = False" in result.stdout
    )
    assert "requires: model factory, model built; provides: exported graph" in result.stdout
    bad = run("export_to_g")
    assert bad.returncode == 2 and "Did you mean 'export_to_gm'" in bad.stderr
