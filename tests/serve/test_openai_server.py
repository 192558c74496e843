"""The OpenAI-compatible server, driven by the official ``openai`` client over real HTTP."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from serve_helpers import MODEL_ID, RunningServer, serve_llm, wait_until

from autodeploy import LLM, SamplingParams

openai = pytest.importorskip("openai")

GREEDY = dict(max_tokens=8, temperature=0.0, extra_body={"ignore_eos": True})
OFFLINE = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
TIMEOUT_S = 60


def client(served: RunningServer):
    return openai.OpenAI(base_url=served.base_url, api_key="none", timeout=TIMEOUT_S, max_retries=0)


def test_models_and_health(served):
    models = client(served).models.list()
    assert [m.id for m in models.data] == [MODEL_ID]
    assert httpx.get(served.url + "/health", timeout=TIMEOUT_S).status_code == 200


def test_greedy_completion_equals_offline_generate(served):
    response = client(served).completions.create(model=MODEL_ID, prompt="Hello world", **GREEDY)
    (offline,) = served.llm.generate("Hello world", OFFLINE)
    choice = response.choices[0]
    assert choice.text == offline.outputs[0].text and choice.finish_reason == "length"
    assert response.usage.prompt_tokens == len(offline.prompt_token_ids)
    assert response.usage.completion_tokens == 8 and response.usage.total_tokens == (
        response.usage.prompt_tokens + 8
    )
    by_ids = client(served).completions.create(
        model=MODEL_ID, prompt=offline.prompt_token_ids, **GREEDY
    )
    assert by_ids.choices[0].text == choice.text


def test_greedy_chat_equals_offline_chat(served):
    messages = [{"role": "user", "content": "Hi there"}]
    response = client(served).chat.completions.create(model=MODEL_ID, messages=messages, **GREEDY)
    (offline,) = served.llm.chat(messages, OFFLINE)
    assert response.choices[0].message.content == offline.outputs[0].text
    assert response.choices[0].message.role == "assistant"
    assert response.usage.prompt_tokens == len(offline.prompt_token_ids)


@pytest.mark.parametrize("stop", [None, "e"])
def test_streamed_deltas_concatenate_to_the_non_streamed_text(served, stop):
    api = client(served)
    kwargs = dict(
        model=MODEL_ID, max_tokens=16, temperature=0.0, stop=stop, extra_body={"ignore_eos": True}
    )
    whole = api.completions.create(prompt="Streaming", **kwargs)
    chunks = list(api.completions.create(prompt="Streaming", stream=True, **kwargs))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == (
        whole.choices[0].finish_reason
    )
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    messages = [{"role": "user", "content": "Stream me"}]
    whole_chat = api.chat.completions.create(messages=messages, **kwargs)
    chat_chunks = list(api.chat.completions.create(messages=messages, stream=True, **kwargs))
    streamed = "".join(c.choices[0].delta.content or "" for c in chat_chunks if c.choices)
    assert streamed == whole_chat.choices[0].message.content
    assert chat_chunks[0].choices[0].delta.role == "assistant"
    assert chat_chunks[-1].usage.total_tokens == whole_chat.usage.total_tokens


def test_stream_ends_with_done(served):
    body = {"model": MODEL_ID, "prompt": "x", "max_tokens": 3, "stream": True}
    with httpx.stream(
        "POST", served.base_url + "/completions", json=body, timeout=TIMEOUT_S
    ) as response:
        lines = [line for line in response.iter_lines() if line]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)
    assert json.loads(lines[-2][6:])["usage"]["completion_tokens"] == 3


def test_sixteen_concurrent_clients_get_their_offline_results(served):
    prompts = [f"client {i} says" + " hi" * (i % 5) for i in range(16)]
    expected = [o.outputs[0].text for o in served.llm.generate(prompts, OFFLINE)]
    results: list = [None] * 16

    def ask(index: int) -> None:
        if index % 2:
            stream = client(served).completions.create(
                model=MODEL_ID, prompt=prompts[index], stream=True, **GREEDY
            )
            results[index] = "".join(c.choices[0].text for c in stream if c.choices)
        else:
            response = client(served).completions.create(
                model=MODEL_ID, prompt=prompts[index], **GREEDY
            )
            results[index] = response.choices[0].text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT_S)
    assert results == expected


def test_n_seed_logprobs_and_echo(served):
    api = client(served)
    response = api.completions.create(
        model=MODEL_ID,
        prompt="Sample",
        max_tokens=5,
        temperature=1.0,
        n=3,
        seed=7,
        logprobs=2,
        echo=True,
    )
    assert [c.index for c in response.choices] == [0, 1, 2]
    assert all(c.text.startswith("Sample") for c in response.choices)
    assert response.usage.completion_tokens == 15
    logprobs = response.choices[0].logprobs
    prompt_len = response.usage.prompt_tokens
    assert len(logprobs.tokens) == prompt_len + 5 and logprobs.token_logprobs[0] is None
    # Keyed by token text: two ids with the same text (e.g. partial bytes) share one key.
    assert all(1 <= len(top) <= 2 for top in logprobs.top_logprobs[1:])
    again = api.completions.create(
        model=MODEL_ID, prompt="Sample", max_tokens=5, temperature=1.0, n=3, seed=7
    )
    assert [c.text for c in again.choices] == [c.text[len("Sample") :] for c in response.choices]
    chat = api.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "Hi"}],
        logprobs=True,
        top_logprobs=2,
        **GREEDY,
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == 8 and all(len(t.top_logprobs) == 2 for t in content)
    assert all(t.logprob == t.top_logprobs[0].logprob for t in content)  # greedy: the top one


def _post(served: RunningServer, route: str, body, **kwargs) -> httpx.Response:
    return httpx.post(
        served.base_url + route,
        timeout=TIMEOUT_S,
        **kwargs,
        **({"json": body} if body is not None else {}),
    )


@pytest.mark.parametrize(
    "body, status, param, fragment",
    [
        ({"model": MODEL_ID, "prompt": "x", "temperature": 3}, 400, "temperature", "less than"),
        ({"model": MODEL_ID, "prompt": "x", "max_tokens": 0}, 400, "max_tokens", "greater"),
        ({"model": MODEL_ID, "prompt": "x", "bogus": 1}, 400, "bogus", "unknown field"),
        (
            {"model": MODEL_ID, "prompt": "x", "max_tokens": 2, "min_tokens": 5},
            400,
            "min_tokens",
            "must be <= max_tokens",
        ),
        ({"model": MODEL_ID, "prompt": [1, 99999]}, 400, "prompt", "outside the vocabulary"),
        ({"model": MODEL_ID, "prompt": "x", "n": 0}, 400, "n", "greater"),
        ({"model": MODEL_ID}, 400, "prompt", "Field required"),
        ({"model": "nope", "prompt": "x"}, 404, "model", "does not exist"),
        (
            {"model": MODEL_ID, "prompt": "x", "max_tokens": 600},
            400,
            "max_tokens",
            "max_seq_len=512",
        ),
    ],
)
def test_bad_requests_get_openai_error_bodies(served, body, status, param, fragment):
    response = _post(served, "/completions", body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["param"] == param and fragment in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def test_never_fits_names_both_sizes_and_bad_json(served):
    response = _post(
        served, "/completions", {"model": MODEL_ID, "prompt": "x" * 10, "max_tokens": 600}
    )
    message = response.json()["error"]["message"]
    assert "max_tokens 600" in message and "max_seq_len=512" in message
    assert response.json()["error"]["code"] == "context_length_exceeded"
    broken = _post(served, "/chat/completions", None, content=b"{not json")
    assert broken.status_code == 400 and broken.json()["error"]["param"] == "body"
    chat = _post(served, "/chat/completions", {"model": MODEL_ID, "messages": []})
    assert chat.status_code == 400 and chat.json()["error"]["param"] == "messages"


def test_full_waiting_queue_answers_503_with_retry_after(served):
    driver = served.llm.driver
    long = SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)
    handles = [driver.submit([5, 6], long, lambda d: None) for _ in range(12)]  # 8 run, 4 wait
    driver.max_waiting_requests = 2
    try:
        assert driver.num_waiting >= 2
        response = _post(served, "/completions", {"model": MODEL_ID, "prompt": "x"})
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json()["error"]["code"] == "queue_full"
    finally:
        driver.max_waiting_requests = 64
        for handle in handles:
            driver.abort(handle)
    assert wait_until(lambda: served.llm.engine.num_running == 0)


class _SlowModel:
    """Wraps the model; each step takes at least ``seconds`` (the CPU path is fast enough that
    a 480-token request could finish before a test reads its first event)."""

    def __init__(self, model, seconds: float):
        self.model, self.seconds = model, seconds

    def __call__(self, **kwargs):
        time.sleep(self.seconds)
        return self.model(**kwargs)


@pytest.fixture
def slow_steps(served):
    engine = served.llm.engine
    engine.model = _SlowModel(engine.model, 0.005)  # 480 tokens: at least 2.4 s
    try:
        yield
    finally:
        engine.model = engine.model.model


@pytest.mark.parametrize("stream", [True, False])
def test_a_disconnecting_client_frees_its_pages(served, slow_steps, stream):
    engine = served.llm.engine
    assert wait_until(lambda: engine.kv_cache_usage == 0.0)
    generated_before = engine.stats.generated_tokens
    body = {
        "model": MODEL_ID,
        "prompt": "bye",
        "max_tokens": 480,
        "stream": stream,
        "ignore_eos": True,
    }
    with pytest.raises(httpx.ReadTimeout) if not stream else _nothing():
        with httpx.stream(
            "POST",
            served.base_url + "/completions",
            json=body,
            timeout=0.1 if not stream else TIMEOUT_S,  # 480 tokens take far longer
        ) as response:
            if stream:
                next(response.iter_lines())  # the first event arrived: the request runs
                assert engine.kv_cache_usage > 0.0
            else:
                response.read()  # times out long before 480 tokens: the client gives up
    assert wait_until(lambda: engine.num_running == 0 and engine.kv_cache_usage == 0.0)
    assert engine.stats.generated_tokens - generated_before < 480  # aborted, not finished


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_metrics_parse_as_prometheus_text(served):
    from prometheus_client.parser import text_string_to_metric_families

    client(served).completions.create(model=MODEL_ID, prompt="count me", **GREEDY)
    _post(served, "/completions", {"model": "nope", "prompt": "x"})
    text = httpx.get(served.url + "/metrics", timeout=TIMEOUT_S).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "autodeploy_requests",
        "autodeploy_prompt_tokens",
        "autodeploy_generation_tokens",
        "autodeploy_time_to_first_token_seconds",
        "autodeploy_time_per_output_token_seconds",
        "autodeploy_requests_running",
        "autodeploy_requests_waiting",
        "autodeploy_kv_cache_usage_ratio",
        "autodeploy_slot_usage_ratio",
    ):
        assert name in families, name
    statuses = {
        s.labels["status"]
        for s in families["autodeploy_requests"].samples
        if s.name == "autodeploy_requests_total"
    }
    assert {"200", "404"} <= statuses
    generated = [
        s.value
        for s in families["autodeploy_generation_tokens"].samples
        if s.name == "autodeploy_generation_tokens_total"
    ]
    assert generated and generated[0] >= 8


class _FailingModel:
    def __init__(self, model, trigger: int, message: str):
        self.model, self.trigger, self.message = model, trigger, message

    def __call__(self, **kwargs):
        if (kwargs["input_ids"] == self.trigger).any():
            raise RuntimeError(self.message)
        return self.model(**kwargs)


def test_engine_errors_fail_their_request_and_fatal_ones_fail_health():
    from serve_helpers import SETTINGS

    llm = LLM(model="builtin:tiny-llama", **SETTINGS)
    running = serve_llm(llm)
    try:
        engine = llm.engine
        engine.model = _FailingModel(engine.model, 250, "bad kernel")
        failed = _post(running, "/completions", {"model": MODEL_ID, "prompt": [250, 5]})
        assert failed.status_code == 500 and "bad kernel" in failed.json()["error"]["message"]
        # Greedy and short: a sampled token 250 would trip the failing model (a flaky 500).
        greedy = {"model": MODEL_ID, "prompt": [5, 6], "temperature": 0.0, "max_tokens": 4}
        fine = _post(running, "/completions", greedy)
        assert fine.status_code == 200
        assert httpx.get(running.url + "/health", timeout=TIMEOUT_S).status_code == 200
        engine.model = _FailingModel(engine.model.model, 250, "CUDA error: device lost")
        _post(running, "/completions", {"model": MODEL_ID, "prompt": [250]})
        health = httpx.get(running.url + "/health", timeout=TIMEOUT_S)
        assert health.status_code == 503 and "CUDA error" in health.json()["detail"]
        refused = _post(running, "/completions", {"model": MODEL_ID, "prompt": [5]})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "engine_dead"
    finally:
        running.stop()
        llm.shutdown()
