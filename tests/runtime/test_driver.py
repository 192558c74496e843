"""The engine driver: several threads, streaming deltas, abort, queue limit, failing steps."""

from __future__ import annotations

import asyncio
import threading

import pytest

from autodeploy import LLM, SamplingParams
from autodeploy.runtime.async_llm import AsyncLLM
from autodeploy.utils.errors import CapacityError, EngineDeadError, QueueFullError

SETTINGS = dict(
    device="cpu",
    attn_backend="torch",
    max_seq_len=256,
    max_batch_size=4,
    kv_cache_config={"tokens_per_block": 8, "max_tokens": 2048},
)
GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
THREAD_PROMPTS = [["Hello there", "A B C", "x"], ["The quick brown fox", "one two", "zz top"]]


@pytest.fixture(scope="module")
def llm():
    with LLM(model="builtin:tiny-llama", **SETTINGS) as instance:
        yield instance


def _tokens(outputs):
    return [o.outputs[0].token_ids for o in outputs]


def test_two_threads_generate_together_ten_times(llm):
    expected = [_tokens(llm.generate(prompts, GREEDY)) for prompts in THREAD_PROMPTS]

    def work(index: int, results: list, errors: list) -> None:
        try:
            results[index] = _tokens(llm.generate(THREAD_PROMPTS[index], GREEDY))
        except Exception as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    for _ in range(10):
        results: list = [None, None]
        errors: list = []
        threads = [threading.Thread(target=work, args=(i, results, errors)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors and results == expected


def test_stream_deltas_add_up_to_the_final_output(llm):
    async def run():
        async_llm = AsyncLLM.from_llm(llm)
        params = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True, logprobs=1)
        deltas = [d async for d in async_llm.stream("Streaming test", params)]
        return deltas

    deltas = asyncio.run(run())
    final = deltas[-1].output
    assert final is not None and deltas[-1].finished and deltas[-1].finish_reason == "length"
    assert all(not d.finished for d in deltas[:-1])
    assert [t for d in deltas for t in d.token_ids] == final.outputs[0].token_ids
    assert "".join(d.text for d in deltas) == final.outputs[0].text
    assert [e for d in deltas for e in d.logprobs] == final.outputs[0].logprobs
    (offline,) = llm.generate(
        "Streaming test", SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    )
    assert final.outputs[0].token_ids == offline.outputs[0].token_ids


def test_stop_string_is_never_streamed(llm):
    (reference,) = llm.generate("Stop here", GREEDY)
    text = reference.outputs[0].text
    stop = text[3:6]  # a piece of the greedy text: the stream must end before it
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, stop=stop)

    async def run():
        return [d async for d in AsyncLLM.from_llm(llm).stream("Stop here", params)]

    deltas = asyncio.run(run())
    streamed = "".join(d.text for d in deltas)
    assert streamed == deltas[-1].output.outputs[0].text == text[: text.find(stop)]
    assert deltas[-1].finish_reason == "stop"


def test_leaving_the_stream_aborts_and_frees_pages(llm):
    async def run():
        params = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)
        async for delta in AsyncLLM.from_llm(llm).stream("Long one", params):
            assert delta.token_ids
            break  # the generator's cleanup aborts the request

    asyncio.run(run())
    llm.generate("flush", GREEDY)  # the abort is applied before this request runs
    assert llm.engine.num_running == 0 and llm.engine.kv_cache_usage == 0.0


def test_capacity_and_queue_limits_raise_at_submit(llm):
    driver = llm.driver
    with pytest.raises(CapacityError, match="300 tokens.*max_seq_len=256"):
        driver.submit([5] * 100, SamplingParams(max_tokens=200), lambda d: None)
    long = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)
    finals: list = []
    handles = [
        driver.submit([5, 6, 7], long, lambda d: d.finished and finals.append(d)) for _ in range(8)
    ]  # 4 run, 4 wait
    driver.max_waiting_requests = 2
    try:
        with pytest.raises(QueueFullError, match="max_waiting_requests=2"):
            driver.submit([5], GREEDY, lambda d: None, limit_queue=True)
        driver.submit([5], GREEDY, lambda d: None)  # offline callers are not limited
    finally:
        driver.max_waiting_requests = None
        for handle in handles:
            driver.abort(handle)
    llm.generate("flush", GREEDY)
    assert sorted(d.finish_reason for d in finals) == ["abort"] * 8


class _FailingModel:
    """Wraps the model; raises while ``trigger`` token ids are in the batch."""

    def __init__(self, model, trigger: int, message: str):
        self.model, self.trigger, self.message = model, trigger, message

    def __call__(self, **kwargs):
        if (kwargs["input_ids"] == self.trigger).any():
            raise RuntimeError(self.message)
        return self.model(**kwargs)


def test_a_failing_step_fails_only_its_requests_then_fatal_errors_stop_the_engine():
    with LLM(model="builtin:tiny-llama", **SETTINGS) as llm:
        engine = llm.engine
        engine.model = _FailingModel(engine.model, trigger=250, message="bad kernel")
        bad, same_step = llm.generate([[250, 5], [5, 6]], GREEDY)
        assert bad.outputs[0].finish_reason == "error" and "bad kernel" in bad.error
        # A failed step fails the requests that ran in it, nothing else.
        assert same_step.outputs[0].finish_reason == "error"
        for _ in range(3):  # a few bad requests in a row do not make the engine "broken"
            (bad_again,) = llm.generate([[250]], GREEDY)
            assert bad_again.outputs[0].finish_reason == "error"
        assert llm.driver.alive and llm.driver.fatal_error is None
        (again,) = llm.generate([[5, 6]], GREEDY)  # the engine goes on
        assert again.outputs[0].finish_reason == "length"
        assert engine.kv_cache_usage == 0.0
        engine.model = _FailingModel(engine.model.model, 250, "CUDA error: illegal address")
        (fatal,) = llm.generate([[250]], GREEDY)
        assert fatal.outputs[0].finish_reason == "error"
        assert "CUDA error" in llm.driver.fatal_error
        with pytest.raises(EngineDeadError, match="fatal error"):
            llm.driver.submit([5], GREEDY, lambda d: None)


def test_generate_steps_on_its_own_thread_and_streams_on_the_driver_thread(llm):
    """A blocking generate() runs the steps itself (one OpenMP pool per script on CPU, see the
    driver's docstring); requests without a waiting generate() are stepped by the driver."""
    engine = llm.engine
    step_threads: list[str] = []
    real_step = engine.step

    def recording_step():
        step_threads.append(threading.current_thread().name)
        return real_step()

    engine.step = recording_step
    try:
        llm.generate(["caller steps"], GREEDY)
        assert step_threads and set(step_threads) == {threading.current_thread().name}
        step_threads.clear()
        finished = threading.Event()
        llm.driver.submit([5, 6], GREEDY, lambda d: d.finished and finished.set())
        assert finished.wait(60)
        assert step_threads and set(step_threads) == {"autodeploy-engine"}
    finally:
        del engine.step  # back to the class's method


class _InterruptOnce:
    """Wraps the model; the first call raises KeyboardInterrupt (Ctrl-C during a step)."""

    def __init__(self, model):
        self.model, self.fired = model, False

    def __call__(self, **kwargs):
        if not self.fired:
            self.fired = True
            raise KeyboardInterrupt
        return self.model(**kwargs)


def test_ctrl_c_during_a_step_fails_that_step_and_leaves_the_engine_clean():
    with LLM(model="builtin:tiny-llama", **SETTINGS) as llm:
        engine = llm.engine
        engine.model = _InterruptOnce(engine.model)
        with pytest.raises(KeyboardInterrupt):
            llm.generate(["interrupted"], GREEDY)
        llm.generate("flush", GREEDY)  # the abort of the interrupted request is applied first
        assert engine.num_running == 0 and engine.kv_cache_usage == 0.0
        (again,) = llm.generate(["goes on"], GREEDY)
        assert again.outputs[0].finish_reason == "length" and llm.driver.alive
