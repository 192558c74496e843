"""Transforms of stage post_export."""
