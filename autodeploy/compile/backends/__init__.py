"""Built-in compile backends (one module each; ``cuda_graph_runner`` holds the graph runner)."""

from . import torch_compile, torch_cudagraph, torch_direct, torch_opt, torch_simple  # noqa: F401
