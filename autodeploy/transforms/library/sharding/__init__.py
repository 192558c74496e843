"""Stage ``sharding``: ``detect_sharding`` writes a plan, ``sharding_transform_executor`` applies
it (split weights with load hooks, rewrite local sizes, insert collectives)."""
