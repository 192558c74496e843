"""Mixture-of-experts ops: the canonical ``torch_moe`` and its grouped torch and Triton backends."""
