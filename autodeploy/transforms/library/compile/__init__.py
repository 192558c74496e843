"""Transforms of stage compile."""
