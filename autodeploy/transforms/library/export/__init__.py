"""Transforms of stage export."""
