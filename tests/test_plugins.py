"""Plugins: only modules named in AUTODEPLOY_PLUGINS (or the entry-point group) are imported."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

PLUGIN = textwrap.dedent(
    '''
    """A third-party transform: counts the graph's nodes."""
    from autodeploy.transforms import BaseTransform, TransformInfo, TransformRegistry

    @TransformRegistry.register("count_nodes")
    class CountNodes(BaseTransform):
        """Count the nodes of the graph (changes nothing)."""

        def _apply(self, gm, cm, factory, shared_config):
            n = len(gm.graph.nodes)
            print(f"PLUGIN_RAN nodes={n}")
            return gm, TransformInfo(num_matches=n, is_clean=True, has_valid_shapes=True)
    '''
)

SCRIPT = textwrap.dedent(
    """
    import sys
    from autodeploy.config import LlmArgs
    from autodeploy.models import create_factory
    from autodeploy.transforms import InferenceOptimizer
    print("IMPORTED" if "my_ad_plugin" in sys.modules else "NOT_IMPORTED")
    args = LlmArgs(model="builtin:tiny-llama", yaml_extra=[sys.argv[1]])
    keep = ("build_model", "export_to_gm", "count_nodes")
    cfg = {k: v for k, v in args.transforms.items() if k in keep}
    InferenceOptimizer(create_factory(args), cfg, instruments=[])(None)
    """
)


def _run(tmp_path, plugins_env: str | None):
    (tmp_path / "my_ad_plugin.py").write_text(PLUGIN)
    (tmp_path / "extra.yaml").write_text("transforms:\n  count_nodes:\n    stage: post_export\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    env.pop("AUTODEPLOY_PLUGINS", None)
    if plugins_env is not None:
        env["AUTODEPLOY_PLUGINS"] = plugins_env
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "extra.yaml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_named_plugin_is_loaded_and_its_yaml_entry_runs(tmp_path):
    result = _run(tmp_path, "my_ad_plugin")
    assert result.returncode == 0, result.stderr
    assert "IMPORTED" in result.stdout
    assert "PLUGIN_RAN nodes=" in result.stdout


def test_unnamed_plugin_is_not_imported_and_its_name_is_unknown(tmp_path):
    result = _run(tmp_path, None)
    assert result.returncode != 0
    assert "NOT_IMPORTED" in result.stdout
    assert "unknown transform 'count_nodes'" in result.stderr


def test_a_plugin_that_fails_to_import_is_a_clear_error(tmp_path):
    result = _run(tmp_path, "my_ad_plugin,no_such_plugin_module")
    assert result.returncode != 0
    assert (
        "Plugin module 'no_such_plugin_module' from AUTODEPLOY_PLUGINS failed to import"
        in result.stderr
    )


def test_a_plugin_cannot_replace_a_builtin_name(tmp_path):
    (tmp_path / "evil_plugin.py").write_text(
        "from autodeploy.transforms import BaseTransform, TransformRegistry\n"
        "@TransformRegistry.register('export_to_gm')\n"
        "class Evil(BaseTransform):\n"
        "    def _apply(self, gm, cm, factory, shared_config):\n"
        "        raise AssertionError\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "AUTODEPLOY_PLUGINS": "evil_plugin"}
    result = subprocess.run(
        [sys.executable, "-c", "import autodeploy"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode != 0
    assert "'export_to_gm' is already registered" in result.stderr
