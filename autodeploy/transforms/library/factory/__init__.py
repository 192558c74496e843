"""Transforms of stage factory."""
