"""The generation runtime: requests in, tokens out, over an optimized model.

- ``llm.LLM``: the user API (``generate``, ``chat``, ``shutdown``; a context manager);
- ``async_llm.AsyncLLM``: ``async for delta in llm.stream(prompt, params)`` for servers;
- ``driver.EngineDriver``: the one thread that owns and steps the engine for every caller;
- ``deltas``: the per-step ``OutputDelta`` a streaming caller receives;
- ``sampling.SamplingParams``: per-request decoding and stop settings;
- ``engine.Engine``: the step loop (schedule -> pages -> ``nest_sequences`` -> forward ->
  ``gather_last_logits`` -> sample -> stop checks);
- ``scheduler.Scheduler``: FCFS continuous batching with chunked prefill;
- ``kv_block_manager.KVBlockManager``: pages of the paged KV cache per sequence;
- ``sampler.Sampler``: vectorized greedy / temperature / top-k / top-p sampling, after the
  penalties of ``penalties.py``; ``logprobs.py`` and ``all_token_logits.py`` for log-probs;
- ``request``: the engine's request state and the ``RequestOutput`` / ``CompletionOutput`` types;
- ``builder.build_from_args``: ``LlmArgs`` -> factory, sequence interface, optimized model,
  tokenizer.

``autodeploy.LLM`` / ``autodeploy.SamplingParams`` import this package lazily.
"""
