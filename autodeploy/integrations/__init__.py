"""Integrations with third-party harnesses.

- ``autodeploy.integrations.lm_eval``: the ``autodeploy`` model of lm-evaluation-harness
  (importing the module registers it); command line: ``python -m autodeploy.tools.lm_eval``.
- ``autodeploy.integrations.prompt_scoring``: log-probabilities of every prompt token from the
  engine's own paged prefill passes (``SamplingParams.prompt_logprobs``), as lm-eval needs them.
"""
