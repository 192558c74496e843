"""Transforms of stage cache_init."""
