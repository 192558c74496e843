"""Ray Serve from an llm-serve model file: a local Ray on CPU, one replica of the tiny model."""

from __future__ import annotations

import os
import threading

import httpx
import pytest
import yaml
from serve_helpers import free_port

from autodeploy.serve.ray_app import read_model_files
from autodeploy.tools import serve as serve_tool

MODEL_ID = "acme/tiny-chat"
MODEL_FILE = {
    "deployment_config": {
        "autoscaling_config": {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 1},
        "max_concurrent_queries": 8,
    },
    "model_config": {
        "model_id": MODEL_ID,
        "initialization": {
            "hf_model_id": "builtin:tiny-llama",
            "initializer": {"type": "SingleDevice", "dtype": "float32"},
        },
        "generation": {
            "max_batch_size": 4,
            "max_total_tokens": 256,
            "generate_kwargs": {"max_new_tokens": 6, "do_sample": False, "ignore_eos": True},
            "prompt_format": "[INST] {instruction} [/INST]",
        },
        "autodeploy": {
            "device": "cpu",
            "attn_backend": "torch",
            "kv_cache_config": {"tokens_per_block": 8, "max_tokens": 1024},
        },
    },
    "scaling_config": {"num_workers": 1, "num_gpus_per_worker": 0, "num_cpus_per_worker": 0.5},
}
DEPLOY_TIMEOUT_S = 150
REQUEST_TIMEOUT_S = 60


def test_unknown_key_in_a_model_file_fails_with_its_name(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**MODEL_FILE, "llamaCpp": {"model_filename": "x.gguf"}}))
    assert serve_tool.main(["--models", str(path)]) == 2
    error = capsys.readouterr().err
    assert str(path) in error and "llamaCpp is not a known key" in error


@pytest.mark.slow  # about 50 s on 2 cores, most of it starting Ray
def test_ray_serve_answers_a_completion_from_a_model_file(tmp_path):
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    from autodeploy.serve.ray_app import APP_NAME, build_ray_app

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(MODEL_FILE))
    model_files = read_model_files([str(path)], trust_remote_code=False)
    port = free_port()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        deployed = threading.Event()

        def deploy() -> None:
            serve.run(build_ray_app(model_files), name=APP_NAME, route_prefix="/", blocking=False)
            deployed.set()

        threading.Thread(target=deploy, daemon=True).start()
        assert deployed.wait(DEPLOY_TIMEOUT_S), "the Ray Serve app did not deploy in time"
        url = f"http://127.0.0.1:{port}"
        models = httpx.get(url + "/v1/models", timeout=REQUEST_TIMEOUT_S).json()
        assert [m["id"] for m in models["data"]] == [MODEL_ID]
        body = {"model": MODEL_ID, "prompt": "Hello"}
        answer = httpx.post(url + "/v1/completions", json=body, timeout=REQUEST_TIMEOUT_S)
        assert answer.status_code == 200, answer.text
        result = answer.json()
        # The file's generate_kwargs are the defaults: 6 tokens, greedy, EOS ignored.
        assert result["choices"][0]["finish_reason"] == "length"
        assert result["usage"]["completion_tokens"] == 6
        # The prompt went through the file's prompt_format: more tokens than "Hello" alone.
        assert result["usage"]["prompt_tokens"] > 5
        again = httpx.post(url + "/v1/completions", json=body, timeout=REQUEST_TIMEOUT_S)
        assert again.json()["choices"][0]["text"] == result["choices"][0]["text"]
        too_long = httpx.post(
            url + "/v1/completions",
            json={**body, "max_tokens": 900},
            timeout=REQUEST_TIMEOUT_S,
        )
        assert too_long.status_code == 400 and "max_seq_len=256" in too_long.text
        missing = httpx.post(
            url + "/v1/completions", json={**body, "model": "other"}, timeout=REQUEST_TIMEOUT_S
        )
        assert missing.status_code == 404
        assert httpx.get(url + "/health", timeout=REQUEST_TIMEOUT_S).status_code == 200
    finally:
        serve.shutdown()
        ray.shutdown()
