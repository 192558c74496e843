"""Mamba-2 ops: the state-space scan (``torch_ssm``) and the causal depthwise conv
(``torch_causal_conv1d``), their cached (per-slot state) versions and Triton kernels.

The gated group-wise RMSNorm of the Mamba-2 mixer is ``torch_rmsnorm_gated`` (``rms_norm/``).
"""
