"""Gated MLP ops."""
