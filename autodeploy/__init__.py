"""autodeploy: export an unmodified Hugging Face / PyTorch LLM to a graph and make it fast to serve.

Public API: ``LLM``, ``SamplingParams`` (generation) and, for low-level use,
``autodeploy.transforms.InferenceOptimizer``.
"""

__version__ = "0.1.0"
