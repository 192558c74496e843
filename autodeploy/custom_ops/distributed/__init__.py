"""Collectives as canonical ops (``torch_dist_all_reduce``, ``torch_dist_all_gather``)."""
