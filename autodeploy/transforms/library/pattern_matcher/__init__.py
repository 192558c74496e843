"""Transforms of stage pattern_matcher: eager subgraphs become canonical ``auto_deploy`` ops."""
