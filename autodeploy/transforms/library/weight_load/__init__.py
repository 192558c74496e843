"""Transforms of stage weight_load."""
