"""Normalization ops: RMSNorm, gated RMSNorm (Mamba-2) and L2 normalization."""
